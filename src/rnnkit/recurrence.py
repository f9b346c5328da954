"""The engine: run any cell over time, forward and backpropagation through time (BPTT).

Shapes: T time steps, B batch, I input size, H hidden size, G gate blocks of the cell. Each state
entry has its own size (`Cell.state_sizes`); h, the first, is what the loop outputs and what feeds
W_hh: H features, or P for a projected LSTM (`ProjectedLSTMCell`).

Forward, for one direction of one layer:

    gx = x @ W_ih^T + b_ih                  one matrix product for all T steps (autograd)
    for t in 0..T-1:                        the loop carries only the recurrent part
        gh_t = h_{t-1} @ W_hh^T + b_hh
        state_t = cell.step(gx_t, gh_t, state_{t-1})

(For a cell with ``biases_add``, `Cell.engine_inputs` gives gx = x @ W_ih^T and b_ih + b_hh in
the place of b_hh; the GRU's gives gx = x @ W_ih^T and b_ih as a parameter its step adds.)

Backward walks the steps in reverse: at step t the gradient reaching ``h_t`` is the output's
gradient plus what step t+1 sent back; ``cell.step_backward`` turns it into gradients of the
step's pre-activations, and ``dgh_t @ W_hh`` carries it to ``h_{t-1}``. The shared weights get the
sum of every step's contribution, gathered after the loop into single matrix products:
``dW_hh = sum_t dgh_t^T h_{t-1}`` and, through autograd on the hoisted product,
``dW_ih = sum_t dgx_t^T x_t``.

Variable lengths: ``mask`` (T, B, 1) is True while t < length. Past a sequence's end its state is
carried unchanged (so the final state is the state at its own last step) and its output is zero.
The reverse direction reverses each sequence within its own length (`reverse_within_lengths`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, State
from rnnkit.dropout import keep_mask
from rnnkit.errors import LAYER_SECOND_ORDER, first_order_only
from rnnkit.kernels import build, loops


class _BPTT(torch.autograd.Function):
    """outputs (T, B, size of h) and final state from gx (T, B, G*H), W_hh, b_hh, the cell's
    params and the initial state; ``inputs`` is ``(*params, *state0)`` (autograd needs them
    flat)."""

    @staticmethod
    def forward(ctx, cell, options, gx, weight_hh, bias_hh, *inputs):
        mask, recurrent_mask, zoneout, num_params = options
        params, state = inputs[:num_params], inputs[num_params:]
        w_t = weight_hh.t()
        h_in, caches, outputs, keeps = [], [], [], []
        drawn = zoneout.sample(gx.shape[0], state) if zoneout is not None else ()
        for t in range(gx.shape[0]):
            h = state[0] if recurrent_mask is None else state[0] * recurrent_mask
            gh = h @ w_t if bias_hh is None else torch.addmm(bias_hh, h, w_t)
            new_state, cache = cell.step(gx[t], gh, state, params)
            if zoneout is not None:
                keep = tuple(k[t] if isinstance(k, Tensor) else k for k in drawn)
                new_state = tuple(torch.lerp(n, s, k) for n, s, k in zip(new_state, state, keep))
                keeps.append(keep)
            if mask is not None:
                new_state = tuple(torch.where(mask[t], n, s) for n, s in zip(new_state, state))
            h_in.append(h)
            caches.append(cache)
            outputs.append(new_state[0])
            state = new_state
        output = torch.stack(outputs)
        if mask is not None:
            output = output * mask
        ctx.cell, ctx.caches, ctx.keeps, ctx.has_bias = cell, caches, keeps, bias_hh is not None
        ctx.shapes = [s.shape for s in state]
        ctx.save_for_backward(mask, recurrent_mask, weight_hh, torch.stack(h_in), *params)
        ctx.num_params = num_params
        # Clones: returning tensors that the caches also hold would make a reference cycle.
        return (output, *(s.clone() for s in state))

    @staticmethod
    @first_order_only(LAYER_SECOND_ORDER)
    def backward(ctx, grad_output, *grad_final):
        mask, recurrent_mask, weight_hh, h_in, *params = ctx.saved_tensors
        T, B, _ = h_in.shape
        grad_state = list(grad_final)  # d loss / d state_t, carried backwards
        if grad_output is not None and mask is not None:
            grad_output = grad_output * mask
        grad_gx = h_in.new_empty(T, B, weight_hh.shape[0])
        grad_gh = torch.empty_like(grad_gx)
        grad_params = [torch.zeros_like(p) for p in params]
        for t in range(T - 1, -1, -1):
            grad_state = _fill_zeros(grad_state, ctx.shapes, h_in)
            if grad_output is not None:
                grad_state[0] = grad_state[0] + grad_output[t]
            if mask is not None:
                kept = [g * ~mask[t] for g in grad_state]  # past the end the state passed through
                grad_state = [g * mask[t] for g in grad_state]
            if ctx.keeps:  # zoneout: h_t = k * h_{t-1} + (1 - k) * candidate
                zoned = [g * k for g, k in zip(grad_state, ctx.keeps[t])]
                grad_state = [g - z for g, z in zip(grad_state, zoned)]
            dgx, dgh, direct, dparams = ctx.cell.step_backward(
                tuple(grad_state), ctx.caches[t], tuple(params)
            )
            grad_gx[t], grad_gh[t] = dgx, dgh
            for total, g in zip(grad_params, dparams):
                total += g
            through_gh = dgh @ weight_hh
            if recurrent_mask is not None:
                through_gh = through_gh * recurrent_mask
            grad_state = [through_gh if direct[0] is None else direct[0] + through_gh, *direct[1:]]
            if ctx.keeps:
                grad_state = [z if g is None else g + z for g, z in zip(grad_state, zoned)]
            if mask is not None:
                grad_state = [k if g is None else g + k for g, k in zip(grad_state, kept)]
        flat_gh = grad_gh.view(T * B, -1)
        grad_weight_hh = flat_gh.t() @ h_in.view(T * B, -1)
        grad_bias_hh = flat_gh.sum(0) if ctx.has_bias else None
        grad_state = _fill_zeros(grad_state, ctx.shapes, h_in)
        return (None, None, grad_gx, grad_weight_hh, grad_bias_hh, *grad_params, *grad_state)


def _fill_zeros(grads: list, shapes: list[torch.Size], like: Tensor) -> list[Tensor]:
    """Replace None (no gradient reached this state) by zeros of the state's shape."""
    return [like.new_zeros(shape) if g is None else g for g, shape in zip(grads, shapes)]


def run_cell(
    cell: Cell,
    gx: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor | None,
    state0: State,
    mask: Tensor | None = None,
    params: tuple[Tensor, ...] = (),
    recurrent_mask: Tensor | None = None,
    zoneout: Zoneout | None = None,
) -> tuple[Tensor, State]:
    """Run ``cell`` forward over time with the explicit BPTT backward.

    Args:
        cell: supplies ``step`` and ``step_backward`` (its own parameters are not used).
        gx: (T, B, G*H) input projections of every step, e.g. ``x @ W_ih^T + b_ih``.
        weight_hh: (G*H, size of h); bias_hh: (G*H,) or None.
        state0: tuple of (B, size) tensors, the state before step 0 (sizes: `Cell.state_sizes`).
        mask: (T, B, 1) bool, True where t < length; None when every sequence has length T.
        params: the tensors ``step`` takes beyond gx, gh and the state (its extra parameters,
            the plain GRU's bias_ih; see `Cell.engine_inputs`).
        recurrent_mask: multiplier of h, shaped as h, before the recurrent product at every step
            (variational recurrent dropout, Gal & Ghahramani 2016), or None.
        zoneout: per-step random preservation of state units (`Zoneout`), or None.

    Returns:
        output (T, B, size of h): h_t at each step (zero past a sequence's end), and the final
        state.

    A cell whose class names a kernel (`Cell.kernel`: LSTM plain, peephole, projected and
    layer-normalised, GRU plain and layer-normalised, Elman) runs the same loop in C++
    (`rnnkit.kernels.loops.supports`) if that kernel computes the noise asked for too
    (`Cell.kernel_features`: recurrent dropout and zoneout in the plain LSTM's).
    """
    needs = _NO_NEEDS
    if recurrent_mask is not None or zoneout is not None:
        needs = _NEEDS[recurrent_mask is not None, zoneout is not None]
    if build.handles(gx) and loops.supports(cell, needs):
        return loops.run_fused(cell, gx, weight_hh, bias_hh, state0, mask, params,
                               recurrent_mask, zoneout)  # fmt: skip
    options = (mask, recurrent_mask, zoneout, len(params))
    output, *final = _BPTT.apply(cell, options, gx, weight_hh, bias_hh, *params, *state0)
    return output, tuple(final)


_NO_NEEDS: frozenset[str] = frozenset()
_NEEDS = {  # (recurrent dropout, zoneout) -> the kernel features they need
    (True, False): frozenset({"recurrent_dropout"}),
    (False, True): frozenset({"zoneout"}),
    (True, True): frozenset({"recurrent_dropout", "zoneout"}),
}


@dataclass(frozen=True)
class Zoneout:
    """Zoneout (Krueger et al. 2017): each unit of each state keeps its previous value with
    probability ``rates[k]`` (k: 0 for h, 1 for c), per step; at evaluation the expectation
    ``h_t = p h_{t-1} + (1 - p) candidate`` is used instead of a random choice."""

    rates: tuple[float, ...]
    training: bool

    def sample(self, steps: int, state: State) -> tuple[Tensor | float, ...]:
        """Keep masks of all ``steps`` at once, one (T, B, size) tensor per state entry (1: keep
        the old value), drawn entry by entry; at evaluation the rates themselves."""
        if not self.training:
            return self.rates
        return tuple(keep_mask((steps, *s.shape), p, s) for s, p in zip(state, self.rates))


def lengths_to_mask(lengths: Tensor, steps: int) -> Tensor:
    """(B,) lengths -> (T, B, 1) bool mask, True where t < length."""
    t = torch.arange(steps, device=lengths.device)
    return (t[:, None] < lengths[None, :]).unsqueeze(-1)


def reverse_within_lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of x (T, B, F) within its own length; padding stays at the end."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device)[:, None]  # (T, 1)
    lengths = lengths.to(x.device)[None, :]  # (1, B)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (T, B)
    return x.gather(0, index.unsqueeze(-1).expand_as(x))
