"""Which path a layer takes: each cell class names its kernel (`Cell.kernel`), the engine looks
it up, `Recurrent.plan` says the path, and ``impl="auto"`` sends ragged batches to the C++
loops rather than torch's packed kernel."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.cells import (
    ElmanCell,
    GRUCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    LSTMCell,
    PeepholeLSTMCell,
    ProjectedLSTMCell,
)
from rnnkit.kernels import build, loops

KERNELS = {
    ElmanCell: "elman",
    GRUCell: "gru",
    LSTMCell: "lstm",
    PeepholeLSTMCell: "peephole",
    ProjectedLSTMCell: "lstmp",
    LayerNormLSTMCell: "ln_lstm",
    LayerNormGRUCell: "ln_gru",
}


@pytest.mark.parametrize("cls", list(KERNELS))
def test_each_cell_names_its_kernel(cls):
    assert cls.kernel == KERNELS[cls]
    assert cls.kernel in loops._KERNELS
    expected = {"recurrent_dropout", "zoneout"} if cls is LSTMCell else set()
    assert cls.kernel_features == expected


class MyGRU(GRUCell):
    """Changes the math: h' = 0.5 * GRU(h)."""

    def step(self, gx, gh, state, params=()):
        (h,), cache = super().step(gx, gh, state, params)
        return (0.5 * h,), cache

    def step_backward(self, grad_state, cache, params=()):
        return super().step_backward((0.5 * grad_state[0],), cache, params)


class PlainSubclass(GRUCell):
    """Changes nothing, says nothing: the Python engine."""


class DeclaredSubclass(GRUCell):
    """Changes nothing and says so: keeps the GRU's kernel."""

    kernel = "gru"


def test_a_subclass_does_not_inherit_the_kernel():
    assert MyGRU.kernel is None and PlainSubclass.kernel is None
    assert MyGRU.kernel_features == frozenset()
    assert DeclaredSubclass.kernel == "gru"
    assert not loops.supports(MyGRU(3, 4)) and not loops.supports(PlainSubclass(3, 4))
    assert loops.supports(DeclaredSubclass(3, 4))


def _layer(cls, dtype=torch.float64):
    torch.manual_seed(0)
    return rnnkit.Recurrent(cls, 3, 5, num_layers=2).to(dtype)


def test_a_subclass_that_changes_step_runs_its_own_math():
    ours, base = _layer(MyGRU), _layer(GRUCell)
    base.load_state_dict(ours.state_dict())
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    assert ours.plan(x) == "Python engine"
    assert base.plan(x) == "C++ loops (gru)"
    out, h_n = ours(x)
    h = x
    for layer, cell in enumerate(ours._cells):  # reference: a loop of the cell's own forward
        state, outs = torch.zeros(2, 5, dtype=torch.float64), []
        weights = ours._weights(layer, "")
        for x_t in h:
            gx, w_hh, b_hh, params = cell.engine_inputs(x_t[None], weights)
            gh = torch.nn.functional.linear(state, w_hh, b_hh)
            (state,), _ = cell.step(gx[0], gh, (state,), params)
            outs.append(state)
        h = torch.stack(outs)
    torch.testing.assert_close(out, h)
    assert not torch.allclose(out, base(x)[0])


@pytest.mark.parametrize("cls", [PlainSubclass, DeclaredSubclass])
def test_a_subclass_that_keeps_the_math_computes_the_gru(cls):
    ours, base = _layer(cls), _layer(GRUCell)
    base.load_state_dict(ours.state_dict())
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    assert ours.plan(x) == ("C++ loops (gru)" if cls is DeclaredSubclass else "Python engine")
    lengths = torch.tensor([7, 4])
    for a, b in zip(ours(x, lengths=lengths), base(x, lengths=lengths)):
        torch.testing.assert_close(a, b)


CONFIGS = [  # (layer, plan equal lengths, plan ragged)
    (lambda: rnnkit.LSTM(3, 4), "torch fused kernel", "C++ loops (lstm)"),
    (lambda: rnnkit.LSTM(3, 4, bidirectional=True, num_layers=2), "torch fused kernel",
     "C++ loops (lstm)"),
    (lambda: rnnkit.LSTM(3, 4, proj_size=2), "torch fused kernel", "C++ loops (lstmp)"),
    (lambda: rnnkit.LSTM(3, 4, peephole=True), "C++ loops (peephole)", "C++ loops (peephole)"),
    (lambda: rnnkit.LSTM(3, 4, layer_norm=True), "C++ loops (ln_lstm)", "C++ loops (ln_lstm)"),
    (lambda: rnnkit.LSTM(3, 4, zoneout=0.1), "C++ loops (lstm)", "C++ loops (lstm)"),
    (lambda: rnnkit.LSTM(3, 4, impl="torch"), "torch fused kernel", "torch packed kernel"),
    (lambda: rnnkit.LSTM(3, 4, impl="bptt"), "C++ loops (lstm)", "C++ loops (lstm)"),
    (lambda: rnnkit.GRU(3, 4), "C++ loops (gru)", "C++ loops (gru)"),
    (lambda: rnnkit.GRU(3, 4, layer_norm=True), "C++ loops (ln_gru)", "C++ loops (ln_gru)"),
    (lambda: rnnkit.GRU(3, 4, zoneout=0.1), "Python engine", "Python engine"),
    (lambda: rnnkit.GRU(3, 4, impl="torch"), "torch fused kernel", "torch packed kernel"),
    (lambda: rnnkit.RNN(3, 4), "C++ loops (elman)", "C++ loops (elman)"),
    (lambda: rnnkit.RNN(3, 4, nonlinearity="sigmoid"), "C++ loops (elman)", "C++ loops (elman)"),
    (lambda: rnnkit.Recurrent(MyGRU, 3, 4), "Python engine", "Python engine"),
]  # fmt: skip


@pytest.mark.parametrize("make,equal,ragged", CONFIGS)
def test_plan_names_the_path(make, equal, ragged):
    layer = make()
    x = torch.randn(6, 2, 3)
    assert layer.plan(x) == equal
    assert layer.plan(x, lengths=torch.tensor([6, 3])) == ragged
    assert layer.plan(x, lengths=torch.tensor([6, 6])) == equal  # all full: no lengths
    assert layer.uses_torch_kernel(x) == equal.startswith("torch")
    with build.fused_enabled(False):
        assert layer.plan(x) in ("torch fused kernel", "Python engine")


def test_plan_of_one_step_and_no_loops():
    layer = rnnkit.LSTM(3, 4).eval()
    x = torch.randn(1, 2, 3)
    with torch.no_grad():
        assert layer.plan(x) == "one step: C++ stack step"
    assert layer.plan(x) == "one step: torch cell function"
    assert rnnkit.LSTM(3, 4, bidirectional=True).plan(x) == "torch fused kernel"
    assert rnnkit.LSTM(3, 4, batch_first=True).plan() == "torch fused kernel"
    assert rnnkit.LSTM(3, 4).plan(torch.randn(6, 2, 3, dtype=torch.bfloat16)) == (
        "torch fused kernel"
    )


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj_size", [0, 3])
def test_ragged_lstm_auto_equals_torch(bidirectional, proj_size):
    torch.manual_seed(0)
    kwargs = dict(num_layers=2, bidirectional=bidirectional, proj_size=proj_size)
    auto = rnnkit.LSTM(3, 5, **kwargs).double()
    ref = rnnkit.LSTM(3, 5, impl="torch", **kwargs).double()
    ref.load_state_dict(auto.state_dict())
    x = torch.randn(9, 4, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([9, 2, 5, 7])
    assert auto.plan(x, lengths) != ref.plan(x, lengths) == "torch packed kernel"
    (out, (h, c)), (out_r, (h_r, c_r)) = auto(x, lengths=lengths), ref(x, lengths=lengths)
    for a, b in ((out, out_r), (h, h_r), (c, c_r)):
        torch.testing.assert_close(a, b)
    grads = [torch.autograd.grad(o.sum() + s.sum(), [x, *m.parameters()])
             for o, s, m in ((out, c, auto), (out_r, c_r, ref))]  # fmt: skip
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
