"""LSTM with peephole connections (Gers & Schmidhuber 2000): the gates also see the cell state.

    i = sigmoid(a_i + w_ic * c)        f = sigmoid(a_f + w_fc * c)       g = tanh(a_g)
    c' = f * c + i * g                 o = sigmoid(a_o + w_oc * c')      h' = o * tanh(c')

where a = gx + gh as in `LSTMCell`, and w_ic, w_fc, w_oc (H,) are diagonal (per-unit) weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import State
from rnnkit.cells.lstm import LSTMCell


class PeepholeLSTMCell(LSTMCell):
    """`LSTMCell` plus the peephole weights ``weight_ic``, ``weight_fc``, ``weight_oc`` (H,).

    Arguments and shapes as `LSTMCell`.
    """

    extra_parameters = ("weight_ic", "weight_fc", "weight_oc")
    kernel = "peephole"

    def extra_parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: (self.hidden_size,) for name in self.extra_parameters}

    def engine_inputs(self, x: Tensor, weights: dict[str, Tensor | None]):
        gx, weight_hh, bias_hh, _ = super().engine_inputs(x, weights)
        return gx, weight_hh, bias_hh, tuple(weights[n] for n in self.extra_parameters)

    def step(self, gx: Tensor, gh: Tensor, state: State, params: tuple = ()):
        w_ic, w_fc, w_oc = params
        h, c = state
        a_i, a_f, a_g, a_o = (gx + gh).chunk(4, dim=1)
        i = torch.sigmoid(torch.addcmul(a_i, w_ic, c))
        f = torch.sigmoid(torch.addcmul(a_f, w_fc, c))
        g = torch.tanh(a_g)
        c_new = torch.addcmul(f * c, i, g)
        o = torch.sigmoid(torch.addcmul(a_o, w_oc, c_new))
        tanh_c = torch.tanh(c_new)
        return (o * tanh_c, c_new), (i, f, g, o, c, c_new, tanh_c)

    def step_backward(self, grad_state: State, cache: tuple, params: tuple = ()):
        w_ic, w_fc, w_oc = params
        grad_h, grad_c = grad_state
        i, f, g, o, c, c_new, tanh_c = cache
        grad_a_o = grad_h * tanh_c * o * (1 - o)
        grad_c = grad_c + grad_h * o * (1 - tanh_c * tanh_c) + grad_a_o * w_oc
        grad_a_i = grad_c * g * i * (1 - i)
        grad_a_f = grad_c * c * f * (1 - f)
        grad_gates = torch.cat((grad_a_i, grad_a_f, grad_c * i * (1 - g * g), grad_a_o), dim=1)
        grad_c_prev = grad_c * f + grad_a_i * w_ic + grad_a_f * w_fc
        grads = ((grad_a_i * c).sum(0), (grad_a_f * c).sum(0), (grad_a_o * c_new).sum(0))
        return grad_gates, grad_gates, (None, grad_c_prev), grads
