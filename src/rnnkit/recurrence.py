"""The engine: run any cell over time, forward and backpropagation through time (BPTT).

Shapes: T time steps, B batch, I input size, H hidden size, G gate blocks of the cell.

Forward, for one direction of one layer:

    gx = x @ W_ih^T + b_ih                  one matrix product for all T steps (autograd)
    for t in 0..T-1:                        the loop carries only the recurrent part
        gh_t = h_{t-1} @ W_hh^T + b_hh
        state_t = cell.step(gx_t, gh_t, state_{t-1})

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

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, State


class _BPTT(torch.autograd.Function):
    """outputs (T, B, H) and final state from gx (T, B, G*H), W_hh, b_hh and the initial state."""

    @staticmethod
    def forward(ctx, cell: Cell, mask: Tensor | None, gx, weight_hh, bias_hh, *state0):
        w_t = weight_hh.t()
        state = state0
        h_prev, caches, outputs = [], [], []
        for t in range(gx.shape[0]):
            h = state[0]
            gh = h @ w_t if bias_hh is None else torch.addmm(bias_hh, h, w_t)
            new_state, cache = cell.step(gx[t], gh, state)
            if mask is not None:
                new_state = tuple(torch.where(mask[t], n, s) for n, s in zip(new_state, state))
            h_prev.append(h)
            caches.append(cache)
            outputs.append(new_state[0])
            state = new_state
        output = torch.stack(outputs)
        if mask is not None:
            output = output * mask
        ctx.cell, ctx.caches, ctx.has_bias = cell, caches, bias_hh is not None
        ctx.save_for_backward(mask, weight_hh, torch.stack(h_prev))
        # Clones: returning tensors that the caches also hold would make a reference cycle.
        return (output, *(s.clone() for s in state))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output, *grad_final):
        mask, weight_hh, h_prev = ctx.saved_tensors
        cell, caches = ctx.cell, ctx.caches
        T, B, H = h_prev.shape
        gates = weight_hh.shape[0]
        grad_state = [
            g if g is not None else h_prev.new_zeros(B, H) for g in grad_final
        ]  # d loss / d state_t, carried backwards
        if grad_output is not None and mask is not None:
            grad_output = grad_output * mask
        grad_gx = h_prev.new_empty(T, B, gates)
        grad_gh = h_prev.new_empty(T, B, gates)
        for t in range(T - 1, -1, -1):
            if grad_output is not None:
                grad_state[0] = grad_state[0] + grad_output[t]
            if mask is not None:
                m = mask[t]
                kept = [g * ~m for g in grad_state]  # past the end: the state passed through
                grad_state = [g * m for g in grad_state]
            dgx, dgh, direct = cell.step_backward(tuple(grad_state), caches[t])
            grad_gx[t] = dgx
            grad_gh[t] = dgh
            grad_state = [g if g is not None else h_prev.new_zeros(B, H) for g in direct]
            grad_state[0] = torch.addmm(grad_state[0], dgh, weight_hh)
            if mask is not None:
                grad_state = [g + k for g, k in zip(grad_state, kept)]
        flat_gh = grad_gh.view(T * B, gates)
        grad_weight_hh = flat_gh.t() @ h_prev.view(T * B, H)
        grad_bias_hh = flat_gh.sum(0) if ctx.has_bias else None
        return (None, None, grad_gx, grad_weight_hh, grad_bias_hh, *grad_state)


def run_cell(
    cell: Cell,
    gx: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor | None,
    state0: State,
    mask: Tensor | None = None,
) -> tuple[Tensor, State]:
    """Run ``cell`` forward over time with the explicit BPTT backward.

    Args:
        cell: supplies ``step`` and ``step_backward`` (its own parameters are not used).
        gx: (T, B, G*H) input projections of every step, ``x @ W_ih^T + b_ih``.
        weight_hh: (G*H, H); bias_hh: (G*H,) or None.
        state0: tuple of (B, H) tensors, the state before step 0.
        mask: (T, B, 1) bool, True where t < length; None when every sequence has length T.

    Returns:
        output (T, B, H): h_t at each step (zero past a sequence's end), and the final state.
    """
    output, *final = _BPTT.apply(cell, mask, gx, weight_hh, bias_hh, *state0)
    return output, tuple(final)


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
