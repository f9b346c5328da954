"""Layer-normalised LSTM and GRU cells (Ba et al. 2016), in the form of the haste library.

Both normalise the input and the recurrent projections separately over their G*H features; the
biases ``bias_ih`` and ``bias_hh`` are the shifts of those normalisations, and the new parameters
``ln_weight_ih``, ``ln_weight_hh`` (G*H,) are their gains (initialised to 1):

    gx = LN(x W_ih^T) * ln_weight_ih + bias_ih        hoisted out of the time loop
    gh = LN(h W_hh^T) * ln_weight_hh + bias_hh        each step

LSTM also normalises the cell state before the output: h' = o * tanh(LN(c') * ln_weight_c +
ln_bias_c). The GRU then follows `GRUCell` exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit.cells.base import State
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.lstm import LSTMCell
from rnnkit.errors import RnnkitError
from rnnkit.kernels.products import linear

EPS = 1e-5


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """y = (x - mean) / std * weight + bias over the last dim; also returns x_hat and 1/std."""
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    rstd = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + EPS)
    x_hat = centred * rstd
    return torch.addcmul(bias, x_hat, weight), x_hat, rstd


def layer_norm_backward(
    grad_y: Tensor, x_hat: Tensor, rstd: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of `layer_norm` w.r.t. x (B, N), weight (N,) and bias (N,)."""
    grad_hat = grad_y * weight
    grad_x = rstd * (
        grad_hat
        - grad_hat.mean(-1, keepdim=True)
        - x_hat * (grad_hat * x_hat).mean(-1, keepdim=True)
    )
    return grad_x, (grad_y * x_hat).sum(0), grad_y.sum(0)


class _LayerNormProjections:
    """Mixin: the normalised input projection (hoisted) and the recurrent gain parameters."""

    def _check_bias(self, bias: bool) -> None:
        if not bias:
            raise RnnkitError(
                f"{type(self).__name__} needs bias=True: the biases are the shifts of its layer "
                "normalisations"
            )

    def extra_parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        gh = self.num_gates * self.hidden_size
        return {"ln_weight_ih": (gh,), "ln_weight_hh": (gh,)}

    @torch.no_grad()
    def init_parameters(self, weights: dict[str, Tensor | None]) -> None:
        super().init_parameters(weights)
        for name in self.extra_parameters:
            weights[name].fill_(0.0 if name.startswith("ln_bias") else 1.0)

    def engine_inputs(self, x: Tensor, weights: dict[str, Tensor | None]):
        gx = linear(x, weights["weight_ih"])
        gx = nn.functional.layer_norm(
            gx, gx.shape[-1:], weights["ln_weight_ih"], weights["bias_ih"], EPS
        )
        extra = tuple(weights[n] for n in self.extra_parameters[2:])
        return gx, weights["weight_hh"], None, (weights["ln_weight_hh"], weights["bias_hh"], *extra)


class LayerNormLSTMCell(_LayerNormProjections, LSTMCell):
    """LSTM with layer normalisation of both projections and of the cell state.

    Arguments as `LSTMCell` (``bias`` must be True). Shapes as `LSTMCell`.
    """

    extra_parameters = ("ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c")
    kernel = "ln_lstm"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, **options) -> None:
        self._check_bias(bias)
        super().__init__(input_size, hidden_size, bias, **options)

    def extra_parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        h = (self.hidden_size,)
        return super().extra_parameter_shapes() | {"ln_weight_c": h, "ln_bias_c": h}

    def step(self, gx: Tensor, gh: Tensor, state: State, params: tuple = ()):
        ln_weight_hh, bias_hh, ln_weight_c, ln_bias_c = params
        h, c = state
        gh, gh_hat, gh_rstd = layer_norm(gh, ln_weight_hh, bias_hh)
        i, f, g, o = (gx + gh).chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = torch.addcmul(f * c, i, g)
        c_norm, c_hat, c_rstd = layer_norm(c_new, ln_weight_c, ln_bias_c)
        tanh_c = torch.tanh(c_norm)
        return (o * tanh_c, c_new), (i, f, g, o, c, tanh_c, gh_hat, gh_rstd, c_hat, c_rstd)

    def step_backward(self, grad_state: State, cache: tuple, params: tuple = ()):
        ln_weight_hh, _, ln_weight_c, _ = params
        grad_h, grad_c = grad_state
        i, f, g, o, c, tanh_c, gh_hat, gh_rstd, c_hat, c_rstd = cache
        grad_norm = grad_h * o * (1 - tanh_c * tanh_c)
        grad_c_new, grad_ln_c, grad_ln_bias_c = layer_norm_backward(
            grad_norm, c_hat, c_rstd, ln_weight_c
        )
        grad_c = grad_c + grad_c_new
        grad_gates = torch.cat(
            (
                grad_c * g * i * (1 - i),
                grad_c * c * f * (1 - f),
                grad_c * i * (1 - g * g),
                grad_h * tanh_c * o * (1 - o),
            ),
            dim=1,
        )
        grad_gh, grad_ln_hh, grad_bias_hh = layer_norm_backward(
            grad_gates, gh_hat, gh_rstd, ln_weight_hh
        )
        grads = (grad_ln_hh, grad_bias_hh, grad_ln_c, grad_ln_bias_c)
        return grad_gates, grad_gh, (None, grad_c * f), grads


class LayerNormGRUCell(_LayerNormProjections, GRUCell):
    """GRU with layer normalisation of both projections (before the reset gate acts).

    Arguments as `GRUCell` (``bias`` must be True). Shapes as `GRUCell`.
    """

    extra_parameters = ("ln_weight_ih", "ln_weight_hh")
    kernel = "ln_gru"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, **options) -> None:
        self._check_bias(bias)
        super().__init__(input_size, hidden_size, bias, **options)

    def step(self, gx: Tensor, gh: Tensor, state: State, params: tuple = ()):
        ln_weight_hh, bias_hh = params
        gh, gh_hat, gh_rstd = layer_norm(gh, ln_weight_hh, bias_hh)
        new_state, cache = super().step(gx, gh, state)
        return new_state, (cache, gh_hat, gh_rstd)

    def step_backward(self, grad_state: State, cache: tuple, params: tuple = ()):
        gru_cache, gh_hat, gh_rstd = cache
        grad_gx, grad_gh, direct, _ = super().step_backward(grad_state, gru_cache)
        grad_gh, grad_ln_hh, grad_bias_hh = layer_norm_backward(grad_gh, gh_hat, gh_rstd, params[0])
        return grad_gx, grad_gh, direct, (grad_ln_hh, grad_bias_hh)
