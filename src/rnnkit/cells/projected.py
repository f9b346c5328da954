"""LSTM with a recurrent projection (LSTMP, Sak et al. 2014), as ``torch.nn.LSTM(proj_size=P)``.

    i, f, g, o, c' as in `LSTMCell`          m = o * tanh(c')   (B, H)
    h' = m @ W_hr^T                           (B, P), P < H

h (the output, and what feeds ``weight_hh`` (4H, P)) has P features, c keeps H. Backward:

    dm = dh' @ W_hr          dW_hr = dh'^T m          then `LSTMCell` with dm in place of dh'
"""

from __future__ import annotations

from torch import Tensor

from rnnkit.cells.base import State
from rnnkit.cells.lstm import LSTMCell
from rnnkit.errors import RnnkitError


class ProjectedLSTMCell(LSTMCell):
    """`LSTMCell` plus the projection ``weight_hr`` (P, H); ``weight_hh`` is (4H, P).

    Args:
        proj_size: P, features of h, in [1, hidden_size).
        Other arguments as `LSTMCell`.

    Shapes: input (B, I) or (I,), hx = (h (B, P), c (B, H)) -> (h', c') of the same shapes.
    """

    extra_parameters = ("weight_hr",)
    kernel = "lstmp"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        proj_size: int,
        bias: bool = True,
        recurrent_init: str = "default",
        forget_bias: float | None = None,
    ) -> None:
        check_proj_size(proj_size, hidden_size, allow_zero=False)
        self.proj_size = proj_size
        super().__init__(input_size, hidden_size, bias, recurrent_init, forget_bias)

    def state_sizes(self) -> tuple[int, ...]:
        return (self.proj_size, self.hidden_size)

    def extra_parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"weight_hr": (self.proj_size, self.hidden_size)}

    def engine_inputs(self, x: Tensor, weights: dict[str, Tensor | None]):
        gx, weight_hh, bias_hh, _ = super().engine_inputs(x, weights)
        return gx, weight_hh, bias_hh, (weights["weight_hr"],)

    def step(self, gx: Tensor, gh: Tensor, state: State, params: tuple = ()):
        (weight_hr,) = params
        (m, c_new), cache = super().step(gx, gh, state)
        return (m @ weight_hr.t(), c_new), (*cache, m)

    def step_backward(self, grad_state: State, cache: tuple, params: tuple = ()):
        (weight_hr,) = params
        grad_h, grad_c = grad_state
        *lstm_cache, m = cache
        grad_gates, _, direct, _ = super().step_backward((grad_h @ weight_hr, grad_c), lstm_cache)
        return grad_gates, grad_gates, direct, (grad_h.t() @ m,)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, proj_size={self.proj_size}"


def check_proj_size(proj_size, hidden_size: int, allow_zero: bool = True) -> None:
    """torch's checks of ``proj_size`` (0 turns the projection off where allowed)."""
    if not isinstance(proj_size, int) or isinstance(proj_size, bool):
        raise RnnkitError(f"proj_size must be an integer, got {proj_size!r}")
    if proj_size < 0 or (proj_size == 0 and not allow_zero):
        raise RnnkitError(
            "proj_size should be a positive integer"
            + (" or zero to disable projections" if allow_zero else "")
            + f", got {proj_size}"
        )
    if proj_size >= hidden_size:
        raise RnnkitError(
            f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
            f"and hidden_size={hidden_size}"
        )
