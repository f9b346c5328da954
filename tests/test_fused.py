"""The C++ time loops: built here, taken for LSTM, GRU and Elman, equal to the Python engine."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.kernels import build, loops, products


def test_the_extension_builds_here():
    """A failed build would fall back to the slower Python engine with a warning: fail instead."""
    assert build.extension() is not None


@pytest.mark.parametrize(
    "cell,expected",
    [
        (rnnkit.GRUCell(3, 4), True),
        (rnnkit.ElmanCell(3, 4, nonlinearity="sigmoid"), True),
        (rnnkit.LSTMCell(3, 4), True),
        (rnnkit.LayerNormGRUCell(3, 4), True),
        (rnnkit.LayerNormLSTMCell(3, 4), True),
        (rnnkit.PeepholeLSTMCell(3, 4), True),
        (rnnkit.ProjectedLSTMCell(3, 4, 2), True),
    ],
)
def test_which_cells_run_in_cpp(cell, expected):
    assert loops.supports(cell) is expected
    with build.fused_enabled(False):
        assert not loops.supports(cell)


def test_only_the_lstm_loop_takes_recurrent_noise():
    noisy = frozenset({"recurrent_dropout", "zoneout"})
    assert loops.supports(rnnkit.LSTMCell(3, 4), noisy)
    assert not loops.supports(rnnkit.GRUCell(3, 4), noisy)
    assert not loops.supports(rnnkit.LayerNormLSTMCell(3, 4), noisy)
    assert not loops.supports(rnnkit.PeepholeLSTMCell(3, 4), noisy)
    assert not loops.supports(rnnkit.ProjectedLSTMCell(3, 4, 2), noisy)


LAYERS = {  # (input size, hidden size) -> layer
    "gru": lambda i, h: rnnkit.GRU(i, h, num_layers=2, bidirectional=True, impl="bptt"),
    "rnn": lambda i, h: rnnkit.RNN(i, h, num_layers=2, bidirectional=True, impl="bptt"),
    "lstm": lambda i, h: rnnkit.LSTM(i, h, num_layers=2, bidirectional=True, impl="bptt"),
    "lstm-recurrent-dropout": lambda i, h: rnnkit.LSTM(
        i, h, bidirectional=True, recurrent_dropout=0.3
    ),
    "lstm-zoneout": lambda i, h: rnnkit.LSTM(i, h, bidirectional=True, zoneout=(0.2, 0.4)),
    "ln-lstm": lambda i, h: rnnkit.LSTM(i, h, num_layers=2, bidirectional=True, layer_norm=True),
    "ln-gru": lambda i, h: rnnkit.GRU(i, h, num_layers=2, bidirectional=True, layer_norm=True),
    "peephole-lstm": lambda i, h: rnnkit.LSTM(
        i, h, num_layers=2, bidirectional=True, peephole=True
    ),
    "projected-lstm": lambda i, h: rnnkit.LSTM(
        i, h, num_layers=2, bidirectional=True, proj_size=5, impl="bptt"
    ),
    "lstm-all-noise": lambda i, h: rnnkit.LSTM(
        i, h, num_layers=2, zoneout=0.1, recurrent_dropout=0.2, weight_dropout=0.3
    ),
}


@pytest.mark.parametrize(
    "lengths,hidden",
    [
        ([30, 3, 17, 1, 29], 16),
        ([30, 3, 17, 1, 29, 30, 12, 2, 25], 72),
        ([30, 3, 17, 1, 29], 88),
        ([30, 3, 17, 1, 29, 30, 12, 2, 25, 31, 8, 19, 4, 27, 30, 6, 22], 48),
    ],
    ids=["one-thread", "team-by-rows", "team-by-units", "team-by-rows-partial"],
)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", LAYERS)
def test_cpp_equals_python_engine(name, dtype, training, lengths, hidden):
    """Same outputs, final states and gradients, with ragged lengths over 31 steps; with the noise
    drawn from the same seed (the C++ path draws its masks in the Python engine's order). The
    second and third sizes run float32's loops on a team of two threads (9 x 72 x 72 and
    5 x 88 x 88 multiply-adds a step: enough for two): the nine sequences split between them
    (rows 0-7 and 8: two of the kernel's row tiles), the five (one row tile) split by units,
    each thread with a slice of the 88, one of them ending in a partial strip of the kernel's
    32 (AVX-512) or 16 (AVX2) columns. The fourth: 17 sequences, three row tiles, the last of
    one row."""
    torch.manual_seed(0)
    layer = LAYERS[name](8, hidden).to(dtype).train(training)
    x = torch.randn(31, len(lengths), 8, dtype=dtype, requires_grad=True)
    lengths = torch.tensor(lengths)
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for enabled in (True, False):
            torch.manual_seed(1)
            with build.fused_enabled(enabled):
                out, state = layer(x, lengths=lengths)
                finals = state if isinstance(state, tuple) else (state,)
                loss = (out**2).sum() + sum(s.sum() * (k + 1) for k, s in enumerate(finals))
                grads = torch.autograd.grad(loss, [x, *layer.parameters()])
            results.append((out, *finals, *grads))
            if enabled and dtype == torch.float32 and name != "projected-lstm":
                ext = build.extension()
                assert ext.last_team_size() == (1 if hidden == 16 else 2)
                assert ext.last_team_by_rows() == (hidden in (72, 48))
    finally:
        torch.set_num_threads(threads)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    if name.startswith("ln-"):  # dividing by small standard deviations magnifies rounding
        tolerance *= 30  # (float32 at 72 units: 1.1e-4 of the largest gradient)
    for a, b in zip(*results, strict=True):
        assert (a - b).abs().max() <= tolerance * b.abs().max().clamp_min(1)


@pytest.mark.parametrize(
    "loss",
    [
        lambda out: out.sum(),  # a gradient of stride 0 over steps, rows and units
        lambda out: (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum(),
        lambda out: (out * torch.arange(out.shape[0], dtype=out.dtype)[:, None, None]).sum(),
        lambda out: (out * torch.arange(out.shape[1], dtype=out.dtype)[:, None]).sum(),
        lambda out: (out.transpose(0, 2) * out.transpose(0, 2).detach().cos()).sum(),
    ],
    ids=["everywhere", "per-unit", "per-step", "per-row", "units-apart"],
)
@pytest.mark.parametrize("lengths", [None, [9, 2, 5, 9]], ids=["full", "ragged"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["gru", "rnn", "lstm", "projected-lstm", "ln-lstm", "ln-gru"])
def test_cpp_reads_broadcast_output_gradients(name, dtype, lengths, loss):
    """The loops read a broadcast gradient of the outputs (stride 0 over steps, rows or both, as
    out.sum() gives) as the slice it repeats, and the halves of a bidirectional output's
    gradient in place (rows 2H apart); one whose units are not adjacent (through a transpose)
    is copied first. The same gradients as the Python engine. (With lengths the gradient is
    masked, so a copy, before the loops see it.)"""
    torch.manual_seed(0)
    layer = LAYERS[name](8, 24).to(dtype)
    x = torch.randn(9, 4, 8, dtype=dtype, requires_grad=True)
    lengths = None if lengths is None else torch.tensor(lengths)
    results = []
    for enabled in (True, False):
        with build.fused_enabled(enabled):
            out, _ = layer(x, lengths=lengths)
            results.append(torch.autograd.grad(loss(out), [x, *layer.parameters()]))
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(*results, strict=True):
        assert (a - b).abs().max() <= tolerance * b.abs().max().clamp_min(1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: rnnkit.GRU(8, 24, impl="bptt"),
        lambda: rnnkit.RNN(8, 24, impl="bptt"),
        lambda: rnnkit.LSTM(8, 24, impl="bptt"),
        lambda: rnnkit.LSTM(8, 24, proj_size=5, impl="bptt"),
        lambda: rnnkit.LSTM(8, 24, layer_norm=True),
    ],
    ids=["gru", "rnn", "lstm", "projected-lstm", "ln-lstm"],
)
def test_cpp_outputs_are_their_own_tensors(make):
    """Without autograd (or nothing to record) the outputs are the loop's buffer itself (no
    copy), yet an in-place op on them changes neither the final state nor an earlier call's
    outputs, and is allowed as on any tensor, with operands that need gradients too; with
    autograd an in-place op on the outputs leaves the backward's saved states intact."""
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(9, 4, 8, requires_grad=True)
    with torch.no_grad():
        out, state = layer(x)
        expected_out, expected_state = out.clone(), [s.clone() for s in _flat(state)]
        out.add_(1)
        assert all(torch.equal(s, e) for s, e in zip(_flat(state), expected_state, strict=True))
        layer(torch.randn(9, 4, 8))  # may reuse freed buffers, not the one `out` holds
        assert torch.equal(out, expected_out + 1)
    gain = torch.ones(out.shape[-1], requires_grad=True)
    out.mul_(gain)  # a plain tensor, not a custom Function's view: operands may need gradients
    assert out.requires_grad and out._base is None
    out, _ = layer.requires_grad_(False)(x.detach())  # autograd on, nothing to record
    out.mul_(gain)  # a frozen encoder's outputs scaled in place
    layer.requires_grad_(True)
    grads = []
    for in_place in (True, False):
        out, _ = layer(x)
        out = out.mul_(2) if in_place else out * 2
        grads.append(torch.autograd.grad((out**2).sum(), [x, *layer.parameters()]))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def _flat(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def test_cpp_lstm_gradcheck_with_noise():
    """The LSTM loop's backward, with a recurrent mask, zoneout keeps and ragged lengths."""
    torch.manual_seed(0)
    T, B, H = 6, 3, 5
    gx = torch.randn(T, B, 4 * H, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4 * H, H, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4 * H, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(B, H, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mask = (torch.arange(T)[:, None] < torch.tensor([6, 2, 4])[None, :]).unsqueeze(-1)
    rec = (torch.rand(B, H) > 0.3).double() / 0.7
    keep_h, keep_c = ((torch.rand(T, B, H) < 0.3).double() for _ in range(2))

    def run(gx, weight, bias, h0, c0):
        return loops._FusedLSTM.apply(
            True, gx, weight, bias, h0, c0, mask, rec, keep_h, keep_c, None
        )

    assert torch.autograd.gradcheck(run, (gx, weight, bias, h0, c0))


def test_cpp_peephole_lstm_gradcheck():
    """The LSTM loop with peepholes: their weights' gradients too, with ragged lengths."""
    torch.manual_seed(0)
    T, B, H = 5, 3, 4

    def randn(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    inputs = (randn(T, B, 4 * H), randn(4 * H, H), randn(4 * H), randn(B, H), randn(B, H))
    mask = (torch.arange(T)[:, None] < torch.tensor([5, 2, 4])[None, :]).unsqueeze(-1)

    def run(gx, weight, bias, h0, c0, peep):
        return loops._FusedLSTM.apply(True, gx, weight, bias, h0, c0, mask, None, None, None, peep)

    assert torch.autograd.gradcheck(run, (*inputs, randn(3 * H)))


def test_cpp_projected_lstm_gradcheck():
    """The LSTMP loop (h' = W_hr (o * tanh c')): every input's gradient, W_hr's too, with ragged
    lengths, float64."""
    torch.manual_seed(0)
    T, B, H, P = 5, 3, 4, 2

    def randn(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    inputs = (randn(T, B, 4 * H), randn(4 * H, P), randn(4 * H), randn(P, H), randn(B, P))
    mask = (torch.arange(T)[:, None] < torch.tensor([5, 2, 4])[None, :]).unsqueeze(-1)

    def run(gx, weight_hh, bias, weight_hr, h0, c0):
        return loops._FusedProjectedLSTM.apply(True, gx, weight_hh, bias, weight_hr, h0, c0, mask)

    assert torch.autograd.gradcheck(run, (*inputs, randn(B, H)))


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")
@pytest.mark.parametrize("batch", [3, 40])
def test_cpp_projected_lstm_equals_torch_float32(batch):
    """The LSTMP loop in float32 (rnnkit's step kernel for both products) against
    torch.nn.LSTM(proj_size=P): outputs, final states and every gradient."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(12, 40, proj_size=24)
    layer = rnnkit.LSTM(12, 40, proj_size=24, impl="bptt")
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(9, batch, 12, requires_grad=True)
    results = []
    for module in (layer, reference):
        out, (h_n, c_n) = module(x)
        loss = (out**2).sum() + h_n.sum() + 2 * c_n.sum()
        results.append((out, h_n, c_n, *torch.autograd.grad(loss, [x, *module.parameters()])))
    for ours, theirs in zip(*results, strict=True):
        assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max().clamp_min(1)


def test_cpp_layer_norm_lstm_gradcheck():
    """The LN-LSTM loop's backward, parameters included, with ragged lengths."""
    torch.manual_seed(0)
    T, B, H = 5, 3, 4

    def randn(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    inputs = (randn(T, B, 4 * H), randn(4 * H, H), randn(B, H), randn(B, H))
    params = (randn(4 * H), randn(4 * H), randn(H), randn(H))
    mask = (torch.arange(T)[:, None] < torch.tensor([5, 2, 4])[None, :]).unsqueeze(-1)

    def run(gx, weight, h0, c0, *params):
        return loops._FusedLayerNormLSTM.apply(True, gx, weight, h0, c0, mask, *params)

    assert torch.autograd.gradcheck(run, (*inputs, *params))


@pytest.mark.parametrize(
    "ours,theirs", [(rnnkit.GRU, torch.nn.GRU), (rnnkit.RNN, torch.nn.RNN)], ids=["gru", "rnn"]
)
def test_cpp_float32_equals_torch_on_saturating_inputs(ours, theirs):
    """The float32 pass (exp and tanh as polynomials, arguments clamped) matches torch's float32
    kernels, gradients included, where the pre-activations reach +-50: no inf or NaN."""
    torch.manual_seed(0)
    I, H = 6, 24
    reference = theirs(I, H)
    with torch.no_grad():
        reference.weight_ih_l0.mul_(8)
    layer = ours(I, H, impl="bptt")
    layer.load_state_dict(reference.state_dict())
    x = torch.empty(20, 7, I).uniform_(-15, 15).requires_grad_()
    pre = x @ reference.weight_ih_l0.t() + reference.bias_ih_l0
    assert pre.abs().max() > 40  # deep in saturation, past where a bare exp(2x) would overflow
    results = []
    for module in (layer, reference):
        out, h_n = module(x)
        grads = torch.autograd.grad((out**2).sum() + h_n.sum(), [x, *module.parameters()])
        results.append((out, h_n, *grads))
    for a, b in zip(*results, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("nonlinearity,exact", [("tanh", torch.tanh), ("sigmoid", torch.sigmoid)])
def test_cpp_float32_activations_are_accurate(nonlinearity, exact):
    """With W_ih a column of ones and no recurrence, every unit outputs the activation of the
    input itself: its relative error against float64 stays within 4e-7 (a few float32 ulps)
    from -100 to 100 (measured 1.5e-7), NaN stays NaN. H = 13 runs a whole SIMD vector and a tail.
    """
    H = 13
    layer = rnnkit.RNN(1, H, nonlinearity=nonlinearity, bias=False, impl="bptt")
    x = torch.cat(
        [torch.linspace(-100, 100, 20001), torch.linspace(-1e-3, 1e-3, 201), torch.tensor([0.0])]
    )
    x = torch.cat([x, -x, torch.tensor([float("nan")])])
    with torch.no_grad():
        layer.weight_ih_l0.fill_(1)
        layer.weight_hh_l0.zero_()
        out = layer(x.view(1, -1, 1))[0][0]  # (B, H), each row the activation of one x
    want = exact(x.double()).unsqueeze(1).expand(-1, H)
    assert out[-1].isnan().all()
    rel = ((out[:-1].double() - want[:-1]).abs() / want[:-1].abs().clamp_min(1e-30)).max()
    assert rel < 4e-7


def test_cpp_layer_norm_gru_gradcheck():
    """The LN-GRU loop's backward, parameters included, with ragged lengths."""
    torch.manual_seed(0)
    T, B, H = 5, 3, 4

    def randn(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    inputs = (randn(T, B, 3 * H), randn(3 * H, H), randn(B, H), randn(3 * H), randn(3 * H))
    mask = (torch.arange(T)[:, None] < torch.tensor([5, 2, 4])[None, :]).unsqueeze(-1)

    def run(gx, weight, h0, *params):
        return loops._FusedLoop.apply(True, 3, gx, weight, None, None, h0, mask, None, *params)

    assert torch.autograd.gradcheck(run, inputs)


@pytest.mark.parametrize("make", [rnnkit.RNN, rnnkit.GRU])
def test_plain_layers_record_one_node(make):
    """A plain Elman or GRU layer runs its input projection inside the loop's autograd node
    (`run_on_input`): the weights and biases are leaves of that node itself, not of a projection
    or a sum of the biases (docs/performance.md, fix 17)."""
    layer = make(4, 6, impl="bptt")
    output, _ = layer(torch.randn(5, 2, 4))
    assert type(output.grad_fn).__name__ == "_FusedLoopBackward"
    leaves = {id(f.variable) for f, _ in output.grad_fn.next_functions if f is not None
              and hasattr(f, "variable")}  # fmt: skip
    assert {id(p) for p in layer.parameters()} <= leaves


@pytest.mark.parametrize("code", [0, 1, 2, 3])
def test_cpp_loop_on_input_gradcheck(code):
    """The loop with the input projection inside its autograd node (`run_on_input`: Elman with
    tanh, relu, sigmoid; GRU): gradients of x, both weights, both biases and h0, ragged lengths."""
    torch.manual_seed(0)
    T, B, I, H = 5, 3, 2, 4
    G = 3 if code == 3 else 1

    def randn(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    inputs = (randn(T, B, I), randn(G * H, I), randn(G * H, H), randn(G * H), randn(G * H))
    inputs += (randn(B, H),)
    mask = (torch.arange(T)[:, None] < torch.tensor([5, 2, 4])[None, :]).unsqueeze(-1)

    def run(x, w_ih, w_hh, b_ih, b_hh, h0):
        return loops._FusedLoop.apply(True, code, x, w_hh, b_hh, b_ih, h0, mask, w_ih)

    assert torch.autograd.gradcheck(run, inputs)


def test_other_dtypes_take_the_python_engine():
    """bfloat16 has no C++ loop: the layer runs on the Python engine instead of failing."""
    torch.manual_seed(0)
    layer = rnnkit.GRU(4, 6, impl="bptt").to(torch.bfloat16)
    x = torch.randn(5, 2, 4, dtype=torch.bfloat16)
    assert not build.handles(x) and build.handles(x.float())
    with build.fused_enabled(False):
        expected = layer(x)[0]
    torch.testing.assert_close(layer(x)[0], expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: rnnkit.GRU(4, 6, num_layers=2, impl="bptt"),
        lambda: rnnkit.RNN(4, 6, num_layers=2, impl="bptt"),
        lambda: rnnkit.LSTM(4, 6, num_layers=2, layer_norm=True),
        lambda: rnnkit.LSTM(4, 6, num_layers=2, zoneout=0.1).eval(),
    ],
    ids=["gru", "rnn", "ln-lstm", "zoneout-lstm"],
)
def test_the_engine_computes_in_float32_under_bfloat16_autocast(make):
    """Under autocast (``--precision bf16``) the engine's layers keep their weights' dtype, so
    their outputs, states and gradients equal those without autocast; torch's kernel casts."""
    torch.manual_seed(0)
    layer, x = make(), torch.randn(5, 2, 4, requires_grad=True)
    expected, expected_state = layer(x)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, state = layer(x)
        step_output, _ = layer.step(x[0].detach())
    (grad,) = torch.autograd.grad(output.sum(), x)
    assert output.dtype == step_output.dtype == torch.float32
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(state, expected_state)
    torch.testing.assert_close(grad, expected_grad)
    torch.testing.assert_close(step_output, layer.step(x[0].detach())[0])


@pytest.mark.parametrize("steps", [5, 1])
def test_torchs_kernel_runs_in_bfloat16_under_autocast(steps):
    torch.manual_seed(0)
    layer, x = rnnkit.LSTM(4, 6), torch.randn(steps, 2, 4)
    assert layer.uses_torch_kernel()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, state = layer(x)
        again, _ = layer(x, state)  # a carried bfloat16 state (truncated BPTT) is accepted
    assert output.dtype == again.dtype == state[0].dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), layer(x)[0], atol=2e-2, rtol=0)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("n,k", [(1, 1), (7, 5), (33, 20), (100, 64), (256, 130)])
def test_step_kernel_equals_torch(rows, n, k):
    """rnnkit's per-step product kernel (`csrc/step_gemm.h`): every row-tile height, columns
    that are not a multiple of the SIMD width, with and without bias and added term."""
    ext = build.extension()
    torch.manual_seed(0)
    a, w, bias, add = torch.randn(rows, k), torch.randn(n, k), torch.randn(n), torch.randn(rows, n)
    packed = ext.pack_weight(w)
    empty = torch.empty(0)
    expected = a @ w.t()
    torch.testing.assert_close(ext.packed_linear(a, packed, n, empty, empty), expected)
    got = ext.packed_linear(a, packed, n, bias, add)
    torch.testing.assert_close(got, expected + bias + add)
    # the backward packs W^T (columns contiguous) and the loops gate blocks (a slice of W)
    assert torch.equal(ext.pack_weight(w.t().contiguous().t()), packed)
    wide = torch.randn(n + 3, k + 2)
    assert torch.equal(
        ext.pack_weight(wide[1 : n + 1, 2:]), ext.pack_weight(wide[1 : n + 1, 2:].contiguous())
    )


@pytest.mark.parametrize("m,k,n", [(3, 4, 5), (300, 200, 100)], ids=["small", "onednn"])
def test_engine_matmul_equals_torch(m, k, n):
    """`products.matmul` (oneDNN for big float32 products) on transposed operands too, and
    `products.linear` with its gradients against ``nn.functional.linear``."""
    torch.manual_seed(0)
    a, b = torch.randn(m, k), torch.randn(n, k)
    torch.testing.assert_close(products.matmul(a, b.t()), a @ b.t())
    torch.testing.assert_close(products.matmul(a.t().contiguous().t(), b.t()), a @ b.t())
    x, bias = torch.randn(2, m, k, requires_grad=True), torch.randn(n, requires_grad=True)
    w = b.clone().requires_grad_()
    results = []
    for f in (products.linear, torch.nn.functional.linear):
        out = f(x, w, bias)
        results.append((out, *torch.autograd.grad((out**2).sum(), [x, w, bias])))
    for ours, theirs in zip(*results, strict=True):  # float32 rounding of sums over k
        assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


@pytest.mark.parametrize(
    "ours,theirs",
    [(rnnkit.LSTM, torch.nn.LSTM), (rnnkit.GRU, torch.nn.GRU), (rnnkit.RNN, torch.nn.RNN)],
    ids=["lstm", "gru", "rnn"],
)
@pytest.mark.parametrize("batch,hidden", [(3, 20), (64, 272)], ids=["small", "onednn"])
def test_cpp_float32_equals_torch_on_each_product_path(ours, theirs, batch, hidden):
    """The loops' per-step products take rnnkit's kernel, the products outside the loop oneDNN
    when big (from 2^22 multiply-adds: the second case) and at::mm when small; all match
    torch.nn in float32, gradients included, and so does ``RNNKIT_GEMM=aten`` (every product
    through at::mm)."""
    torch.manual_seed(0)
    reference = theirs(16, hidden)
    layer = ours(16, hidden, impl="bptt")
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(6, batch, 16, requires_grad=True)
    ext = build.extension()
    results = []
    for module, tuned in ((layer, True), (layer, False), (reference, True)):
        ext.set_tuned(tuned)
        try:
            out, _ = module(x)
            results.append((out, *torch.autograd.grad((out**2).sum(), [x, *module.parameters()])))
        finally:
            ext.set_tuned(True)
    for tuned, aten, reference in zip(*results, strict=True):  # float32 rounding of sums
        assert (tuned - reference).abs().max() <= 1e-5 * reference.abs().max()
        assert (aten - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_zoneout_rates_may_be_integers_at_evaluation():
    """An integer rate (0) at evaluation, on the Python engine (peephole cells with zoneout)."""
    layer = rnnkit.LSTM(3, 4, zoneout=(0, 0.5), peephole=True).eval()
    out, _ = layer(torch.randn(2, 1, 3))
    assert torch.isfinite(out).all()


def test_engine_linear_has_second_order_gradients():
    """`products.linear` builds a differentiable graph when asked for one (create_graph=True)."""
    torch.manual_seed(0)
    x, w = torch.randn(300, 200, requires_grad=True), torch.randn(100, 200, requires_grad=True)
    results = []
    for f in (products.linear, torch.nn.functional.linear):
        (grad,) = torch.autograd.grad(f(x, w).pow(2).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(grad.pow(2).sum(), w)[0])
    assert (results[0] - results[1]).abs().max() <= 1e-4 * results[1].abs().max()


def test_pooled_buffers_are_reused_without_stale_values():
    """Buffers from 32 MiB up (here the GRU's cache and gradients) come from the extension's
    pool and are reused by the next call: two calls of different data each match torch.nn."""
    torch.manual_seed(0)
    reference = torch.nn.GRU(8, 256)
    layer = rnnkit.GRU(8, 256, impl="bptt")
    layer.load_state_dict(reference.state_dict())
    ext = build.extension()
    ext.set_pooled(False)  # frees the pool's blocks
    ext.set_pooled(True)
    for _ in range(2):  # T * B * 4H floats: 48 MiB of cache
        x = torch.randn(96, 128, 8, requires_grad=True)
        results = []
        for module in (layer, reference):
            out, h_n = module(x)
            loss = (out**2).sum() + h_n.sum()
            results.append((out, h_n, *torch.autograd.grad(loss, [x, *module.parameters()])))
        for ours, theirs in zip(*results, strict=True):
            assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()
        del results
        assert ext.pooled_bytes() >= 48 << 20  # the cache's block, freed, kept for the next call


def test_team_threads_flush_denormals_as_the_caller_does():
    """torch.set_flush_denormal sets the calling thread's mode only; the team's other threads
    take it over for the loop, so every unit is flushed alike (not only the caller's slice)."""
    ext = build.extension()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    gx = torch.full((3, 9, 72), 1e-39)  # a denormal float32, 0 when flushed
    zeros, no_mask = torch.zeros(72), torch.empty(0, dtype=torch.bool)
    try:
        if not torch.set_flush_denormal(True):
            pytest.skip("this CPU cannot flush denormals")
        states = ext.elman_forward(gx, torch.zeros(72, 72), zeros, torch.zeros(9, 72), no_mask, 0)
        assert ext.last_team_size() == 2
        assert (states == 0).all()
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    states = ext.elman_forward(gx, torch.zeros(72, 72), zeros, torch.zeros(9, 72), no_mask, 0)
    assert (states[1:] > 0).all()  # kept without the flag
