"""minGRU / minLSTM: parallel scan vs step mode vs the plain recurrence, lengths, gradcheck."""

from __future__ import annotations

import pytest
import torch

from rnnkit.errors import RnnkitError
from rnnkit.kernels import build
from rnnkit.kernels.build import fused_enabled
from rnnkit.scan import MinGRU, MinLSTM, g, linear_scan, scan_log

LAYERS = [MinGRU, MinLSTM]
# (mode, C++ on): the fused C++ gates + scan, the torch gates + Python loop, the log-space scan
PATHS = [("linear_scan", True), ("linear_scan", False), ("log_scan", True)]
PATH_IDS = ["cpp", "python", "log_scan"]


def step_mode(layer, x: torch.Tensor, hx=None) -> torch.Tensor:
    outputs = []
    for x_t in x:
        out, hx = layer.step(x_t, hx)
        outputs.append(out)
    return torch.stack(outputs)


def test_the_extension_builds():
    """The C++ scan must build here: a silent fallback to the Python loop is 2x slower."""
    assert build.scan_extension() is not None


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("steps", [1, 2, 63, 64, 65, 300, 2048])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("mode", "cpp"), PATHS, ids=PATH_IDS)
def test_parallel_equals_step_mode(cls, steps, dtype, mode, cpp):
    torch.manual_seed(steps)
    layer = cls(3, 8, num_layers=2, mode=mode).to(dtype)
    x = torch.randn(steps, 2, 3, dtype=dtype)
    hx = torch.randn(2, 2, 8, dtype=dtype)  # any sign: the h0 term is kept out of the logs
    with torch.no_grad(), fused_enabled(cpp):
        parallel, h_n = layer(x, hx)
        sequential = step_mode(layer, x, hx)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(parallel, sequential, atol=tol, rtol=0)
    torch.testing.assert_close(h_n[-1], sequential[-1], atol=tol, rtol=0)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_paths_agree_with_gradients(cls, dtype):
    """Outputs and every gradient of each path against the fused C++ path in float64.

    In float32 the linear scans' gradients are within 5e-7 of the largest gradient, the
    log-space scan's within 4e-5 (its outputs within 1e-5): hence the two tolerances.
    """
    torch.manual_seed(0)
    layer = cls(3, 8, num_layers=2, bidirectional=True)
    x = torch.randn(300, 4, 3, dtype=torch.float64)
    hx = torch.randn(4, 4, 8, dtype=torch.float64)
    lengths = torch.tensor([300, 17, 256, 1])
    weights = torch.randn(300, 4, 16, dtype=torch.float64)

    def run(dtype, mode, cpp):
        layer.to(dtype).mode = mode
        inputs = [t.to(dtype).detach().requires_grad_() for t in (x, hx)]
        with fused_enabled(cpp):
            out, h_n = layer(*inputs, lengths=lengths)
            ((out * weights.to(dtype)).sum() + h_n.sum()).backward()
        grads = [t.grad for t in inputs] + [p.grad for p in layer.parameters()]
        layer.zero_grad(set_to_none=True)
        return [out.double(), h_n.double()], [grad.double() for grad in grads]

    expected_outputs, expected_grads = run(torch.float64, "linear_scan", True)
    for mode, cpp in PATHS:
        outputs, grads = run(dtype, mode, cpp)
        if dtype == torch.float64:
            out_tol, grad_tol = 1e-10, 1e-10
        else:
            out_tol, grad_tol = 1e-5, (1e-4 if mode == "log_scan" else 2e-6)
        for actual, expected in zip(outputs, expected_outputs):
            torch.testing.assert_close(actual, expected, atol=out_tol, rtol=0)
        for actual, expected in zip(grads, expected_grads):
            scale = expected.abs().max().item()
            torch.testing.assert_close(actual, expected, atol=grad_tol * scale, rtol=0)


@pytest.mark.parametrize("cpp", [True, False], ids=["cpp", "python"])
@pytest.mark.parametrize("masked", [False, True])
def test_linear_scan_gradcheck(cpp, masked):
    torch.manual_seed(0)
    a = torch.rand(7, 2, 3, dtype=torch.float64)
    if masked:  # what `lengths` does past a sequence's end: a = 1, b = 0
        a[4:, 1] = 1.0
    a.requires_grad_()
    b = torch.randn(7, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    with fused_enabled(cpp):
        assert torch.autograd.gradcheck(linear_scan, (a, b, h0))


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("cpp", [True, False], ids=["cpp", "python"])
def test_fused_gates_and_scan_gradcheck(cls, cpp):
    """One layer, straight on the projection's output: the C++ backward of the gates."""
    torch.manual_seed(0)
    layer = cls(2, 3).double()
    projected = 3 * torch.randn(6, 3, layer.num_gates * 3, dtype=torch.float64)
    projected.requires_grad_()
    h0 = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 3] * 3 + [[True, False, True]] * 3).unsqueeze(-1)
    with fused_enabled(cpp):
        assert torch.autograd.gradcheck(lambda p, h: layer._scan(p, h, mask), (projected, h0))


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


@pytest.mark.parametrize("cpp", [True, False], ids=["cpp", "python"])
def test_scans_are_the_linear_recurrence(cpp):
    torch.manual_seed(0)
    a, b = torch.rand(100, 2, 3, dtype=torch.float64), torch.rand(100, 2, 3, dtype=torch.float64)
    h = torch.randn(2, 3, dtype=torch.float64)
    out = scan_log(a.log(), b.log(), h, chunk=7)
    with fused_enabled(cpp):
        linear = linear_scan(a, b, h)
    for t in range(100):
        h = a[t] * h + b[t]
        torch.testing.assert_close(out[t], h, atol=1e-12, rtol=0)
        torch.testing.assert_close(linear[t], h, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cls", LAYERS)
def test_saturated_gates_stay_finite(cls):
    """Gate pre-activations far beyond float32's exp range: f, i both underflow in minLSTM.

    The log-space scan loses float32 precision here (1.5e-4: its cumulative sums of log a reach
    thousands within a chunk), the linear scans do not (2e-7).
    """
    torch.manual_seed(0)
    layer = cls(3, 4)
    projected = torch.randn(20, 2, layer.num_gates * 4)
    projected[..., :-4] *= 300.0  # the gates; the candidate h~ stays moderate
    h0 = torch.randn(2, 4)
    with fused_enabled(False):
        expected = layer.double()._scan(projected.double(), h0.double(), None)
    layer.float()
    for mode, cpp in PATHS:
        layer.mode = mode
        inputs = projected.clone().requires_grad_()
        with fused_enabled(cpp):
            out = layer._scan(inputs, h0, None)
            out.sum().backward()
        assert inputs.grad.isfinite().all()
        tol = 1e-3 if mode == "log_scan" else 1e-6
        torch.testing.assert_close(out.double(), expected, atol=tol, rtol=0)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize(("mode", "cpp"), PATHS, ids=PATH_IDS)
def test_lengths_and_bidirectional(cls, mode, cpp):
    """Each sequence of a ragged batch equals that sequence run alone, both directions."""
    torch.manual_seed(0)
    layer = cls(3, 4, num_layers=2, bidirectional=True, mode=mode).double()
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    with fused_enabled(cpp):
        out, h_n = layer(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        with fused_enabled(cpp):
            alone, alone_h = layer(x[:n, b : b + 1])
        torch.testing.assert_close(out[:n, b], alone[:, 0], atol=1e-12, rtol=0)
        assert not out[n:, b].any()
        torch.testing.assert_close(h_n[:, b], alone_h[:, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize(("mode", "cpp"), PATHS, ids=PATH_IDS)
def test_gradcheck(cls, mode, cpp):
    torch.manual_seed(0)
    layer = cls(2, 3, num_layers=2, bidirectional=True, mode=mode).double()
    x = torch.randn(5, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    weights = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(x, h0, *w):
        call = torch.func.functional_call
        return call(layer, dict(zip(names, w)), (x, h0), {"lengths": torch.tensor([5, 3])})

    with fused_enabled(cpp):
        assert torch.autograd.gradcheck(run, (x, h0, *weights))


def test_errors():
    layer = MinGRU(3, 4, bidirectional=True)
    with pytest.raises(RnnkitError, match=r"input must have shape \(T, B, 3\), got \(5, 2, 4\)"):
        layer(torch.randn(5, 2, 4))
    with pytest.raises(RnnkitError, match=r"hx must have shape \(2, 2, 4\), got \(1, 2, 4\)"):
        layer(torch.randn(5, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(RnnkitError, match="step needs bidirectional=False"):
        layer.step(torch.randn(2, 3))
    with pytest.raises(RnnkitError, match="mode must be one of"):
        MinGRU(3, 4, mode="parallel")


def test_linear_scan_and_min_layers_refuse_mismatched_inputs():
    from rnnkit.errors import RnnkitError
    from rnnkit.scan import MinGRU, linear_scan

    with pytest.raises(RnnkitError, match="linear_scan needs a and b"):
        linear_scan(torch.rand(5, 1, 4), torch.rand(5, 3, 4), torch.rand(3, 4))
    with pytest.raises(RnnkitError, match="one dtype"):
        linear_scan(torch.rand(5, 3, 4), torch.rand(5, 3, 4).double(), torch.rand(3, 4))
    with pytest.raises(RnnkitError, match="hx is torch.float64 but the input is torch.float32"):
        MinGRU(3, 4)(torch.rand(6, 2, 3), torch.zeros(1, 2, 4, dtype=torch.float64))


def test_second_derivatives_raise_on_the_linear_scan_and_pass_on_the_log_scan():
    """The linear scan's backward is first-order only: create_graph=True raises with the mode
    that computes it; the log-space scan (torch's differentiable ops) does."""
    x = torch.randn(9, 2, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RnnkitError, match="mode='log_scan'"):
        torch.autograd.grad(MinGRU(3, 4).double()(x)[0].sum(), x, create_graph=True)
    layer = MinGRU(3, 4, mode="log_scan").double()
    (grad,) = torch.autograd.grad(layer(x)[0].pow(2).sum(), x, create_graph=True)
    grad.sum().backward()
    assert x.grad.abs().sum() > 0
