"""LSTM cell (Hochreiter & Schmidhuber 1997, with forget gate), gates in torch's order i|f|g|o.

i = sigmoid(gx_i + gh_i)    f = sigmoid(gx_f + gh_f)
g = tanh(gx_g + gh_g)       o = sigmoid(gx_o + gh_o)
c' = f * c + i * g          h' = o * tanh(c')
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, State


class LSTMCell(Cell):
    """Long short-term memory cell, parameters as ``torch.nn.LSTMCell`` (4H rows: i|f|g|o).

    Args:
        forget_bias: if given, the forget-gate slice of ``bias_ih`` is set to this value and that
            of ``bias_hh`` to zero (Gers et al. 2000; Jozefowicz et al. 2015 recommend 1.0).
        Other arguments as `rnnkit.cells.Cell`.

    Shapes: input (B, I) or (I,), hx = (h, c) each (B, H) -> (h', c') each (B, H).
    """

    num_gates = 4
    num_states = 2
    biases_add = True  # the step reads gx + gh (so do the peephole and projected cells)
    kernel = "lstm"
    kernel_features = frozenset({"recurrent_dropout", "zoneout"})

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        recurrent_init: str = "default",
        forget_bias: float | None = None,
    ) -> None:
        self.forget_bias = forget_bias
        super().__init__(input_size, hidden_size, bias, recurrent_init)

    @torch.no_grad()
    def init_parameters(self, weights: dict[str, Tensor | None]) -> None:
        super().init_parameters(weights)
        if self.forget_bias is not None and weights["bias_ih"] is not None:
            hs = slice(self.hidden_size, 2 * self.hidden_size)
            weights["bias_ih"][hs] = self.forget_bias
            weights["bias_hh"][hs] = 0.0

    def step(self, gx: Tensor, gh: Tensor, state: State, params: tuple = ()) -> tuple[State, tuple]:
        h, c = state
        gates = gx + gh  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = torch.addcmul(f * c, i, g)
        tanh_c = torch.tanh(c_new)
        h_new = o * tanh_c
        return (h_new, c_new), (i, f, g, o, c, tanh_c)

    def step_backward(
        self, grad_state: State, cache: tuple, params: tuple = ()
    ) -> tuple[Tensor, Tensor, tuple, tuple]:
        grad_h, grad_c = grad_state
        i, f, g, o, c, tanh_c = cache
        grad_o = grad_h * tanh_c
        grad_c = grad_c + grad_h * o * (1 - tanh_c * tanh_c)
        grad_gates = torch.cat(
            (
                grad_c * g * i * (1 - i),
                grad_c * c * f * (1 - f),
                grad_c * i * (1 - g * g),
                grad_o * o * (1 - o),
            ),
            dim=1,
        )
        return grad_gates, grad_gates, (None, grad_c * f), ()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.forget_bias is None else f"{s}, forget_bias={self.forget_bias}"
