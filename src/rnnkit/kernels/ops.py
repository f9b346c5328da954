"""rnnkit's C++ kernels as torch operators, ``torch.ops.rnnkit.*``: their schemas and fake
kernels (the shapes and dtypes of their outputs, which ``torch.compile``, ``torch.export`` and
FakeTensor run instead of the kernel). Loading an extension (`rnnkit.kernels.build`) registers
the CPU kernels; `rnnkit.kernels.loops`, `rnnkit.dropout` and `rnnkit.scan` give them autograd.

Shapes: T steps, B batch rows, H hidden units (P projected units for ``lstmp``). An absent bias,
mask, cell state or parameter list is an empty tensor (list); a gradient the caller did not ask
for is returned as an empty tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.errors import RnnkitError

_LIBRARY = torch.library.Library("rnnkit", "DEF")
_SCHEMAS = (
    "gru_forward(Tensor gx, Tensor w_hh, Tensor b_hh, Tensor h0, Tensor mask, Tensor[] ln, "
    "Tensor b_ih) -> Tensor[]",
    "gru_backward(Tensor grad_out, Tensor grad_hn, Tensor w_hh, Tensor states, Tensor cache, "
    "Tensor stats, Tensor mask, Tensor[] ln, bool bias, bool bias_ih) -> Tensor[]",
    "lstm_forward(Tensor gx, Tensor w_hh, Tensor b_hh, Tensor h0, Tensor c0, Tensor mask, "
    "Tensor rec_mask, Tensor keep_h, Tensor keep_c, Tensor peephole) -> Tensor[]",
    "lstm_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor w_hh, Tensor cells, "
    "Tensor cache, Tensor mask, Tensor rec_mask, Tensor keep_h, Tensor keep_c, "
    "Tensor peephole, bool bias) -> Tensor[]",
    "lstmp_forward(Tensor gx, Tensor w_hh, Tensor b_hh, Tensor w_hr, Tensor h0, Tensor c0, "
    "Tensor mask) -> Tensor[]",
    "lstmp_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor w_hh, Tensor w_hr, "
    "Tensor cells, Tensor cache, Tensor mask) -> Tensor[]",
    "ln_lstm_forward(Tensor gx, Tensor w_hh, Tensor h0, Tensor c0, Tensor mask, "
    "Tensor[] params) -> Tensor[]",
    "ln_lstm_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor w_hh, "
    "Tensor cells, Tensor cache, Tensor stats, Tensor mask, Tensor[] params) -> Tensor[]",
    "elman_forward(Tensor gx, Tensor w_hh, Tensor b_hh, Tensor h0, Tensor mask, "
    "int nonlinearity) -> Tensor",
    "elman_backward(Tensor grad_out, Tensor grad_hn, Tensor w_hh, Tensor states, Tensor mask, "
    "int nonlinearity, bool bias) -> Tensor[]",
    "matmul(Tensor a, Tensor b) -> Tensor",
    "linear_scan_forward(Tensor a, Tensor b, Tensor h0) -> Tensor",
    "linear_scan_backward(Tensor grad_h, Tensor a, Tensor h, Tensor h0) -> Tensor[]",
    "min_scan_forward(Tensor p, Tensor h0, Tensor mask, int kind) -> Tensor",
    "min_scan_backward(Tensor grad_h, Tensor p, Tensor h, Tensor h0, Tensor mask, int kind) "
    "-> Tensor[]",
    "masked_scale(Tensor x, float p, int seed, float scale) -> Tensor",
)
for _schema in _SCHEMAS:
    _LIBRARY.define(_schema)


def _fake(name: str):
    """Register the decorated function as operator ``name``'s fake kernel, refusing tensors on
    several devices (the kernel's outputs would not be computed: e.g. an empty tensor made on
    the meta device beside CPU inputs routes the call here)."""

    def register(kernel):
        def checked(*args):
            devices = {t.device for t in _tensors(args)}
            if len(devices) > 1:
                raise RnnkitError(f"rnnkit::{name} takes tensors on one device, got "
                                  f"{sorted(map(str, devices))}")  # fmt: skip
            return kernel(*args)

        return torch.library.register_fake(f"rnnkit::{name}", checked, lib=_LIBRARY)

    return register


def _tensors(args) -> list[Tensor]:
    found = []
    for a in args:
        if isinstance(a, Tensor):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            found += [t for t in a if isinstance(t, Tensor)]
    return found


def _new(like: Tensor, *shape) -> Tensor:
    return like.new_empty(shape)


@_fake("gru_forward")
def _(gx, w_hh, b_hh, h0, mask, ln, b_ih):
    T, B, H = gx.shape[0], gx.shape[1], h0.shape[1]
    cache = 7 * H if ln else 4 * H  # the gates, and with layer_norm the normalised product
    return [_new(gx, T + 1, B, H), _new(gx, T, B, cache), _new(gx, T if ln else 0, B, 1)]


@_fake("gru_backward")
def _(grad_out, grad_hn, w_hh, states, cache, stats, mask, ln, bias, bias_ih):
    T, B, H = cache.shape[0], cache.shape[1], states.shape[2]
    grads = [_new(cache, T, B, 3 * H), _new(cache, T, B, 3 * H),
             _new(cache, T if ln else 0, B, 3 * H), _new(cache, B, H)]  # fmt: skip
    return [
        *grads,
        _new(cache, 3 * H if bias and not ln else 0),
        _new(cache, 3 * H if bias_ih else 0),
    ]


@_fake("lstm_forward")
def _(gx, w_hh, b_hh, h0, c0, mask, rec_mask, keep_h, keep_c, peephole):
    T, B, H = gx.shape[0], gx.shape[1], h0.shape[1]
    return [_new(gx, T + 1, B, H), _new(gx, T + 1, B, H), _new(gx, T, B, 5 * H)]


@_fake("lstm_backward")
def _(grad_out, grad_hn, grad_cn, w_hh, cells, cache, mask, rec_mask, keep_h, keep_c, peep, bias):
    T, B, H = cache.shape[0], cache.shape[1], cells.shape[2]
    return [_new(cache, T, B, 4 * H), _new(cache, B, H), _new(cache, B, H),
            _new(cache, 4 * H if bias else 0)]  # fmt: skip


@_fake("lstmp_forward")
def _(gx, w_hh, b_hh, w_hr, h0, c0, mask):
    T, B, P, H = gx.shape[0], gx.shape[1], h0.shape[1], c0.shape[1]
    return [_new(gx, T + 1, B, P), _new(gx, T + 1, B, H), _new(gx, T, B, 5 * H)]


@_fake("lstmp_backward")
def _(grad_out, grad_hn, grad_cn, w_hh, w_hr, cells, cache, mask):
    T, B, H, P = cache.shape[0], cache.shape[1], cells.shape[2], w_hr.shape[0]
    return [_new(cache, T, B, 4 * H), _new(cache, T, B, P), _new(cache, B, P), _new(cache, B, H)]


@_fake("ln_lstm_forward")
def _(gx, w_hh, h0, c0, mask, params):
    T, B, H = gx.shape[0], gx.shape[1], h0.shape[1]
    return [_new(gx, T + 1, B, H), _new(gx, T + 1, B, H), _new(gx, T, B, 10 * H),
            _new(gx, T, B, 2)]  # fmt: skip


@_fake("ln_lstm_backward")
def _(grad_out, grad_hn, grad_cn, w_hh, cells, cache, stats, mask, params):
    T, B, H = cache.shape[0], cache.shape[1], cells.shape[2]
    return [_new(cache, T, B, 4 * H), _new(cache, T, B, 4 * H), _new(cache, B, H),
            _new(cache, B, H), _new(cache, 10 * H)]  # fmt: skip


@_fake("elman_forward")
def _(gx, w_hh, b_hh, h0, mask, nonlinearity):
    return _new(gx, gx.shape[0] + 1, gx.shape[1], h0.shape[1])


@_fake("elman_backward")
def _(grad_out, grad_hn, w_hh, states, mask, nonlinearity, bias):
    T, B, H = states.shape[0] - 1, states.shape[1], states.shape[2]
    return [_new(states, T, B, H), _new(states, B, H), _new(states, H if bias else 0)]


@_fake("matmul")
def _(a, b):
    return _new(a, a.shape[0], b.shape[1])


@_fake("linear_scan_forward")
def _(a, b, h0):
    return torch.empty_like(b, memory_format=torch.contiguous_format)


@_fake("linear_scan_backward")
def _(grad_h, a, h, h0):
    like = torch.empty_like(a, memory_format=torch.contiguous_format)
    return [like, torch.empty_like(like), torch.empty_like(h0)]


@_fake("min_scan_forward")
def _(p, h0, mask, kind):
    return _new(p, p.shape[0], p.shape[1], h0.shape[1])


@_fake("min_scan_backward")
def _(grad_h, p, h, h0, mask, kind):
    return [torch.empty_like(p, memory_format=torch.contiguous_format), torch.empty_like(h0)]


@_fake("masked_scale")
def _(x, p, seed, scale):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _dropout_context(ctx, inputs, output) -> None:
    ctx.p, ctx.seed, ctx.scale = inputs[1:]


def _dropout_backward(ctx, grad: Tensor):
    """The same mask and scale: masked_scale is linear in x."""
    return torch.ops.rnnkit.masked_scale(grad, ctx.p, ctx.seed, ctx.scale), None, None, None


torch.library.register_autograd(
    "rnnkit::masked_scale", _dropout_backward, setup_context=_dropout_context, lib=_LIBRARY
)
