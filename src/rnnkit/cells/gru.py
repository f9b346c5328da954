"""GRU cell (Cho et al. 2014) as torch computes it, gates r|z|n, reset applied after W_hn h:

r = sigmoid(gx_r + gh_r)    z = sigmoid(gx_z + gh_z)
n = tanh(gx_n + r * gh_n)   where gh_n = h W_hn^T + b_hn
h' = (1 - z) * n + z * h

with gx = x W_i^T + b_i. The engine gets gx without b_i and b_i as the step's parameter
(`GRUCell.engine_inputs`): each step adds it to its row of gx, so the time loops spare a pass
over all of gx before the loop and one over its gradient after (b_i's gradient is the sum of
gx's, which the C++ backward adds up as it writes them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, State
from rnnkit.kernels.products import linear


class GRUCell(Cell):
    """Gated recurrent unit, parameters as ``torch.nn.GRUCell`` (3H rows: r|z|n).

    Arguments as `rnnkit.cells.Cell`. Shapes: input (B, I) or (I,), hx (B, H) -> h' (B, H).
    """

    num_gates = 3
    num_states = 1
    kernel = "gru"

    def engine_inputs(
        self, x: Tensor, weights: dict[str, Tensor | None]
    ) -> tuple[Tensor, Tensor, Tensor | None, tuple[Tensor, ...]]:
        """gx = x W_ih^T (T, B, 3H), weight_hh, bias_hh and ``params`` (bias_ih,), or () without
        biases: `step` adds bias_ih (see the module docstring). A subclass that does not name the
        GRU's kernel (`Cell.kernel`) gets the base class's gx = x W_ih^T + b_ih and no params:
        its own step may call this one without them."""
        if type(self).kernel != "gru":
            return super().engine_inputs(x, weights)
        gx = linear(x, weights["weight_ih"])
        b_ih = weights["bias_ih"]
        return gx, weights["weight_hh"], weights["bias_hh"], (() if b_ih is None else (b_ih,))

    def step(self, gx: Tensor, gh: Tensor, state: State, params: tuple = ()) -> tuple[State, tuple]:
        """gx, gh (B, 3H), params (bias_ih,) or () (bias_ih already in gx, or none)."""
        (h,) = state
        if params:
            gx = gx + params[0]
        x_r, x_z, x_n = gx.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(torch.addcmul(x_n, r, h_n))
        h_new = torch.lerp(n, h, z)  # (1 - z) * n + z * h
        return (h_new,), (r, z, n, h_n, h)

    def step_backward(
        self, grad_state: State, cache: tuple, params: tuple = ()
    ) -> tuple[Tensor, Tensor, tuple, tuple]:
        (grad_h,) = grad_state
        r, z, n, h_n, h = cache
        grad_n_pre = grad_h * (1 - z) * (1 - n * n)
        grad_r_pre = grad_n_pre * h_n * r * (1 - r)
        grad_z_pre = grad_h * (h - n) * z * (1 - z)
        grad_gx = torch.cat((grad_r_pre, grad_z_pre, grad_n_pre), dim=1)
        grad_gh = torch.cat((grad_r_pre, grad_z_pre, grad_n_pre * r), dim=1)
        return grad_gx, grad_gh, (grad_h * z,), ((grad_gx.sum(0),) if params else ())
