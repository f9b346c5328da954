"""The one exception type for mistakes a user can make (bad shapes, bad files, bad arguments), and
`first_order_only`, which raises it for a second derivative the engine cannot compute."""

from __future__ import annotations

import functools


class RnnkitError(ValueError):
    """A user's mistake, with a message that says what was wrong and how to fix it.

    The command line prints the message on one line of stderr and exits with status 2;
    any other exception is a bug and keeps its traceback.
    """


LAYER_SECOND_ORDER = (
    "for a second derivative through a recurrent layer use impl='torch' (LSTM, GRU and Elman "
    "tanh/relu layers without rnnkit-only options)"
)


def first_order_only(advice: str):
    """Wraps the backward of one of the engine's autograd Functions (BPTT, the C++ loops, the
    scans), which computes first derivatives only. torch's `once_differentiable` alone would,
    when the incoming gradients do not require grad, silently leave this part out of a second
    derivative (``create_graph=True``); this raises instead, with ``advice`` on what computes
    one."""

    import torch  # here, not at the top: the CLI imports this module for --help

    def wrap(backward):
        once = torch.autograd.function.once_differentiable(backward)

        @functools.wraps(backward)
        def checked(ctx, *grads):
            if torch.is_grad_enabled():  # on in backward only for create_graph=True
                raise RnnkitError(
                    "rnnkit's engine computes first derivatives only (create_graph=True asked "
                    f"for more): {advice}"
                )
            return once(ctx, *grads)

        return checked

    return wrap


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for quoting a user's input in an error
    message (a 200 MB CSV cell must not become a 200 MB "one-line" error)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}...({len(text)} characters)"
