"""Forecasting network: a recurrent encoder and a point or Gaussian output head.

Shape legend: B batch, L_in ``input_chunk_length``, L_out ``output_chunk_length``, n steps to
forecast, C targets, K known covariates, F = C + K input features (targets first), H hidden size.

Two modes (Darts' "block" and "autoregressive" models):

    "direct"          x (B, L_in, F) -> encoder -> last state (B, H) -> head -> (B, L_out, C):
                      all L_out steps at once, from past values (and past covariates) only.
    "autoregressive"  one step ahead at every step: x (B, L, F) -> (B, L, C), step t predicting
                      the targets at t + 1 (trained with teacher forcing); `generate` feeds each
                      prediction back with the next step's known covariates (e.g. calendar).

Output: ``likelihood="gaussian"`` gives a mean and a scale per value (`GaussianHead`), None a
point forecast (scale None, trained with squared error). ``detrend=True`` subtracts each input
window's mean level of the targets before the encoder and adds it back to the outputs (a
per-window normalisation that lets the network extrapolate a level it never saw in training).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit.errors import RnnkitError
from rnnkit.models.backbone import make_rnn
from rnnkit.models.heads import GaussianHead

MODES = ("direct", "autoregressive")
LIKELIHOODS = ("gaussian", None)


class ForecastNet(nn.Module):
    """RNN encoder + point/Gaussian head; see the module docstring for modes and shapes."""

    def __init__(
        self,
        input_size: int,
        target_size: int,
        output_chunk_length: int,
        hidden_size: int = 32,
        num_layers: int = 1,
        cell: str = "lstm",
        dropout: float = 0.0,
        mode: str = "direct",
        likelihood: str | None = "gaussian",
        detrend: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise RnnkitError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if likelihood not in LIKELIHOODS:
            raise RnnkitError(f"likelihood must be 'gaussian' or None, got {likelihood!r}")
        self.target_size, self.mode, self.detrend = target_size, mode, detrend
        self.steps = output_chunk_length if mode == "direct" else 1
        self.rnn = make_rnn(cell, input_size, hidden_size, num_layers, dropout, impl)
        out = self.steps * target_size
        self.head = GaussianHead(hidden_size, out) if likelihood else nn.Linear(hidden_size, out)

    def level(self, x: Tensor) -> Tensor:
        """The level subtracted from the targets: (B, L_in, F) -> (B, 1, C) (zeros if off)."""
        level = x[..., : self.target_size].mean(1, keepdim=True)
        return level if self.detrend else torch.zeros_like(level)

    def _encode(self, x: Tensor, level: Tensor, state=None) -> tuple[Tensor, object]:
        """(B, L, F) -> outputs (B, L, H) and the recurrent state."""
        c = self.target_size
        x = torch.cat([x[..., :c] - level, x[..., c:]], dim=-1)
        out, state = self.rnn(x.transpose(0, 1), state)  # time-major (L, B, H)
        return out.transpose(0, 1), state

    def _head(self, h: Tensor, level: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, L, H) -> mean, scale (B, L * steps, C); the level is added back to the mean."""
        b, length = h.shape[:2]
        out = self.head(h)
        mean, scale = out if isinstance(out, tuple) else (out, None)
        shape = (b, length * self.steps, self.target_size)
        scale = None if scale is None else scale.reshape(shape)
        return mean.reshape(shape) + level, scale

    def forward(self, x: Tensor, context: int | None = None) -> tuple[Tensor, Tensor | None]:
        """direct: x (B, L_in, F) -> (B, L_out, C) each; autoregressive: x (B, L, F) ->
        (B, L, C), the level taken from the first ``context`` steps (default all)."""
        level = self.level(x[:, :context])
        h, _ = self._encode(x, level)
        if self.mode == "direct":
            h = h[:, -1:]  # (B, 1, H)
        return self._head(h, level)

    @torch.no_grad()
    def generate(
        self,
        x: Tensor,
        future_covariates: Tensor,
        samples: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Autoregressive forecast of n = future_covariates.shape[1] steps.

        x (B, L_in, F), future_covariates (B, n, K) -> (B, n, C) means fed back (``samples=0``),
        or (S, B, n, C) sample paths, each step drawn from the Gaussian and fed back.
        """
        if self.mode != "autoregressive":
            raise RnnkitError("generate needs an autoregressive model")
        s = max(samples, 1)
        x, future = x.repeat(s, 1, 1), future_covariates.repeat(s, 1, 1)  # (S*B, ., .)
        level = self.level(x)
        h, state = self._encode(x, level)
        steps = []
        for t in range(future.shape[1]):
            mean, scale = self._head(h[:, -1:], level)  # (S*B, 1, C)
            if samples and scale is not None:
                noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
                mean = mean + scale * noise
            steps.append(mean)
            step_in = torch.cat([mean, future[:, t : t + 1]], dim=-1)
            h, state = self._encode(step_in, level, state)
        paths = torch.cat(steps, dim=1)  # (S*B, n, C)
        return paths.reshape(s, -1, *paths.shape[1:]) if samples else paths
