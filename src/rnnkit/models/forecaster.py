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

Ensemble: ``members`` > 1 (direct mode) trains that many networks side by side on the same
batches from different initial weights (`member_outputs`, each with its own loss); the forecast
(`forward`) is the median of their means, with the scale of their mixture, sqrt(mean(scale^2) +
var(means)), times ``interval_scale`` (a conformal correction measured after training; 1: none).
Member 0 is stored as ``rnn``/``head`` (the single network's names), the others in ``extra``.
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
        members: int = 1,
        interval_scale: float = 1.0,
        season: int = 0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise RnnkitError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if likelihood not in LIKELIHOODS:
            raise RnnkitError(f"likelihood must be 'gaussian' or None, got {likelihood!r}")
        if members < 1 or (members > 1 and mode != "direct"):
            raise RnnkitError(f"an ensemble needs the direct mode and >= 1 member, got {members} "
                              f"in mode {mode}")  # fmt: skip
        self.target_size, self.mode, self.detrend = target_size, mode, detrend
        self.interval_scale, self.season = float(interval_scale), season
        self.steps = output_chunk_length if mode == "direct" else 1
        out = self.steps * target_size

        def network() -> tuple[nn.Module, nn.Module]:
            rnn = make_rnn(cell, input_size, hidden_size, num_layers, dropout, impl)
            head = GaussianHead(hidden_size, out) if likelihood else nn.Linear(hidden_size, out)
            return rnn, head

        self.rnn, self.head = network()
        self.extra = nn.ModuleList(nn.ModuleDict(dict(zip(("rnn", "head"), network())))
                                   for _ in range(members - 1))  # fmt: skip

    def _networks(self) -> list[tuple[nn.Module, nn.Module]]:
        """(rnn, head) of every member, member 0 first."""
        return [(self.rnn, self.head), *((m["rnn"], m["head"]) for m in self.extra)]

    def level(self, x: Tensor) -> Tensor:
        """The level subtracted from the targets: (B, L_in, F) -> (B, 1, C) (zeros if off)."""
        level = x[..., : self.target_size].mean(1, keepdim=True)
        return level if self.detrend else torch.zeros_like(level)

    def _encode(self, x: Tensor, level: Tensor, state=None, rnn=None) -> tuple[Tensor, object]:
        """(B, L, F) -> outputs (B, L, H) and the recurrent state (``rnn``: a member's, default
        member 0's)."""
        c = self.target_size
        x = torch.cat([x[..., :c] - level, x[..., c:]], dim=-1)
        out, state = (rnn or self.rnn)(x.transpose(0, 1), state)  # time-major (L, B, H)
        return out.transpose(0, 1), state

    def _head(self, h: Tensor, level: Tensor, head=None) -> tuple[Tensor, Tensor | None]:
        """(B, L, H) -> mean, scale (B, L * steps, C); the level (or the `base`) is added back
        to the mean."""
        b, length = h.shape[:2]
        out = (head or self.head)(h)
        mean, scale = out if isinstance(out, tuple) else (out, None)
        shape = (b, length * self.steps, self.target_size)
        scale = None if scale is None else scale.reshape(shape)
        return mean.reshape(shape) + level, scale

    def base(self, x: Tensor, level: Tensor) -> Tensor:
        """What the network's output is added to: the window's ``level`` (B, 1, C), or with a
        ``season`` m > 1 (direct mode, detrend, at least one season read) the level of the
        window's last season plus the window's seasonal profile (each phase's mean over the
        whole seasons read, minus their mean): (B, L_out, C), a smoothed seasonal naive."""
        c, length, m = self.target_size, x.shape[1], self.season
        if not (self.detrend and self.mode == "direct" and 1 < m <= length):
            return level
        k = length // m * m
        seasons = x[:, length - k :, :c].reshape(len(x), k // m, m, c)  # (B, k/m, m, C)
        profile = seasons.mean(1) - seasons.mean((1, 2)).unsqueeze(1)  # (B, m, C)
        last = x[:, length - m :, :c].mean(1, keepdim=True)  # (B, 1, C)
        return last + profile[:, torch.arange(self.steps) % m]

    def member_outputs(
        self, x: Tensor, context: int | None = None
    ) -> list[tuple[Tensor, Tensor | None]]:
        """Each member's mean and scale (see `forward` for the shapes), without the ensemble's
        combination or ``interval_scale`` (what training fits)."""
        level = self.level(x[:, :context])
        base = self.base(x, level)
        outs = []
        for rnn, head in self._networks():
            h, _ = self._encode(x, level, rnn=rnn)
            if self.mode == "direct":
                h = h[:, -1:]  # (B, 1, H)
            outs.append(self._head(h, base, head))
        return outs

    def forward(self, x: Tensor, context: int | None = None) -> tuple[Tensor, Tensor | None]:
        """direct: x (B, L_in, F) -> (B, L_out, C) each; autoregressive: x (B, L, F) ->
        (B, L, C), the level taken from the first ``context`` steps (default all). With
        members: their median mean and mixture scale; the scale times ``interval_scale``."""
        outs = self.member_outputs(x, context)
        if len(outs) == 1:
            mean, scale = outs[0]
        else:
            means = torch.stack([m for m, _ in outs])  # (K, B, L, C)
            ranked, k = means.sort(0).values, len(outs)  # sort, not median: ONNX exports it
            mean, scale = (ranked[(k - 1) // 2] + ranked[k // 2]) / 2, None
            if outs[0][1] is not None:
                var = torch.stack([s for _, s in outs]).square().mean(0) + means.var(0, False)
                scale = var.sqrt()
        if scale is not None and self.interval_scale != 1.0:
            scale = scale * self.interval_scale
        return mean, scale

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
                scale = None if scale is None else scale * self.interval_scale
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
