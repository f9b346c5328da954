"""Gradient flow through time: the norm of dL/dh_t at every step t.

``dL/dh_t`` is the total derivative of the loss with respect to the hidden state at step t: what
backpropagation through time carries back to step t, along the recurrence and from the outputs.
When the loss sits at the end of a sequence (the adding problem), its norm against t shows how
much of the error signal survives the trip back over ``T - 1 - t`` steps: a straight line on a
log scale means a constant factor per step, below 1 vanishing, above 1 exploding (Bengio et al.
1994; Hochreiter 1991).

How it is measured: while `record_hidden_states` is active, every recurrent layer of the model
runs one step at a time (``layer.forward`` on a length-1 input, so torch's kernel or rnnkit's
engine, whichever the layer uses) and its state after each step is a separate tensor in the
autograd graph that all later computation goes through, the layer's output included.
``torch.autograd.grad`` of the loss with respect to those tensors is then exactly dL/dh_t.
The layer's own (fused) forward still runs first and is replaced by the stepped one.

Shapes: T steps, B batch, H hidden size, L layers of the recurrent module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from rnnkit.errors import RnnkitError
from rnnkit.layers import GRU, LSTM, RNN

RECURRENT = (RNN, LSTM, GRU, nn.RNN, nn.LSTM, nn.GRU)


def recurrent_layer(model: nn.Module) -> nn.Module:
    """The one recurrent layer inside ``model`` (rnnkit's or torch's RNN/LSTM/GRU)."""
    found = [m for m in model.modules() if isinstance(m, RECURRENT)]
    if len(found) != 1:
        raise RnnkitError(
            f"gradient flow needs a model with exactly one recurrent layer (RNN/LSTM/GRU) or the "
            f"layer given explicitly (layer=...); this model has {len(found)}"
        )
    return found[0]


@contextmanager
def record_hidden_states(layer: nn.Module) -> Iterator[list[Tensor]]:
    """Within the block, ``layer`` runs step by step; yields the list it fills with one tensor
    per step, the state h_t (L, B, H) after step t (for an LSTM its h, not c)."""
    if getattr(layer, "bidirectional", False):
        raise RnnkitError("gradient flow through time is defined here for one direction only")
    states: list[Tensor] = []

    def hook(module, args, kwargs, output):
        states.clear()
        x = args[0]
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        lengths = args[2] if len(args) > 2 else kwargs.get("lengths")
        return _stepped_forward(module, x, hx, lengths, states)

    handle = layer.register_forward_hook(hook, with_kwargs=True)
    try:
        yield states
    finally:
        handle.remove()


def _stepped_forward(layer: nn.Module, x: Tensor, hx, lengths: Tensor | None, states: list):
    """The layer's forward as a loop of length-1 calls; fills ``states`` with each h_t."""
    if x.dim() != 3:
        raise RnnkitError(f"gradient flow needs a batched input (3 dims), got {tuple(x.shape)}")
    if layer.batch_first:
        x = x.transpose(0, 1)  # (T, B, I)
    steps = x.shape[0]
    mask = None
    if lengths is not None:
        t = torch.arange(steps, device=x.device)[:, None]
        mask = (t < torch.as_tensor(lengths, device=x.device)[None, :])[..., None]  # (T, B, 1)
    state = hx
    outputs = []
    for t in range(steps):
        x_t = x[t : t + 1].transpose(0, 1) if layer.batch_first else x[t : t + 1]
        _, new = layer.forward(x_t, state)  # .forward runs no hooks: no recursion
        new_t = new if isinstance(new, tuple) else (new,)
        if mask is not None and t > 0:  # past its end a sequence keeps its state (t=0: all in)
            old_t = state if isinstance(state, tuple) else (state,)
            new_t = tuple(torch.where(mask[t], n, o) for n, o in zip(new_t, old_t))
        states.append(new_t[0])
        top = new_t[0][-1]  # (B, H)
        outputs.append(top if mask is None else top * mask[t])
        state = new_t if len(new_t) > 1 else new_t[0]
    output = torch.stack(outputs)  # (T, B, H)
    if layer.batch_first:
        output = output.transpose(0, 1)
    return output, state


def hidden_gradient_norms(
    model: nn.Module, loss_fn: Callable[[nn.Module], Tensor], layer: nn.Module | None = None
) -> Tensor:
    """||dL/dh_t|| for every step t of the top layer of ``layer`` (default: the model's one).

    Args:
        model: any module containing the recurrent layer; run in eval mode (restored after).
        loss_fn: ``loss_fn(model)`` returns the scalar loss of one batch, e.g.
            ``lambda m: task.loss(m, batch, None).loss``.
        layer: the recurrent layer to measure, if the model has several.

    Returns:
        (T,) float64: the Frobenius norm over the batch of dL/dh_t (B, H) at each step t
        (zero where the loss does not depend on h_t).
    """
    layer = recurrent_layer(model) if layer is None else layer
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), record_hidden_states(layer) as states:
            loss = loss_fn(model)
            if not states:
                raise RnnkitError("loss_fn(model) did not run the recurrent layer")
            steps = list(states)
            grads = torch.autograd.grad(loss, steps, allow_unused=True)
    finally:
        model.train(was_training)
    norms = [0.0 if g is None else float(g[-1].double().norm()) for g in grads]
    return torch.tensor(norms, dtype=torch.float64)


def fit_decay(norms: Tensor) -> float:
    """The factor by which the norm shrinks per step going back in time, fitted by least squares
    of log(norm_t) on t over the steps where the norm is positive (<1 vanishing, >1 exploding).

    norms (T,) -> r such that norm_t ~ norm_{T-1} * r ** (T - 1 - t); nan with < 2 usable steps.
    """
    norms = torch.as_tensor(norms, dtype=torch.float64)
    t = torch.arange(len(norms), dtype=torch.float64)
    keep = (norms > 0) & torch.isfinite(norms)
    if int(keep.sum()) < 2:
        return math.nan
    t, y = t[keep], norms[keep].log()
    slope = float(((t - t.mean()) * (y - y.mean())).sum() / ((t - t.mean()) ** 2).sum())
    return math.exp(-slope)


def decay_summary(label: str, norms: Tensor) -> str:
    """One line: the fitted factor per step and the orders of magnitude over the sequence."""
    r = fit_decay(norms)
    span = len(norms) - 1
    orders = span * math.log10(r) if r > 0 and math.isfinite(r) else math.nan
    return (
        f"{label}: x{r:.4f} per step back in time "
        f"({orders:+.1f} orders of magnitude over {span} steps)"
    )
