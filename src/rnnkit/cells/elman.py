"""Elman RNN cell: h' = f(x W_ih^T + b_ih + h W_hh^T + b_hh), f in {tanh, relu, sigmoid}."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, State
from rnnkit.errors import RnnkitError

NONLINEARITIES = ("tanh", "relu", "sigmoid")


class ElmanCell(Cell):
    """The simple recurrent cell (Elman 1990), parameters as ``torch.nn.RNNCell``.

    Args:
        nonlinearity: ``"tanh"`` (default), ``"relu"`` (with ``recurrent_init="identity"``: IRNN,
            Le et al. 2015) or ``"sigmoid"``.
        Other arguments as `rnnkit.cells.Cell`.

    Shapes: input (B, I) or (I,), hx (B, H) -> h' (B, H).
    """

    num_gates = 1
    num_states = 1
    biases_add = True  # the step reads gx + gh
    kernel = "elman"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        recurrent_init: str = "default",
    ) -> None:
        if nonlinearity not in NONLINEARITIES:
            raise RnnkitError(
                f"nonlinearity must be one of {', '.join(NONLINEARITIES)}, got {nonlinearity!r}"
            )
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, recurrent_init)

    def step(self, gx: Tensor, gh: Tensor, state: State, params: tuple = ()) -> tuple[State, tuple]:
        pre = gx + gh
        if self.nonlinearity == "tanh":
            h = torch.tanh(pre)
        elif self.nonlinearity == "relu":
            h = torch.relu(pre)
        else:
            h = torch.sigmoid(pre)
        return (h,), (h,)

    def step_backward(
        self, grad_state: State, cache: tuple, params: tuple = ()
    ) -> tuple[Tensor, Tensor, tuple, tuple]:
        (grad_h,) = grad_state
        (h,) = cache
        if self.nonlinearity == "tanh":
            grad_pre = grad_h * (1 - h * h)
        elif self.nonlinearity == "relu":
            grad_pre = grad_h * (h > 0)
        else:
            grad_pre = grad_h * h * (1 - h)
        return grad_pre, grad_pre, (None,), ()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else f"{s}, nonlinearity={self.nonlinearity!r}"
