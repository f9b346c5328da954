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
