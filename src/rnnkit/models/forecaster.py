"""Forecasting network: a recurrent encoder and a point or Gaussian output head.

Shape legend: B batch, L_in ``input_chunk_length``, L_out ``output_chunk_length``, n steps to
forecast, C targets, K known covariates, F = C + K input features (targets first), H hidden size.

Two modes (Darts' "block" and "autoregressive" models):

    "direct"          x (B, L_in, F) -> encoder -> last state (B, H) -> head -> (B, L_out, C):
                      all L_out steps at once, from past values (and past covariates) only.
    "autoregressive"  one step ahead at every step: x (B, L, F) -> (B, L, C), step t predicting
                      the targets at t + 1 (trained with teacher forcing); `generate` feeds each
                      prediction back with the next step's known covariates (e.g. calendar).

`generate` forecasts any n steps in either mode: one step (autoregressive) or one chunk of L_out
steps (direct) at a time, each appended to the input with the future steps' known covariates
and fed back; with ``samples`` each step or chunk is drawn from the Gaussian first (ancestral
sampling: every path continues from its own draws).

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

    @staticmethod
    def draw(
        mean: Tensor, scale: Tensor | None, samples: int, generator: torch.Generator | None
    ) -> Tensor:
        """A draw from the Gaussian (mean, scale) if ``samples`` and a scale, else ``mean``."""
        if not samples or scale is None:
            return mean
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + scale * noise

    @torch.no_grad()
    def generate(
        self,
        x: Tensor,
        future_covariates: Tensor,
        samples: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Forecast of n = future_covariates.shape[1] steps, fed back step by step
        (autoregressive) or chunk by chunk (direct).

        x (B, L_in, F), future_covariates (B, n, K) -> (B, n, C) means fed back (``samples=0``;
        without a likelihood the point forecasts), or (S, B, n, C) sample paths, each step
        (chunk) drawn from the Gaussian and fed back. Direct: the K known covariates must be
        all the non-target features (no past-only covariates).
        """
        s = max(samples, 1)
        x, future = x.repeat(s, 1, 1), future_covariates.repeat(s, 1, 1)  # (S*B, ., .)
        n = future.shape[1]
        if self.mode == "direct":
            paths = self._chain(x, future, samples, generator)
        else:
            level = self.level(x)
            h, state = self._encode(x, level)
            steps = []
            for t in range(n):
                mean, scale = self._head(h[:, -1:], level)  # (S*B, 1, C)
                mean = self.draw(mean, scale, samples, generator)
                steps.append(mean)
                step_in = torch.cat([mean, future[:, t : t + 1]], dim=-1)
                h, state = self._encode(step_in, level, state)
            paths = torch.cat(steps, dim=1)  # (S*B, n, C)
        return paths.reshape(s, -1, *paths.shape[1:]) if samples else paths

    def _chain(
        self, x: Tensor, future: Tensor, samples: int, generator: torch.Generator | None
    ) -> Tensor:
        """Direct mode's `generate`: (S*B, L_in, F), (S*B, n, K) -> (S*B, n, C), one chunk per
        forward pass, each (drawn, then) appended to its own window, the oldest rows dropped."""
        n, length, chunks = future.shape[1], x.shape[1], []
        for t in range(0, n, self.steps):
            mean, scale = self(x)  # (S*B, L_out, C)
            chunks.append(self.draw(mean, scale, samples, generator))
            if t + self.steps < n:
                known = future[:, t : t + self.steps]
                x = torch.cat([x, torch.cat([chunks[-1], known], dim=-1)], dim=1)[:, -length:]
        return torch.cat(chunks, dim=1)[:, :n]
