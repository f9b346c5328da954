"""The engine's time loops for LSTM, GRU and Elman cells, on the ``rnnkit::`` operators of
`rnnkit.kernels.ops` (C++, ``csrc/fused.cpp``), with their autograd.

Why C++: at the sizes RNNs are trained at on a CPU, a Python step costs as much as its matrix
product (about ten pointwise kernels, each a few microseconds of dispatch), and torch runs only
LSTM through oneDNN. The loops run the same algorithm as `rnnkit.recurrence` (hoisted input
product, one GEMM per step, BPTT with the weight gradients gathered after the loop) with each
step's pointwise math fused into one pass. They cover the classic cells, the peephole LSTM, the
projected LSTM and the layer-normalised LSTM and GRU, and for the LSTM also recurrent dropout and
zoneout (their masks drawn in Python as the Python engine draws them, so both paths give the
same numbers under one seed); a cell names its loop (`Cell.kernel`), and every other cell runs
the Python engine.

Matrix products (float32): each step's on rnnkit's packed kernel (``csrc/step_gemm.h``), the big
ones outside the loop on `rnnkit.kernels.products`; see docs/performance.md for what each costs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.errors import LAYER_SECOND_ORDER, first_order_only
from rnnkit.kernels.build import _state, extension, handles, loops_loaded
from rnnkit.kernels.products import matmul

_OPS = torch.ops.rnnkit

_NONLINEARITY = {"tanh": 0, "relu": 1, "sigmoid": 2}


def exporting(x: Tensor) -> bool:
    """True while a graph is recorded for another runtime: ``torch.jit`` tracing, ONNX export
    and ``torch.export`` (or x is a meta tensor), where a layer records torch's own kernels,
    rnnkit's operators where `records_operators`, or refuses. Not under ``torch.compile``
    alone: its graph runs in this process, and the ``rnnkit::`` operators are in it."""
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
        or x.device.type == "meta"
    )


def records_operators() -> bool:
    """True under ``torch.export`` alone (not ONNX export, not ``torch.jit``): its program may
    keep the ``rnnkit::`` operators (`rnnkit.kernels.ops`), and runs where rnnkit is imported."""
    return (
        torch.compiler.is_exporting()
        and not torch.onnx.is_in_onnx_export()
        and not torch.jit.is_tracing()
    )


def supports(cell, needs: frozenset[str] = frozenset()) -> bool:
    """True if this cell's time loop runs in C++: its class names a kernel here
    (`Cell.kernel`, declared per class, never inherited) that computes ``needs`` too
    (``"recurrent_dropout"``, ``"zoneout"``: `Cell.kernel_features`; only the LSTM's)."""
    cls = type(cell)
    return (
        _state["enabled"]
        and cls.kernel in _KERNELS
        and needs <= cls.kernel_features
        and loops_loaded()
    )


def run_fused(
    cell, gx: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, state0, mask,
    params: tuple[Tensor, ...] = (), recurrent_mask: Tensor | None = None, zoneout=None,
) -> tuple[Tensor, tuple[Tensor, ...]]:  # fmt: skip
    """As `rnnkit.recurrence.run_cell` for a cell that `supports`: (output (T, B, H), final
    state), on the loop its class names (`_KERNELS`)."""
    recording = _recording(gx, weight_hh, bias_hh, *state0, *params)
    run = _KERNELS[type(cell).kernel]
    return run(cell, recording, gx, weight_hh, bias_hh, state0, mask, params, recurrent_mask,
               zoneout)  # fmt: skip


def _run_ln_lstm(cell, recording, gx, weight_hh, bias_hh, state0, mask, params, *noise):
    output, h_n, c_n = _FusedLayerNormLSTM.apply(recording, gx, weight_hh, *state0, mask,
                                                 *params)  # fmt: skip
    return output, (h_n, c_n)


def _run_lstmp(cell, recording, gx, weight_hh, bias_hh, state0, mask, params, *noise):
    # params: (weight_hr,)
    output, h_n, c_n = _FusedProjectedLSTM.apply(recording, gx, weight_hh, bias_hh, *params,
                                                 *state0, mask)  # fmt: skip
    return output, (h_n, c_n)


def _run_lstm(cell, recording, gx, weight_hh, bias_hh, state0, mask, params, recurrent_mask,
              zoneout):  # fmt: skip
    # plain or peephole (params: w_ic, w_fc, w_oc)
    keeps = _zoneout_keeps(zoneout, gx.shape[0], state0[0])
    peephole = torch.cat(params) if params else None
    output, h_n, c_n = _FusedLSTM.apply(recording, gx, weight_hh, bias_hh, *state0, mask,
                                        recurrent_mask, *keeps, peephole)  # fmt: skip
    return output, (h_n, c_n)


def _run_loop(cell, recording, gx, weight_hh, bias_hh, state0, mask, params, *noise):
    # GRU, LN-GRU, Elman; params: the GRU's (bias_ih,) or (), the LN-GRU's norms'
    kind = type(cell).kernel
    code = _NONLINEARITY[cell.nonlinearity] if kind == "elman" else 3
    bias_ih, norms = (params[0] if params else None, ()) if kind == "gru" else (None, params)
    output, h_n = _FusedLoop.apply(recording, code, gx, weight_hh, bias_hh, bias_ih, state0[0],
                                   mask, None, *norms)  # fmt: skip
    return output, (h_n,)


def takes_input(cell, x: Tensor, noisy: bool) -> bool:
    """True if `run_on_input` runs this cell over input like ``x``: a plain Elman or GRU cell
    without recurrent dropout or zoneout, on a loop of the extension."""
    return not noisy and type(cell).kernel in ("elman", "gru") and handles(x) and supports(cell)


def run_on_input(
    cell, x: Tensor, weights: dict[str, Tensor | None], state0: tuple[Tensor], mask
) -> tuple[Tensor, tuple[Tensor]]:
    """`Cell.engine_inputs` then `run_fused` for a cell that `takes_input`, in one autograd node:
    x (T, B, I), the cell's weights by name, state0 (h0 (B, H),), mask (T, B, 1) or None ->
    (output (T, B, H), (h_n,)). A layer call then records one node instead of the projection's,
    the biases' sum and the loop's (docs/performance.md, fix 17)."""
    w_ih, w_hh, b_ih, b_hh = (weights[k] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    recording = _recording(x, w_ih, w_hh, b_ih, b_hh, state0[0])
    code = 3 if type(cell).kernel == "gru" else _NONLINEARITY[cell.nonlinearity]
    output, h_n = _FusedLoop.apply(recording, code, x, w_hh, b_hh, b_ih, state0[0], mask, w_ih)
    return output, (h_n,)


def _recording(*inputs: Tensor | None) -> bool:
    """True if autograd records a loop over these inputs (None: an absent tensor)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)


def _outputs(states: Tensor, mask: Tensor | None, recording: bool) -> Tensor:
    """A loop's outputs (T, B, H), h_1 .. h_T of states (T + 1, B, H), zero past each sequence's
    end (mask (T, B, 1)): a tensor of their own when autograd keeps states for the backward (an
    in-place op on the outputs must not change what the backward reads), else states' memory
    itself (no copy: inference), as a plain tensor rather than a view: autograd refuses in-place
    ops with operands that need gradients on views made inside a custom Function's forward
    (a frozen encoder's outputs, reentrant checkpointing's first pass)."""
    if mask is not None:
        return states[1:] * mask
    if recording or torch.compiler.is_compiling():  # a compiled graph makes its own copies
        return states[1:].clone()
    view = states[1:]
    alias = view.new_empty(0)
    return alias.set_(view.untyped_storage(), view.storage_offset(), view.shape, view.stride())


def step_code(cells: list) -> int | None:
    """The code of `stack_step` for a stack whose cells all run one plain kernel (0-2 Elman
    with tanh, relu, sigmoid; 3 GRU; 4 LSTM), else None. Layers compute it once."""
    kind = type(cells[0]).kernel
    if kind not in _STEP_CODES or any(type(c).kernel != kind for c in cells):
        return None
    return _STEP_CODES[kind] if kind != "elman" else _NONLINEARITY[cells[0].nonlinearity]


def stack_step(code: int | None, x: Tensor, state: tuple[Tensor, ...], weights: list):
    """One step of a stack of plain LSTM, GRU or Elman layers in one C++ call (streaming; no
    autograd): ``code`` from `step_code`, x (B, I), state (h,) or (h, c) each (L, B, H), weights
    w_ih, w_hh, b_ih, b_hh per layer (None: no bias) -> (the last layer's h (B, H), the new
    state shaped as ``state``); None when ``code`` is None, the C++ loops are off or the tensors
    are not CPU float32/float64."""
    if code is None or not _state["enabled"] or not handles(x) or extension() is None:
        return None
    weights = [_none(x) if w is None else w for w in weights]
    c = state[1] if len(state) > 1 else _none(x)
    h, c, output = _state["module"].stack_step(x, state[0], c, weights, code)
    return output, ((h, c) if len(state) > 1 else (h,))


def _zoneout_keeps(zoneout, steps: int, h0: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Zoneout's (T, B, H) keep masks of h and c, drawn as the Python engine draws them (its
    rates at evaluation), or (None, None) without zoneout."""
    if zoneout is None:
        return None, None
    if not zoneout.training:
        return tuple(h0.new_full((steps, *h0.shape), p) for p in zoneout.rates)
    return zoneout.sample(steps, (h0, h0))


def _none(like: Tensor) -> Tensor:
    """An absent bias, mask or state for an operator: empty, on ``like``'s device (made per
    call: a tensor made at import would take whatever device a caller's context set then)."""
    return like.new_empty(0)


def _flat_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    """A loop's (T, B) bool mask from (T, B, 1), or an empty one (no padding)."""
    if mask is None:
        return torch.empty(0, dtype=torch.bool, device=like.device)
    return mask.squeeze(-1).contiguous()


def _given(grad: Tensor) -> Tensor | None:
    """A gradient an operator returned, None where it is empty (not asked for: no bias)."""
    return grad if grad.numel() else None


def _incoming(grad_output, grad_finals, flat_mask: Tensor, states: Tensor):
    """What reaches a loop's backward: the outputs' gradient zeroed past each sequence's end (an
    empty tensor when the outputs were not used) and the final states' gradients (zeros when
    unused)."""
    if grad_output is None:
        grad_output = states.new_empty(0)
    elif flat_mask.numel():
        grad_output = grad_output * flat_mask.unsqueeze(-1)
    shape = states.shape[1:]
    return grad_output, [states.new_zeros(shape) if g is None else g for g in grad_finals]


class _FusedLSTM(torch.autograd.Function):
    """The LSTM loop; recurrent_mask (B, H), zoneout's keep_h, keep_c (T, B, H) and the peephole
    weights (3H: w_ic | w_fc | w_oc) may be None."""

    @staticmethod
    def forward(
        ctx, recording, gx, weight_hh, bias_hh, h0, c0, mask, recurrent_mask, keep_h, keep_c, peep
    ):
        flat_mask = _flat_mask(mask, gx)
        rec = recurrent_mask if recurrent_mask is not None else _none(gx)
        keeps = (keep_h, keep_c) if keep_h is not None else (_none(gx), _none(gx))
        bias = bias_hh if bias_hh is not None else _none(gx)
        peep = peep if peep is not None else _none(gx)
        states, cells, cache = _OPS.lstm_forward(gx, weight_hh, bias, h0, c0, flat_mask, rec,
                                                *keeps, peep)  # fmt: skip
        output = _outputs(states, mask, recording)
        ctx.has_bias = bias_hh is not None
        ctx.save_for_backward(weight_hh, states, cells, cache, flat_mask, rec, *keeps, peep)
        return output, states[-1].clone(), cells[-1].clone()

    @staticmethod
    @first_order_only(LAYER_SECOND_ORDER)
    def backward(ctx, grad_output, grad_h_n, grad_c_n):
        weight_hh, states, cells, cache, flat_mask, rec, *keeps, peep = ctx.saved_tensors
        T, B, H = cache.shape[0], cache.shape[1], states.shape[2]
        grad_output, (grad_h_n, grad_c_n) = _incoming(
            grad_output, (grad_h_n, grad_c_n), flat_mask, states
        )
        grad_pre, grad_h0, grad_c0, grad_bias_hh = _OPS.lstm_backward(
            grad_output, grad_h_n, grad_c_n, weight_hh, cells, cache, flat_mask, rec, *keeps,
            peep, ctx.has_bias)  # fmt: skip
        grad_bias_hh = _given(grad_bias_hh)
        h_in = states[:-1] * rec if rec.numel() else states[:-1]
        flat = grad_pre.view(T * B, -1)
        grad_weight_hh = matmul(flat.t(), h_in.reshape(T * B, H))
        grad_peep = None
        if peep.numel():  # d_i, d_f against c_{t-1}; d_o against c_t
            d_i, d_f, _, d_o = grad_pre.chunk(4, dim=-1)
            seen = (cells[:-1], cells[:-1], cells[1:])
            grad_peep = torch.cat([(d * c).sum((0, 1)) for d, c in zip((d_i, d_f, d_o), seen)])
        grads = (grad_pre, grad_weight_hh, grad_bias_hh, grad_h0, grad_c0)
        return None, *grads, None, None, None, None, grad_peep


class _FusedProjectedLSTM(torch.autograd.Function):
    """The LSTMP loop: weight_hh (4H, P), weight_hr (P, H), h0 (B, P), c0 (B, H)."""

    @staticmethod
    def forward(ctx, recording, gx, weight_hh, bias_hh, weight_hr, h0, c0, mask):
        flat_mask = _flat_mask(mask, gx)
        bias = bias_hh if bias_hh is not None else _none(gx)
        states, cells, cache = _OPS.lstmp_forward(gx, weight_hh, bias, weight_hr, h0, c0, flat_mask)
        output = _outputs(states, mask, recording)
        ctx.has_bias = bias_hh is not None
        ctx.save_for_backward(weight_hh, weight_hr, states, cells, cache, flat_mask)
        return output, states[-1].clone(), cells[-1].clone()

    @staticmethod
    @first_order_only(LAYER_SECOND_ORDER)
    def backward(ctx, grad_output, grad_h_n, grad_c_n):
        weight_hh, weight_hr, states, cells, cache, flat_mask = ctx.saved_tensors
        T, B, P, H = cache.shape[0], cache.shape[1], states.shape[2], cells.shape[2]
        grad_output, (grad_h_n,) = _incoming(grad_output, (grad_h_n,), flat_mask, states)
        grad_c_n = cells.new_zeros(B, H) if grad_c_n is None else grad_c_n
        grad_pre, grad_h, grad_h0, grad_c0 = _OPS.lstmp_backward(
            grad_output, grad_h_n, grad_c_n, weight_hh, weight_hr, cells, cache, flat_mask
        )
        m = cache[..., 3 * H : 4 * H] * cache[..., 4 * H :]  # o * tanh(c'), what W_hr saw
        grad_weight_hr = matmul(grad_h.view(T * B, P).t(), m.reshape(T * B, H))
        flat = grad_pre.view(T * B, -1)
        grad_weight_hh = matmul(flat.t(), states[:-1].reshape(T * B, P))
        grad_bias_hh = flat.sum(0) if ctx.has_bias else None
        grads = (grad_pre, grad_weight_hh, grad_bias_hh, grad_weight_hr, grad_h0, grad_c0)
        return None, *grads, None


class _FusedLayerNormLSTM(torch.autograd.Function):
    """The LN-LSTM loop; params ln_weight_hh, bias_hh (4H), ln_weight_c, ln_bias_c (H)."""

    @staticmethod
    def forward(ctx, recording, gx, weight_hh, h0, c0, mask, *params):
        flat_mask = _flat_mask(mask, gx)
        states, cells, cache, stats = _OPS.ln_lstm_forward(
            gx, weight_hh, h0, c0, flat_mask, list(params)
        )
        output = _outputs(states, mask, recording)
        ctx.save_for_backward(weight_hh, states, cells, cache, stats, flat_mask, *params)
        return output, states[-1].clone(), cells[-1].clone()

    @staticmethod
    @first_order_only(LAYER_SECOND_ORDER)
    def backward(ctx, grad_output, grad_h_n, grad_c_n):
        weight_hh, states, cells, cache, stats, flat_mask, *params = ctx.saved_tensors
        T, B, H = cache.shape[0], cache.shape[1], states.shape[2]
        grad_output, (grad_h_n, grad_c_n) = _incoming(
            grad_output, (grad_h_n, grad_c_n), flat_mask, states
        )
        grad_gx, grad_raw, grad_h0, grad_c0, gains = _OPS.ln_lstm_backward(
            grad_output, grad_h_n, grad_c_n, weight_hh, cells, cache, stats, flat_mask, params
        )
        grad_weight_hh = matmul(grad_raw.view(T * B, -1).t(), states[:-1].reshape(T * B, H))
        grad_params = gains.split([4 * H, 4 * H, H, H])  # gathered in the C++ pass
        return None, grad_gx, grad_weight_hh, grad_h0, grad_c0, None, *grad_params


class _FusedLoop(torch.autograd.Function):
    """code 3: GRU (bias_ih (3H) or None: added in the steps, not over gx first; with ``params``
    ln_weight_hh, bias_hh (3H): the layer-normalised GRU, whose bias_hh is then None); 0, 1, 2:
    Elman with tanh, relu, sigmoid (bias_ih, if given, added with bias_hh). With weight_ih,
    ``gx`` is the input x (T, B, I) and the input projection gx = x @ weight_ih^T runs here, its
    gradients too: one autograd node for a layer where `run_cell` makes three (`run_on_input`)."""

    @staticmethod
    def forward(ctx, recording, code, gx, weight_hh, bias_hh, bias_ih, h0, mask, weight_ih,
                *params):  # fmt: skip
        x = None
        if weight_ih is not None:
            x = gx.reshape(-1, gx.shape[-1])
            gx = matmul(x, weight_ih.t()).view(*gx.shape[:2], -1)
        flat_mask = _flat_mask(mask, gx)
        ctx.has_bias_ih = bias_ih is not None
        if code == 3:
            bias, bias_in = (_none(gx) if b is None else b for b in (bias_hh, bias_ih))
            states, cache, stats = _OPS.gru_forward(gx, weight_hh, bias, h0, flat_mask,
                                                   list(params), bias_in)  # fmt: skip
        else:
            if bias_ih is not None:  # an Elman layer has both biases or neither
                bias_hh = bias_hh + bias_ih
            bias = _none(gx) if bias_hh is None else bias_hh
            states = _OPS.elman_forward(gx, weight_hh, bias, h0, flat_mask, code)
            cache, stats = None, None
        output = _outputs(states, mask, recording)
        ctx.code, ctx.has_bias = code, bias_hh is not None
        ctx.save_for_backward(weight_hh, states, cache, stats, flat_mask, x, weight_ih, *params)
        return output, states[-1].clone()

    @staticmethod
    @first_order_only(LAYER_SECOND_ORDER)
    def backward(ctx, grad_output, grad_h_n):
        weight_hh, states, cache, stats, flat_mask, x, weight_ih, *params = ctx.saved_tensors
        T, B, H = states.shape[0] - 1, states.shape[1], states.shape[2]
        grad_output, (grad_h_n,) = _incoming(grad_output, (grad_h_n,), flat_mask, states)
        if ctx.code == 3:
            grad_gx, grad_gh, grad_raw, grad_h0, grad_bias_hh, grad_bias_ih = _OPS.gru_backward(
                grad_output, grad_h_n, weight_hh, states, cache, stats, flat_mask, params,
                ctx.has_bias, ctx.has_bias_ih)  # fmt: skip
            grad_bias_hh, grad_bias_ih = _given(grad_bias_hh), _given(grad_bias_ih)
        else:
            grad_gx, grad_h0, grad_bias_hh = _OPS.elman_backward(
                grad_output, grad_h_n, weight_hh, states, flat_mask, ctx.code, ctx.has_bias
            )
            grad_gh = grad_raw = grad_gx
            grad_bias_hh = _given(grad_bias_hh)
            grad_bias_ih = grad_bias_hh.clone() if ctx.has_bias_ih else None
        through = grad_raw if params else grad_gh  # what multiplied W_hh h_{t-1}
        grad_weight_hh = matmul(through.view(T * B, -1).t(), states[:-1].reshape(T * B, H))
        grad_params = ()
        if params:  # the normalisation's gain and shift
            flat_gh = grad_gh.view(T * B, -1)
            grad_params = ((grad_gh * cache[..., 4 * H :]).sum((0, 1)), flat_gh.sum(0))
        grad_weight_ih = None
        if weight_ih is not None:  # grad_gx becomes the gradients of x and weight_ih
            flat = grad_gx.view(T * B, -1)
            grad_weight_ih = matmul(flat.t(), x) if ctx.needs_input_grad[8] else None
            grad_gx = matmul(flat, weight_ih).view(T, B, -1) if ctx.needs_input_grad[2] else None
        grads = (grad_gx, grad_weight_hh, grad_bias_hh, grad_bias_ih, grad_h0)
        return None, None, *grads, None, grad_weight_ih, *grad_params


_STEP_CODES = {"lstm": 4, "gru": 3, "elman": None}  # kernel -> code of `stack_step`
# kernel name (`Cell.kernel`) -> its run function, (cell, recording, gx, weight_hh, bias_hh,
# state0, mask, params, recurrent_mask, zoneout) -> (output, final state)
_KERNELS = {
    "lstm": _run_lstm,
    "peephole": _run_lstm,
    "lstmp": _run_lstmp,
    "ln_lstm": _run_ln_lstm,
    "gru": _run_loop,
    "ln_gru": _run_loop,
    "elman": _run_loop,
}
