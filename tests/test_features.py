"""Feature cells and regularisers on the engine: gradcheck, a hand loop, and their statistics."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.cells import LayerNormGRUCell, LayerNormLSTMCell, PeepholeLSTMCell

T, B, I, H = 5, 3, 4, 6
LENGTHS = torch.tensor([5, 2, 4])
FEATURES = {
    "ln_lstm": (rnnkit.LSTM, {"layer_norm": True}),
    "ln_gru": (rnnkit.GRU, {"layer_norm": True}),
    "peephole": (rnnkit.LSTM, {"peephole": True}),
    "zoneout_lstm": (rnnkit.LSTM, {"zoneout": (0.3, 0.5)}),
    "zoneout_gru": (rnnkit.GRU, {"zoneout": 0.3}),
    "recurrent_dropout": (rnnkit.GRU, {"recurrent_dropout": 0.4}),
    "weight_dropout": (rnnkit.LSTM, {"weight_dropout": 0.5}),
    "zoneout_rnn_sigmoid": (rnnkit.RNN, {"zoneout": 0.2, "nonlinearity": "sigmoid"}),
}


def randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)


def outputs(layer, x, weights, names):
    torch.manual_seed(1)  # the same noise at every call, so gradcheck sees one function
    out, final = torch.func.functional_call(
        layer, dict(zip(names, weights)), (x,), {"lengths": LENGTHS}
    )
    return (out, *(final if isinstance(final, tuple) else (final,)))


@pytest.mark.parametrize("name", list(FEATURES))
@pytest.mark.parametrize("training", [True, False])
def test_feature_layer_passes_gradcheck(name, training):
    cls, options = FEATURES[name]
    torch.manual_seed(0)
    layer = cls(2, 3, num_layers=2, bidirectional=True, **options).double().train(training)
    randomise(layer)
    assert not layer.uses_torch_kernel()
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(T, B, 2, dtype=torch.float64, requires_grad=True)
    weights = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    # fast_mode checks random directional derivatives: the full Jacobian of each feature cell's
    # step_backward is checked in tests/test_cells.py
    assert torch.autograd.gradcheck(
        lambda x, *w: outputs(layer, x, w, names), (x, *weights), fast_mode=True
    )


@pytest.mark.parametrize("cls", [LayerNormLSTMCell, LayerNormGRUCell, PeepholeLSTMCell])
def test_feature_layer_equals_a_loop_over_its_cell(cls):
    """The engine (hand BPTT) equals plain autograd through the cell's single-step forward."""
    torch.manual_seed(0)
    cell = cls(I, H).double()
    randomise(cell)
    layer_cls = rnnkit.GRU if cls is LayerNormGRUCell else rnnkit.LSTM
    option = {"peephole": True} if cls is PeepholeLSTMCell else {"layer_norm": True}
    layer = layer_cls(I, H, **option).double()
    layer.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.zeros(B, H, dtype=torch.float64) for _ in range(cell.num_states))
    steps = []
    for t in range(T):
        new = cell(x[t], state if cell.num_states == 2 else state[0])
        state = new if isinstance(new, tuple) else (new,)
        steps.append(state[0])
    loop = torch.stack(steps)
    out, _ = layer(x)
    torch.testing.assert_close(out, loop, atol=1e-12, rtol=0)
    grads = torch.autograd.grad((out**2).sum(), [x, *layer.parameters()])
    ref = torch.autograd.grad((loop**2).sum(), [x, *cell.parameters()])
    for mine, theirs in zip(grads, ref, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-10, rtol=0)


def test_layer_norm_normalises_and_starts_with_unit_gains():
    layer = rnnkit.LSTM(I, H, layer_norm=True)
    assert torch.equal(layer.ln_weight_hh_l0, torch.ones(4 * H))
    assert torch.equal(layer.ln_bias_c_l0, torch.zeros(H))
    with pytest.raises(rnnkit.RnnkitError, match="needs bias=True"):
        rnnkit.GRU(I, H, layer_norm=True, bias=False)
    with pytest.raises(rnnkit.RnnkitError, match="layer_norm=True or peephole=True, not both"):
        rnnkit.LSTM(I, H, layer_norm=True, peephole=True)


def test_zoneout_keeps_units_at_its_rate_and_uses_its_expectation_in_eval():
    """With a constant input the candidate differs from h_{t-1}; a unit kept equals it exactly."""
    torch.manual_seed(0)
    layer = rnnkit.RNN(1, 4000, zoneout=0.3, bias=False)
    with torch.no_grad():
        layer.weight_hh_l0.zero_()
        layer.weight_ih_l0.fill_(1.0)
    x = torch.tensor([[[0.5]], [[-0.5]]])  # (T=2, B=1, I=1)
    out, _ = layer(x)
    first = out[0, 0]
    kept = out[1, 0] == first
    assert abs(kept.float().mean().item() - 0.3) < 0.03
    assert torch.all(out[1, 0][~kept] == torch.tanh(torch.tensor(-0.5)))
    layer.eval()
    out, _ = layer(x)
    cand = torch.tanh(torch.tensor(0.5))
    torch.testing.assert_close(out[0, 0], torch.full((4000,), 0.7 * cand.item()))


def test_recurrent_dropout_is_one_mask_per_sequence():
    """h_{t-1} feeds W_hh through the same dropped units at every step."""
    torch.manual_seed(0)
    layer = rnnkit.RNN(1, 500, recurrent_dropout=0.5, bias=False, nonlinearity="relu")
    with torch.no_grad():
        layer.weight_ih_l0.zero_()
        layer.weight_hh_l0.copy_(torch.eye(500))
    h0 = torch.ones(1, 2, 500)
    out, _ = layer(torch.zeros(4, 2, 1), h0)
    alive = out[0] != 0
    assert abs(alive.float().mean().item() - 0.5) < 0.06
    for t in range(1, 4):  # identity recurrence: a unit dropped once stays dropped
        assert torch.equal(out[t] != 0, alive)
        torch.testing.assert_close(out[t][alive], torch.full_like(out[t][alive], 2.0 ** (t + 1)))
    assert not torch.equal(alive[0], alive[1])  # one mask per sequence, not per batch
    layer.eval()
    torch.testing.assert_close(layer(torch.zeros(4, 2, 1), h0)[0], torch.ones(4, 2, 500))


def test_weight_dropout_is_off_in_eval_and_matches_torch_then():
    ours = rnnkit.LSTM(I, H, weight_dropout=0.5).double()
    theirs = torch.nn.LSTM(I, H).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    assert not torch.allclose(ours(x)[0], theirs(x)[0])
    ours.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("value", [-0.1, 1.0, "high"])
def test_bad_rates(value):
    with pytest.raises(rnnkit.RnnkitError, match=r"zoneout\[0\] must be in \[0, 1\)"):
        rnnkit.GRU(I, H, zoneout=value)
