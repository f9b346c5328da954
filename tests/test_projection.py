"""LSTM with projection (proj_size, LSTMP) against torch.nn.LSTM(proj_size=P), gradcheck, step."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.cells import ProjectedLSTMCell
from rnnkit.dropout import torch_masks
from rnnkit.recurrence import lengths_to_mask, run_cell

T, B, I, H, P = 5, 4, 3, 5, 2
RAGGED = torch.tensor([3, 5, 1, 4])  # unsorted, one full-length, one of length 1

# torch warns once per process that oneDNN has no projected LSTM (it falls back by itself)
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")


def make_pair(impl: str, dtype=torch.float64, **kwargs):
    ours = rnnkit.LSTM(I, H, proj_size=P, impl=impl, **kwargs).to(dtype)
    theirs = torch.nn.LSTM(I, H, proj_size=P, **kwargs).to(dtype)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.5)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def run_torch(module, x, hx, lengths, batch_first=False):
    if lengths is None:
        return module(x, hx)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, final = module(packed, hx)
    out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    return out, final


@pytest.mark.parametrize(
    "impl,num_layers,bidirectional,ragged,with_hx,bias",
    [
        (impl, layers, bid, ragged, hx, bias)
        for impl, layers, bid, ragged, hx in itertools.product(
            ("bptt", "torch"), (1, 2), (False, True), (False, True), (False, True)
        )
        for bias in ((True, False) if hx else (True,))
    ],
    ids=str,
)
def test_matches_torch_float64(impl, num_layers, bidirectional, ragged, with_hx, bias):
    torch.manual_seed(hash((num_layers, bidirectional, ragged, with_hx, bias)) % 2**31)
    ours, theirs = make_pair(impl, num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    assert ours.uses_torch_kernel() == (impl == "torch")
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    states = ()
    if with_hx:
        states = tuple(
            torch.randn(num_layers * D, B, size, dtype=torch.float64, requires_grad=True)
            for size in (P, H)
        )
    hx = states or None
    lengths = RAGGED if ragged else None

    out, final = ours(x, hx, lengths=lengths)
    ref_out, ref_final = run_torch(theirs, x, hx, lengths)
    assert out.shape == (T, B, D * P)
    assert final[0].shape == (num_layers * D, B, P) and final[1].shape == (num_layers * D, B, H)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    for mine, ref in zip(final, ref_final, strict=True):
        torch.testing.assert_close(mine, ref, atol=1e-10, rtol=0)

    weights = [torch.randn_like(out), *(torch.randn_like(s) for s in final)]
    inputs = [x, *states]

    def grads(module, output, state):
        loss = sum((o * w).sum() for o, w in zip((output, *state), weights, strict=True))
        return torch.autograd.grad(loss, inputs + list(module.parameters()))

    for mine, ref in zip(grads(ours, out, final), grads(theirs, ref_out, ref_final), strict=True):
        torch.testing.assert_close(mine, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("impl", ["bptt", "torch"])
def test_batch_first_unbatched_and_float32(impl):
    ours, theirs = make_pair(impl, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(B, T, I, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-10, rtol=0)
    out, (h, c) = ours(x[0])  # unbatched (T, I)
    ref_out, (ref_h, ref_c) = theirs(x[0])
    assert out.shape == (T, 2 * P) and h.shape == (4, P) and c.shape == (4, H)
    for mine, ref in ((out, ref_out), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(mine, ref, atol=1e-10, rtol=0)
    ours, theirs = ours.float(), theirs.float()
    with torch.backends.mkldnn.flags(enabled=False):
        torch.testing.assert_close(ours(x.float())[0], theirs(x.float())[0], atol=1e-5, rtol=0)


def randomised_cell(**kwargs) -> ProjectedLSTMCell:
    torch.manual_seed(0)
    cell = ProjectedLSTMCell(I, H, P, **kwargs).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.normal_(0, 0.5)
    return cell


@pytest.mark.parametrize("masked", [False, True])
def test_step_backward_passes_gradcheck(masked):
    """The engine's hand-written BPTT through ProjectedLSTMCell (full Jacobian)."""
    cell = randomised_cell()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    names = list(cell.named_weights())
    weights = [w.detach().clone().requires_grad_() for w in cell.named_weights().values()]
    state0 = tuple(torch.randn(B, size, dtype=torch.float64, requires_grad=True) for size in (P, H))
    mask = lengths_to_mask(RAGGED, T) if masked else None

    def run(x, *inputs):
        weights, state0 = dict(zip(names, inputs)), inputs[len(names) :]
        gx, w_hh, b_hh, params = cell.engine_inputs(x, weights)
        output, final = run_cell(cell, gx, w_hh, b_hh, state0, mask, params)
        return (output, *final)

    assert torch.autograd.gradcheck(run, (x, *weights, *state0))


def test_layer_equals_a_loop_over_its_cell():
    """The engine (hand BPTT) equals plain autograd through the cell's single-step forward."""
    cell = randomised_cell()
    layer = rnnkit.LSTM(I, H, proj_size=P, impl="bptt").double()
    layer.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    state = cell.initial_state(B, torch.float64, x.device)
    steps = []
    for t in range(T):
        state = cell(x[t], state)
        steps.append(state[0])
    loop = torch.stack(steps)
    out, _ = layer(x)
    torch.testing.assert_close(out, loop, atol=1e-12, rtol=0)
    grads = torch.autograd.grad((out**2).sum(), [x, *layer.parameters()])
    ref = torch.autograd.grad((loop**2).sum(), [x, *cell.parameters()])
    for mine, theirs in zip(grads, ref, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-10, rtol=0)


OPTIONS = {
    "plain": {},
    "dropout": {"dropout": 0.3},
    "recurrent_dropout": {"recurrent_dropout": 0.4},
    "zoneout": {"zoneout": (0.3, 0.5)},
    "weight_dropout": {"weight_dropout": 0.5},
}


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("training", [True, False])
def test_layer_passes_gradcheck(name, training):
    torch.manual_seed(0)
    layer = rnnkit.LSTM(
        2, 3, num_layers=2, bidirectional=True, proj_size=2, impl="bptt", **OPTIONS[name]
    ).double()
    layer.train(training)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(T, B, 2, dtype=torch.float64, requires_grad=True)
    weights = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(x, *weights):
        torch.manual_seed(1)  # the same noise at every call, so gradcheck sees one function
        out, final = torch.func.functional_call(
            layer, dict(zip(names, weights)), (x,), {"lengths": RAGGED}
        )
        return (out, *final)

    assert torch.autograd.gradcheck(run, (x, *weights), fast_mode=name != "plain" or training)


def test_regularisers_run_on_the_engine_and_dropout_matches_torch():
    assert not rnnkit.LSTM(I, H, proj_size=P, zoneout=0.1).uses_torch_kernel()
    assert rnnkit.LSTM(I, H, proj_size=P).uses_torch_kernel()
    ours, theirs = make_pair("bptt", num_layers=3, dropout=0.5)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch_masks():  # rnnkit's dropout draws torch's masks: the same places
        torch.manual_seed(7)
        out = ours(x)[0]
    torch.manual_seed(7)
    torch.testing.assert_close(out, theirs(x)[0], atol=1e-10, rtol=0)  # same masks, same places
    assert not torch.allclose(out, ours(x)[0])  # a new mask each call
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("options", [{}, {"zoneout": (0.2, 0.4)}, {"forget_bias": 1.0}])
def test_step_equals_forward(options):
    torch.manual_seed(0)
    layer = rnnkit.LSTM(I, H, num_layers=2, proj_size=P, **options).double().eval()
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = (torch.randn(2, B, P, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64))
    out, final = layer(x, h0)
    y, state = layer.step(x[0], h0)  # one step equals forward on that step
    torch.testing.assert_close(y, layer(x[:1], h0)[0][0], atol=1e-12, rtol=0)
    steps = [y]
    for x_t in x[1:]:
        y, state = layer.step(x_t, state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps), out, atol=1e-12, rtol=0)
    for mine, ref in zip(state, final, strict=True):
        torch.testing.assert_close(mine, ref, atol=1e-12, rtol=0)
    y, (h, c) = layer.step(x[0, 0])  # unbatched
    assert y.shape == (P,) and h.shape == (2, P) and c.shape == (2, H)


def test_state_dict_round_trip_and_repr():
    ours = rnnkit.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P)
    theirs = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P)
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(ref)
    assert [v.shape for v in mine.values()] == [v.shape for v in ref.values()]
    assert ours.weight_hh_l1_reverse.shape == (4 * H, P)
    assert ours.weight_ih_l1.shape == (4 * H, 2 * P)
    assert ours.weight_hr_l0.shape == (P, H)
    assert ours.weight_hr_l0.abs().max() <= 1 / H**0.5  # torch's initialisation
    theirs.load_state_dict(mine)
    torch.nn.init.normal_(theirs.weight_hr_l1_reverse)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.weight_hr_l1_reverse, theirs.weight_hr_l1_reverse)
    assert "proj_size=2" in repr(ours)
    assert "proj_size=2" in repr(ProjectedLSTMCell(I, H, P))
    # positional, as torch: (input, hidden, layers, bias, batch_first, dropout, bidirectional, P)
    assert rnnkit.LSTM(I, H, 1, True, False, 0.0, False, P).weight_hr_l0.shape == (P, H)
    assert (
        rnnkit.LSTM(I, H, proj_size=0).state_dict().keys()
        == torch.nn.LSTM(I, H).state_dict().keys()
    )


def test_orthogonal_recurrent_init_with_projection():
    layer = rnnkit.LSTM(I, H, proj_size=P, recurrent_init="orthogonal")
    for block in layer.weight_hh_l0.detach().view(4, H, P):  # orthonormal columns
        torch.testing.assert_close(block.T @ block, torch.eye(P), atol=1e-5, rtol=0)


def test_errors():
    with pytest.raises(rnnkit.RnnkitError, match="proj_size should be a positive integer or zero"):
        rnnkit.LSTM(I, H, proj_size=-1)
    for bad in (H, H + 1):
        with pytest.raises(rnnkit.RnnkitError, match="proj_size has to be smaller than hidden"):
            rnnkit.LSTM(I, H, proj_size=bad)
    with pytest.raises(rnnkit.RnnkitError, match="proj_size should be a positive integer, got 0"):
        ProjectedLSTMCell(I, H, 0)
    for cls in (rnnkit.GRU, rnnkit.RNN):
        with pytest.raises(rnnkit.RnnkitError, match="only supported for LSTM, not RNN or GRU"):
            cls(I, H, proj_size=2)
    for option in ("layer_norm", "peephole"):
        with pytest.raises(rnnkit.RnnkitError, match=f"proj_size is not supported with {option}"):
            rnnkit.LSTM(I, H, proj_size=P, **{option: True})
    layer = rnnkit.LSTM(I, H, proj_size=P)
    x = torch.randn(T, B, I)
    bad_h = (torch.zeros(1, B, H), torch.zeros(1, B, H))
    with pytest.raises(rnnkit.RnnkitError, match=r"h_0 must have shape \(1, 4, 2\).*proj_size"):
        layer(x, bad_h)
