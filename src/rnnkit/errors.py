"""The one exception type for mistakes a user can make (bad shapes, bad files, bad arguments)."""

from __future__ import annotations

import functools

import torch


class RnnkitError(ValueError):
    """A user's mistake, with a message that says what was wrong and how to fix it.

    The command line prints the message on one line of stderr and exits with status 2;
    any other exception is a bug and keeps its traceback.
    """


def first_order_only(backward):
    """Wraps the backward of one of the engine's autograd Functions (BPTT, the C++ loops, the
    scans), which computes first derivatives only. torch's `once_differentiable` alone would,
    when the incoming gradients do not require grad, silently leave the RNN's part out of a
    second derivative (``create_graph=True``); this raises instead."""
    once = torch.autograd.function.once_differentiable(backward)

    @functools.wraps(backward)
    def checked(ctx, *grads):
        if torch.is_grad_enabled():  # backward runs with grad mode on only for create_graph=True
            raise RnnkitError(
                "rnnkit's BPTT engine computes first derivatives only: for a second derivative "
                "(create_graph=True) through a recurrent layer use impl='torch' (LSTM, GRU and "
                "Elman tanh/relu layers without rnnkit-only options)"
            )
        return once(ctx, *grads)

    return checked
