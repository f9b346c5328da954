"""The C++ time loops: built here, taken for GRU and Elman, equal to the Python engine."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import fused


def test_the_extension_builds_here():
    """A failed build would fall back to the slower Python engine with a warning: fail instead."""
    assert fused.extension() is not None


@pytest.mark.parametrize(
    "cell,expected",
    [
        (rnnkit.GRUCell(3, 4), True),
        (rnnkit.ElmanCell(3, 4, nonlinearity="sigmoid"), True),
        (rnnkit.LSTMCell(3, 4), False),
        (rnnkit.LayerNormGRUCell(3, 4), False),
    ],
)
def test_which_cells_run_in_cpp(cell, expected):
    assert fused.supports(cell) is expected
    with fused.fused_enabled(False):
        assert not fused.supports(cell)


@pytest.mark.parametrize("cls", [rnnkit.GRU, rnnkit.RNN])
def test_cpp_equals_python_engine_float32(cls):
    torch.manual_seed(0)
    layer = cls(8, 16, num_layers=2, bidirectional=True, impl="bptt")
    x = torch.randn(30, 5, 8, requires_grad=True)
    lengths = torch.tensor([30, 3, 17, 1, 29])
    results = []
    for enabled in (True, False):
        with fused.fused_enabled(enabled):
            out, h_n = layer(x, lengths=lengths)
            grads = torch.autograd.grad((out**2).sum() + h_n.sum(), [x, *layer.parameters()])
        results.append((out, h_n, *grads))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


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
