"""minGRU / minLSTM: parallel scan vs step mode vs the plain recurrence, lengths, gradcheck."""

from __future__ import annotations

import pytest
import torch

from rnnkit.errors import RnnkitError
from rnnkit.scan import MinGRU, MinLSTM, g, scan_log

LAYERS = [MinGRU, MinLSTM]


def step_mode(layer, x: torch.Tensor, hx=None) -> torch.Tensor:
    outputs = []
    for x_t in x:
        out, hx = layer.step(x_t, hx)
        outputs.append(out)
    return torch.stack(outputs)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("steps", [1, 2, 63, 64, 65, 300, 2048])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parallel_equals_step_mode(cls, steps, dtype):
    torch.manual_seed(steps)
    layer = cls(3, 8, num_layers=2).to(dtype)
    x = torch.randn(steps, 2, 3, dtype=dtype)
    hx = torch.randn(2, 2, 8, dtype=dtype)  # any sign: the h0 term is kept out of the logs
    with torch.no_grad():
        parallel, h_n = layer(x, hx)
        sequential = step_mode(layer, x, hx)
    torch.testing.assert_close(parallel, sequential, atol=1e-5, rtol=0)
    torch.testing.assert_close(h_n[-1], sequential[-1], atol=1e-5, rtol=0)


def test_scan_equals_the_recurrence_of_the_paper():
    """minGRU written out in plain space: h_t = (1 - z_t) h_{t-1} + z_t g(h~_t)."""
    torch.manual_seed(0)
    layer = MinGRU(3, 5).double()
    x = torch.randn(40, 2, 3, dtype=torch.float64)
    k, pre = layer.projections[0](x).chunk(2, dim=-1)
    z, h = torch.sigmoid(k), torch.zeros(2, 5, dtype=torch.float64)
    expected = []
    for t in range(40):
        h = (1 - z[t]) * h + z[t] * g(pre[t])
        expected.append(h)
    torch.testing.assert_close(layer(x)[0], torch.stack(expected), atol=1e-12, rtol=0)


def test_scan_log_is_a_linear_recurrence():
    torch.manual_seed(0)
    a, b = torch.rand(100, 2, 3, dtype=torch.float64), torch.rand(100, 2, 3, dtype=torch.float64)
    h = torch.randn(2, 3, dtype=torch.float64)
    out = scan_log(a.log(), b.log(), h, chunk=7)
    for t in range(100):
        h = a[t] * h + b[t]
        torch.testing.assert_close(out[t], h, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cls", LAYERS)
def test_lengths_and_bidirectional(cls):
    """Each sequence of a ragged batch equals that sequence run alone, both directions."""
    torch.manual_seed(0)
    layer = cls(3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    out, h_n = layer(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        alone, alone_h = layer(x[:n, b : b + 1])
        torch.testing.assert_close(out[:n, b], alone[:, 0], atol=1e-12, rtol=0)
        assert not out[n:, b].any()
        torch.testing.assert_close(h_n[:, b], alone_h[:, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("cls", LAYERS)
def test_gradcheck(cls):
    torch.manual_seed(0)
    layer = cls(2, 3, num_layers=2, bidirectional=True).double()
    x = torch.randn(5, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    weights = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(x, h0, *w):
        call = torch.func.functional_call
        return call(layer, dict(zip(names, w)), (x, h0), {"lengths": torch.tensor([5, 3])})

    assert torch.autograd.gradcheck(run, (x, h0, *weights))


def test_errors():
    layer = MinGRU(3, 4, bidirectional=True)
    with pytest.raises(RnnkitError, match=r"input must have shape \(T, B, 3\), got \(5, 2, 4\)"):
        layer(torch.randn(5, 2, 4))
    with pytest.raises(RnnkitError, match=r"hx must have shape \(2, 2, 4\), got \(1, 2, 4\)"):
        layer(torch.randn(5, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(RnnkitError, match="step needs bidirectional=False"):
        layer.step(torch.randn(2, 3))
