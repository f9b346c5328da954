"""rnnkit's C++ kernels as torch operators (`rnnkit.kernels.ops`): each one's schema, fake
kernel, dispatch and registered autograd checked by `torch.library.opcheck` on real inputs
(the fake kernel must give the shapes, dtypes and strides the CPU kernel gives)."""

from __future__ import annotations

import pytest
import torch

from rnnkit.kernels import build, ops  # noqa: F401 - declares the operators

pytestmark = pytest.mark.skipif(
    None in (build.extension(), build.scan_extension(), build.dropout_extension()),
    reason="rnnkit's C++ extensions are not built here (no compiler)",
)
T, B, H, I = 5, 3, 4, 6
OPS = torch.ops.rnnkit


def tensors(*shapes, dtype=torch.float64):
    return [torch.randn(*s, dtype=dtype) for s in shapes]


def empty(dtype=torch.float64):
    return torch.empty(0, dtype=dtype)


def lstm_cases(dtype):
    gx, w_hh, b_hh, h0, c0 = tensors(
        (T, B, 4 * H), (4 * H, H), (4 * H,), (B, H), (B, H), dtype=dtype
    )
    mask = torch.tensor([[True] * B] * (T - 1) + [[True, False, True]])
    peep = torch.randn(3 * H, dtype=dtype)
    forward = (gx, w_hh, b_hh, h0, c0, mask, empty(dtype), empty(dtype), empty(dtype), peep)
    states, cells, cache = OPS.lstm_forward(*forward)
    grads = tensors((T, B, H), (B, H), (B, H), dtype=dtype)
    backward = (*grads, w_hh, cells, cache, mask, empty(dtype), empty(dtype), empty(dtype), peep,
                True)  # fmt: skip
    return [(OPS.lstm_forward, forward), (OPS.lstm_backward, backward)]


def gru_cases(dtype):
    gx, w_hh, b_hh, h0, b_ih = tensors(
        (T, B, 3 * H), (3 * H, H), (3 * H,), (B, H), (3 * H,), dtype=dtype
    )
    ln = tensors((3 * H,), (3 * H,), dtype=dtype)
    cases = []
    for norms, bias in (([], b_hh), (ln, empty(dtype))):
        forward = (gx, w_hh, bias, h0, torch.empty(0, dtype=torch.bool), norms, b_ih)
        states, cache, stats = OPS.gru_forward(*forward)
        backward = (*tensors((T, B, H), (B, H), dtype=dtype), w_hh, states, cache, stats,
                    torch.empty(0, dtype=torch.bool), norms, not norms, True)  # fmt: skip
        cases += [(OPS.gru_forward, forward), (OPS.gru_backward, backward)]
    return cases


def elman_and_products_cases(dtype):
    gx, w_hh, b_hh, h0 = tensors((T, B, H), (H, H), (H,), (B, H), dtype=dtype)
    forward = (gx, w_hh, b_hh, h0, torch.empty(0, dtype=torch.bool), 0)
    states = OPS.elman_forward(*forward)
    backward = (*tensors((T, B, H), (B, H), dtype=dtype), w_hh, states,
                torch.empty(0, dtype=torch.bool), 0, True)  # fmt: skip
    products = (*tensors((T * B, I), (I, 4 * H), dtype=dtype),)
    return [(OPS.elman_forward, forward), (OPS.elman_backward, backward), (OPS.matmul, products)]


def layer_norm_lstm_and_projected_cases(dtype):
    gx, w_hh, h0, c0 = tensors((T, B, 4 * H), (4 * H, H), (B, H), (B, H), dtype=dtype)
    params = tensors((4 * H,), (4 * H,), (H,), (H,), dtype=dtype)
    mask = torch.empty(0, dtype=torch.bool)
    forward = (gx, w_hh, h0, c0, mask, params)
    states, cells, cache, stats = OPS.ln_lstm_forward(*forward)
    grads = tensors((T, B, H), (B, H), (B, H), dtype=dtype)
    backward = (*grads, w_hh, cells, cache, stats, mask, params)
    P = 2
    w_hhp, w_hr, h0p = tensors((4 * H, P), (P, H), (B, P), dtype=dtype)
    projected = (gx, w_hhp, empty(dtype), w_hr, h0p, c0, mask)
    _, cells_p, cache_p = OPS.lstmp_forward(*projected)
    projected_back = (*tensors((T, B, P), (B, P), (B, H), dtype=dtype), w_hhp, w_hr, cells_p,
                      cache_p, mask)  # fmt: skip
    return [(OPS.ln_lstm_forward, forward), (OPS.ln_lstm_backward, backward),
            (OPS.lstmp_forward, projected), (OPS.lstmp_backward, projected_back)]  # fmt: skip


def scan_and_dropout_cases(dtype):
    a, b, h0 = torch.rand(T, B, H, dtype=dtype), *tensors((T, B, H), (B, H), dtype=dtype)
    h = OPS.linear_scan_forward(a, b, h0)
    p = torch.randn(T, B, 2 * H, dtype=dtype)
    mask = torch.ones(T, B, dtype=torch.bool)
    hm = OPS.min_scan_forward(p, h0, mask, 0)
    x = torch.randn(T, B, H, dtype=dtype, requires_grad=True)
    return [(OPS.linear_scan_forward, (a, b, h0)),
            (OPS.linear_scan_backward, (torch.randn_like(h), a, h, h0)),
            (OPS.min_scan_forward, (p, h0, mask, 0)),
            (OPS.min_scan_backward, (torch.randn_like(hm), p, hm, h0, mask, 0)),
            (OPS.masked_scale, (x, 0.3, 12345, 1 / 0.7))]  # fmt: skip


CASES = (lstm_cases, gru_cases, elman_and_products_cases, layer_norm_lstm_and_projected_cases,
         scan_and_dropout_cases)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cases", CASES, ids=[c.__name__ for c in CASES])
def test_operators_pass_opcheck(cases, dtype):
    checked = []
    for op, args in cases(dtype):
        # test_autograd_registration: the loops' autograd is rnnkit's autograd Functions, which
        # call these operators with gradients off; only masked_scale carries its own
        skip = () if op is OPS.masked_scale else ("test_autograd_registration",)
        tests = [t for t in torch.library._OPCHECK_DEFAULT_UTILS if t not in skip]
        torch.library.opcheck(op, args, test_utils=tests)
        checked.append(op)
    assert checked


def test_dropout_operator_is_differentiable_with_the_same_mask():
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    y = OPS.masked_scale(x, 0.5, 7, 2.0)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, OPS.masked_scale(torch.ones_like(x), 0.5, 7, 2.0))
    assert 0 < int((grad == 0).sum()) < 64


def test_kernels_imported_under_a_meta_device_context_still_compute():
    """A module imported inside ``with torch.device("meta")`` (as a trainer's meta-device size
    check imports the layers) must not keep tensors of that device for later calls: the
    operators would route to their fake kernels and return uninitialised memory."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "with torch.device('meta'):\n"
        "    import rnnkit.kernels.loops, rnnkit.scan\n"
        "import rnnkit\n"
        "torch.manual_seed(0)\n"
        "layer, x = rnnkit.GRU(1, 8), torch.rand(6, 16, 1, requires_grad=True)\n"
        "out, h = layer(x)\n"
        "out.square().sum().backward()\n"
        "with rnnkit.kernels.build.fused_enabled(False):\n"
        "    reference = layer(x)[0]\n"
        "assert torch.allclose(out, reference, atol=1e-6), 'outputs'\n"
        "assert all(torch.isfinite(p.grad).all() for p in layer.parameters()), 'gradients'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_an_operator_refuses_tensors_on_several_devices():
    from rnnkit.errors import RnnkitError

    gx, w_hh, h0 = torch.randn(T, B, H), torch.randn(H, H), torch.randn(B, H)
    meta = torch.empty(0, device="meta")
    with pytest.raises(RnnkitError, match="one device"):
        OPS.elman_forward(gx, w_hh, meta, h0, torch.empty(0, dtype=torch.bool), 0)
