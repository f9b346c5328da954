"""rnnkit.RNN/LSTM/GRU vs torch.nn with copied weights: outputs, final states, all gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.dropout import torch_masks
from rnnkit.kernels.build import fused_enabled

T, B, I, H = 6, 4, 3, 5
RAGGED = torch.tensor([4, 6, 1, 3])  # unsorted, one full-length, one of length 1
CELLS = {
    "rnn_tanh": (rnnkit.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnnkit.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTM, torch.nn.LSTM, {}),
    "gru": (rnnkit.GRU, torch.nn.GRU, {}),
}
IMPLS = ["bptt", "bptt-python", "torch"]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
GRID = list(
    itertools.product(
        CELLS,  # cell
        (1, 3),  # num_layers
        (False, True),  # bidirectional
        (False, True),  # batch_first
        (True, False),  # bias
        (False, True),  # hx given
        (False, True),  # ragged lengths
    )
)


def make_pair(cell: str, dtype: torch.dtype, impl: str, **kwargs):
    """An rnnkit layer and the torch.nn layer holding the same weights."""
    ours_cls, torch_cls, options = CELLS[cell]
    ours = ours_cls(I, H, impl=impl.removesuffix("-python"), **options, **kwargs).to(dtype)
    theirs = torch_cls(I, H, **options, **kwargs).to(dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def run_torch(module, x, hx, lengths, batch_first):
    """torch.nn with lengths through pack_padded_sequence, padded back to the full length."""
    if lengths is None:
        return module(x, hx)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, final = module(packed, hx)
    out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    return out, final


def as_tuple(state):
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


def compare(cell, num_layers, bidirectional, batch_first, bias, with_hx, ragged, impl, dtype):
    """impl: "torch", "bptt" (C++ loops where they exist) or "bptt-python" (the Python engine)."""
    with fused_enabled(not impl.endswith("-python")):
        _compare(cell, num_layers, bidirectional, batch_first, bias, with_hx, ragged, impl, dtype)


def _compare(cell, num_layers, bidirectional, batch_first, bias, with_hx, ragged, impl, dtype):
    torch.manual_seed(hash((cell, num_layers, bidirectional, batch_first, bias)) % 2**31)
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    ours, theirs = make_pair(cell, dtype, impl, bias=bias, **kwargs)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype, requires_grad=True)
    states = ()
    if with_hx:
        shape = (num_layers * (2 if bidirectional else 1), B, H)
        count = 2 if cell == "lstm" else 1
        states = tuple(torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(count))
    hx = None if not states else (states if cell == "lstm" else states[0])
    lengths = RAGGED if ragged else None

    out, final = ours(x, hx, lengths=lengths)
    ref_out, ref_final = run_torch(theirs, x, hx, lengths, batch_first)
    final, ref_final = as_tuple(final), as_tuple(ref_final)

    atol = TOLERANCE[dtype]
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=0)
    for mine, ref in zip(final, ref_final, strict=True):
        torch.testing.assert_close(mine, ref, atol=atol, rtol=0)

    weights = [torch.randn_like(out)] + [torch.randn_like(s) for s in final]
    inputs = [x, *states]

    def grads(module, output, state):
        loss = sum((o * w).sum() for o, w in zip((output, *state), weights, strict=True))
        return torch.autograd.grad(loss, inputs + list(module.parameters()))

    for mine, ref in zip(grads(ours, out, final), grads(theirs, ref_out, ref_final), strict=True):
        torch.testing.assert_close(mine, ref, atol=atol, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "cell,num_layers,bidirectional,batch_first,bias,with_hx,ragged",
    GRID,
    ids=lambda v: str(v),
)
def test_matches_torch_float64(
    cell, num_layers, bidirectional, batch_first, bias, with_hx, ragged, impl
):
    compare(
        cell, num_layers, bidirectional, batch_first, bias, with_hx, ragged, impl, torch.float64
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "cell,num_layers,bidirectional,batch_first,bias,with_hx,ragged",
    GRID,
    ids=lambda v: str(v),
)
def test_matches_torch_float32(
    cell, num_layers, bidirectional, batch_first, bias, with_hx, ragged, impl
):
    # oneDNN's float32 LSTM costs ~1 s a call on tiny stacked shapes here; it is checked below.
    with torch.backends.mkldnn.flags(enabled=False):
        compare(
            cell, num_layers, bidirectional, batch_first, bias, with_hx, ragged, impl, torch.float32
        )


@pytest.mark.parametrize("impl", ["bptt", "torch"])
def test_matches_onednn_lstm_float32(impl):
    compare("lstm", 2, True, False, True, True, False, impl, torch.float32)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("impl", ["bptt", "torch"])
def test_unbatched_input(cell, impl):
    ours, theirs = make_pair(cell, torch.float64, impl, num_layers=2, bidirectional=True)
    x = torch.randn(T, I, dtype=torch.float64)
    out, final = ours(x)
    ref_out, ref_final = theirs(x)
    assert out.shape == (T, 2 * H)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    for mine, ref in zip(as_tuple(final), as_tuple(ref_final), strict=True):
        assert mine.shape == (4, H)
        torch.testing.assert_close(mine, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cell", list(CELLS))
def test_state_dict_round_trip(cell):
    ours, theirs = make_pair(cell, torch.float32, "bptt", num_layers=2, bidirectional=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    torch.nn.init.normal_(theirs.weight_hh_l1_reverse)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.weight_hh_l1_reverse, theirs.weight_hh_l1_reverse)


def test_parameters_survive_dtype_and_reset():
    layer = rnnkit.LSTM(I, H, num_layers=2).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    assert layer(x)[0].dtype == torch.float64
    before = layer.weight_hh_l1.clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.weight_hh_l1)
    assert layer.weight_hh_l1.abs().max() <= 1 / H**0.5


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "sigmoid"])
def test_rnn_equals_a_loop_over_the_cell(nonlinearity):
    """The layer equals the plain loop it stands for, sigmoid included (which torch lacks)."""
    layer = rnnkit.RNN(I, H, nonlinearity=nonlinearity, impl="bptt").double()
    cell = rnnkit.ElmanCell(I, H, nonlinearity=nonlinearity).double()
    cell.load_state_dict({k[: -len("_l0")]: v for k, v in layer.state_dict().items()})
    x = torch.randn(T, B, I, dtype=torch.float64)
    h = torch.zeros(B, H, dtype=torch.float64)
    outputs = []
    for t in range(T):
        h = cell(x[t], h)
        outputs.append(h)
    out, h_n = layer(x)
    torch.testing.assert_close(out, torch.stack(outputs), atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n[0], h, atol=1e-12, rtol=0)


def test_auto_uses_torch_kernel_only_where_it_exists():
    assert rnnkit.LSTM(I, H).uses_torch_kernel()
    assert not rnnkit.RNN(I, H, nonlinearity="sigmoid").uses_torch_kernel()
    assert not rnnkit.GRU(I, H, impl="bptt").uses_torch_kernel()
    assert rnnkit.GRU(I, H, impl="torch").uses_torch_kernel()
    with pytest.raises(rnnkit.RnnkitError, match="impl='torch': torch has no fused kernel"):
        rnnkit.RNN(I, H, nonlinearity="sigmoid", impl="torch")(torch.randn(T, B, I))


@pytest.mark.parametrize(
    "make", [lambda: rnnkit.GRU(I, H), lambda: rnnkit.RNN(I, H, nonlinearity="relu")]
)
def test_auto_runs_gru_and_elman_on_the_cpp_loops(make):
    """torch runs GRU and Elman cells step by step (1.4-14x slower than the C++ loops on the CPU):
    ``impl="auto"`` takes the loops for float32/float64 CPU inputs, torch's kernel for others
    and when the loops are off, with the same results."""
    layer = make().double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    assert not layer.uses_torch_kernel(x)
    assert layer.uses_torch_kernel(x.to(torch.bfloat16))
    with fused_enabled(False):
        assert layer.uses_torch_kernel(x)
        expected = layer(x)
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the engine computes in the weights' dtype
        assert not layer.float().uses_torch_kernel(x.to(torch.bfloat16))
        assert layer.to(torch.bfloat16).uses_torch_kernel(x.float())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_dropout_between_layers_matches_torch_and_is_off_in_eval(cell):
    """Within `torch_masks` rnnkit's dropout draws torch's masks: the same places."""
    ours, theirs = make_pair(cell, torch.float64, "bptt", num_layers=3, dropout=0.5)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch_masks():
        torch.manual_seed(7)
        out = ours(x)[0]
    torch.manual_seed(7)
    ref = theirs(x)[0]
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)  # same masks, same places
    assert not torch.allclose(out, ours(x)[0])  # a new mask each call
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(ours(x)[0], ours(x)[0])


def test_dropout_statistics():
    """Between layers, a fraction p of the features is zeroed and the rest scaled by 1/(1-p)."""
    torch.manual_seed(0)
    layer = rnnkit.RNN(1, 2000, num_layers=2, dropout=0.3, bias=False, impl="bptt")
    with torch.no_grad():
        layer.weight_ih_l0.fill_(1.0)
        layer.weight_hh_l0.zero_()
        layer.weight_hh_l1.zero_()
        layer.weight_ih_l1.copy_(torch.eye(2000))  # layer 2 sees tanh(dropout(tanh(x)))
    x = torch.full((1, 1, 1), 0.5)
    first = torch.tanh(torch.tensor(0.5))
    seen = torch.atanh(layer(x)[0].flatten())
    kept = seen != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.04
    torch.testing.assert_close(seen[kept], torch.full_like(seen[kept], first.item() / 0.7))


@pytest.mark.parametrize("loops", [True, False], ids=["cpp", "python"])
def test_second_derivatives_through_the_engine_raise_a_clear_error(loops):
    """The engine's backward is first-order only: asking for a graph of the gradient through it
    (create_graph=True) raises (torch would otherwise leave the layer's part out of a second
    derivative silently); torch's kernel computes it."""
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    with fused_enabled(loops), pytest.raises(rnnkit.RnnkitError, match="impl='torch'"):
        layer = rnnkit.GRU(I, H, impl="bptt").double()
        torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)
    layer = rnnkit.GRU(I, H, impl="torch").double()
    (grad,) = torch.autograd.grad(layer(x)[0].pow(2).sum(), x, create_graph=True)
    grad.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
