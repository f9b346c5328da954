"""Output heads: sampling from a categorical output (B batch, V classes), and a Gaussian head
(mean and scale per output) with its negative log-likelihood and prediction intervals."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rnnkit.errors import RnnkitError


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise RnnkitError for sampling settings outside their ranges."""
    if not temperature >= 0.0:
        raise RnnkitError(f"temperature must be >= 0 (0 = always the likeliest), got {temperature}")
    if top_k is not None and top_k < 1:
        raise RnnkitError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise RnnkitError(f"top_p must be in (0, 1], got {top_p}")


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one class per row of logits (B, V) -> (B,) int64.

    ``temperature`` divides the logits (0: argmax); ``top_k`` keeps the k likeliest classes;
    ``top_p`` keeps the smallest set of likeliest classes whose probability reaches p (nucleus).
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        beyond = probs.cumsum(-1) - probs >= top_p  # mass before this class already reaches p
        sorted_logits = sorted_logits.masked_fill(beyond, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class GaussianHead(torch.nn.Module):
    """A linear map to the mean and scale of an independent Gaussian per output.

    forward: (..., H) -> (mean (..., O), scale (..., O)), scale = softplus(.) + ``min_scale``.
    """

    def __init__(self, in_features: int, out_features: int, min_scale: float = 1e-3) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(in_features, 2 * out_features)
        self.min_scale = min_scale

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.proj(features).chunk(2, dim=-1)
        return mean, torch.nn.functional.softplus(raw) + self.min_scale

    @staticmethod
    def loss(mean: Tensor, scale: Tensor, target: Tensor) -> Tensor:
        """Mean negative log-likelihood (nats per value) of ``target`` under N(mean, scale^2)."""
        z = (target - mean) / scale
        return (0.5 * z.square() + scale.log() + 0.5 * math.log(2 * math.pi)).mean()

    @staticmethod
    def interval(mean: Tensor, scale: Tensor, level: float) -> tuple[Tensor, Tensor]:
        """The central interval holding ``level`` of the probability (e.g. 0.9): (lower, upper)."""
        if not 0.0 < level < 1.0:
            raise RnnkitError(f"the interval level must be in (0, 1), got {level}")
        z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)).item()
        return mean - z * scale, mean + z * scale
