"""Cells: one step against torch.nn.*Cell, the hand-derived backward by gradcheck, init."""

from __future__ import annotations

import pytest
import torch

import rnnkit
import rnnkit.kernels.build
import rnnkit.kernels.loops
from rnnkit.cells import LayerNormGRUCell, LayerNormLSTMCell, PeepholeLSTMCell
from rnnkit.recurrence import lengths_to_mask, run_cell

B, I, H = 3, 4, 5
CELLS = {
    "elman_tanh": (lambda: rnnkit.ElmanCell(I, H), torch.nn.RNNCell(I, H)),
    "elman_relu": (
        lambda: rnnkit.ElmanCell(I, H, nonlinearity="relu"),
        torch.nn.RNNCell(I, H, nonlinearity="relu"),
    ),
    "elman_sigmoid": (lambda: rnnkit.ElmanCell(I, H, nonlinearity="sigmoid"), None),
    "lstm": (lambda: rnnkit.LSTMCell(I, H), torch.nn.LSTMCell(I, H)),
    "gru": (lambda: rnnkit.GRUCell(I, H), torch.nn.GRUCell(I, H)),
    "layer_norm_lstm": (lambda: LayerNormLSTMCell(I, H), None),
    "layer_norm_gru": (lambda: LayerNormGRUCell(I, H), None),
    "peephole_lstm": (lambda: PeepholeLSTMCell(I, H), None),
}


@pytest.mark.parametrize("name", [n for n, (_, ref) in CELLS.items() if ref is not None])
@pytest.mark.parametrize("batched", [True, False])
def test_cell_matches_torch_cell(name, batched):
    make, ref = CELLS[name]
    cell, ref = make().double(), ref.double()
    ref.load_state_dict(cell.state_dict())
    shape = (B,) if batched else ()
    x = torch.randn(*shape, I, dtype=torch.float64)
    count = 2 if name == "lstm" else 1
    states = tuple(torch.randn(*shape, H, dtype=torch.float64) for _ in range(count))
    hx = states if count == 2 else states[0]
    ours, theirs = cell(x, hx), ref(x, hx)
    for mine, expected in zip(ours if count == 2 else [ours], theirs if count == 2 else [theirs]):
        torch.testing.assert_close(mine, expected, atol=1e-12, rtol=0)


ENGINES = [(name, False) for name in CELLS] + [
    (name, True)
    for name in CELLS
    if name.startswith(("elman", "gru"))  # cells with C++ loops
]


@pytest.mark.parametrize("name,fused", ENGINES)
@pytest.mark.parametrize("masked", [False, True])
def test_step_backward_passes_gradcheck(name, masked, fused):
    """The engine's hand-written BPTT through each cell, with and without a length mask; GRU
    and Elman cells both through their Python step_backward and the C++ loops."""
    assert rnnkit.kernels.loops.supports(CELLS[name][0]()) or not fused
    with rnnkit.kernels.build.fused_enabled(fused):
        check_step_backward(name, masked)


def check_step_backward(name: str, masked: bool) -> None:
    torch.manual_seed(0)
    cell = CELLS[name][0]().double()
    with torch.no_grad():
        for p in cell.parameters():
            p.normal_(0, 0.5)  # gains and peepholes away from their 1 / 0 initial values
    T = 5
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    names = list(cell.named_weights())
    weights = [w.detach().clone().requires_grad_() for w in cell.named_weights().values()]
    state0 = tuple(
        torch.randn(B, H, dtype=torch.float64, requires_grad=True) for _ in range(cell.num_states)
    )
    mask = lengths_to_mask(torch.tensor([5, 2, 3]), T) if masked else None

    def run(x, *inputs):
        weights, state0 = dict(zip(names, inputs)), inputs[len(names) :]
        gx, w_hh, b_hh, params = cell.engine_inputs(x, weights)
        output, final = run_cell(cell, gx, w_hh, b_hh, state0, mask, params)
        return (output, *final)

    assert torch.autograd.gradcheck(run, (x, *weights, *state0))


@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU])
def test_layer_passes_gradcheck_with_lengths_and_both_directions(cls):
    torch.manual_seed(0)
    layer = cls(3, 4, num_layers=2, bidirectional=True, impl="bptt").double()
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 5, 3])
    names = [name for name, _ in layer.named_parameters()]

    def run(x, *weights):
        output, final = torch.func.functional_call(
            layer, dict(zip(names, weights)), (x,), {"lengths": lengths}
        )
        return (output, *(final if isinstance(final, tuple) else (final,)))

    weights = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(run, (x, *weights))


class _OwnGRUCell(rnnkit.GRUCell):
    """A user's GRU variant whose step calls the GRU's without passing ``params`` on."""

    def step(self, gx, gh, state, params=()):
        return super().step(gx, gh, state)


@pytest.mark.parametrize(
    "cell,folded",
    [
        (rnnkit.ElmanCell(3, 4), True),
        (rnnkit.LSTMCell(3, 4), True),
        (PeepholeLSTMCell(3, 4), True),
        (rnnkit.ProjectedLSTMCell(3, 4, 2), True),
        (rnnkit.GRUCell(3, 4), False),  # r multiplies b_hn, not b_in: b_ih a step parameter
        (rnnkit.GRUCell(3, 4, bias=False), False),
        (_OwnGRUCell(3, 4), False),
        (rnnkit.LSTMCell(3, 4, bias=False), False),
    ],
    ids=["elman", "lstm", "peephole", "projected", "gru", "gru-no-bias", "gru-subclass", "no-bias"],
)
def test_engine_inputs_add_the_biases_where_only_their_sum_acts(cell, folded):
    """Where the step reads gx + gh only, gx leaves bias_ih out and the engine's bias is
    bias_ih + bias_hh (added once a step; one gradient sum for both); the GRU's gx leaves it
    out too, and its step adds it (a parameter of the step); a subclass of the GRU keeps it in gx,
    as its own step may call the GRU's without parameters."""
    torch.manual_seed(0)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    cell = cell.double()
    weights = cell.named_weights()
    gx, _, bias, params = cell.engine_inputs(x, weights)
    plain = x @ weights["weight_ih"].t()
    if folded:
        assert torch.equal(bias, weights["bias_ih"] + weights["bias_hh"])
        assert torch.allclose(gx, plain, rtol=0, atol=1e-14)
    elif type(cell) is rnnkit.GRUCell:
        assert torch.allclose(gx, plain, rtol=0, atol=1e-14)
        assert bias is weights["bias_hh"]
        assert params == ((weights["bias_ih"],) if cell.bias else ())
    elif cell.bias:
        assert bias is weights["bias_hh"] and params == ()
        assert torch.allclose(gx, plain + weights["bias_ih"], rtol=0, atol=1e-14)
        state = (torch.randn(2, 4, dtype=torch.float64),)
        own = cell(x[0], state[0])  # its step drops params: b_ih must be in gx
        expected = torch.gru_cell(x[0], state[0], *weights.values())
        torch.testing.assert_close(own, expected)
    else:
        assert bias is None


def test_default_init_matches_torch_bounds():
    cell = rnnkit.GRUCell(I, 100)
    bound = 1 / 100**0.5
    for p in cell.parameters():
        assert p.abs().max() <= bound
        assert p.abs().max() > 0.9 * bound  # uniform over the whole range, not a narrow one


def test_orthogonal_recurrent_init():
    cell = rnnkit.LSTMCell(I, H, recurrent_init="orthogonal")
    for block in cell.weight_hh.detach().view(4, H, H):
        torch.testing.assert_close(block @ block.T, torch.eye(H), atol=1e-5, rtol=0)


def test_identity_recurrent_init_is_irnn():
    cell = rnnkit.ElmanCell(I, H, nonlinearity="relu", recurrent_init="identity")
    torch.testing.assert_close(cell.weight_hh.detach(), torch.eye(H))
    assert not cell.bias_ih.any() and not cell.bias_hh.any()
    layer = rnnkit.RNN(I, H, num_layers=2, nonlinearity="relu", recurrent_init="identity")
    torch.testing.assert_close(layer.weight_hh_l1.detach(), torch.eye(H))


def test_forget_bias():
    cell = rnnkit.LSTMCell(I, H, forget_bias=1.0)
    torch.testing.assert_close(cell.bias_ih.detach()[H : 2 * H], torch.ones(H))
    torch.testing.assert_close(cell.bias_hh.detach()[H : 2 * H], torch.zeros(H))
    layer = rnnkit.LSTM(I, H, bidirectional=True, forget_bias=2.0)
    layer.reset_parameters()
    torch.testing.assert_close(layer.bias_ih_l0_reverse.detach()[H : 2 * H], 2 * torch.ones(H))


def test_bad_cell_options():
    with pytest.raises(rnnkit.RnnkitError, match="nonlinearity must be one of tanh, relu, sigmoid"):
        rnnkit.ElmanCell(I, H, nonlinearity="gelu")
    with pytest.raises(rnnkit.RnnkitError, match="recurrent_init must be one of"):
        rnnkit.GRUCell(I, H, recurrent_init="xavier")
