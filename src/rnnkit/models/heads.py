"""Output heads: sampling from a categorical output (B batch, V classes), a Gaussian head
(mean and scale per output) with its negative log-likelihood and prediction intervals, and heads
for binary vectors (independent Bernoulli, and NADE for a joint distribution) with their NLL."""

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


# --- binary vectors: K independent or jointly modelled yes/no outputs (e.g. piano keys) ----------


def bernoulli_nll(logits: Tensor, target: Tensor) -> Tensor:
    """Negative log-likelihood in nats of binary ``target`` (..., K) under independent Bernoulli
    outputs of ``logits`` (..., K), summed over the K outputs: (...,).

    .. math:: -\\sum_k [x_k \\log \\sigma(l_k) + (1 - x_k) \\log(1 - \\sigma(l_k))]
    """
    return torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target, reduction="none"
    ).sum(-1)


def _draw_bernoulli(
    logits: Tensor, temperature: float, generator: torch.Generator | None
) -> Tensor:
    """0/1 draws (float) of Bernoulli(sigmoid(logits / temperature)); temperature 0: logits > 0."""
    if temperature == 0.0:
        return (logits > 0).to(logits.dtype)
    probs = torch.sigmoid(logits / temperature)
    return (torch.rand(probs.shape, generator=generator, dtype=probs.dtype) < probs).to(probs.dtype)


class BinaryHead(torch.nn.Module):
    """A distribution over binary vectors x (..., K) given features (..., F).

    ``logits(features, target)`` gives, for every k, the logit of p(x_k = 1 | features, x_<k)
    with x = ``target`` (teacher forcing; an independent head ignores ``target``), so the
    negative log-likelihood is ``bernoulli_nll(logits, target)`` for any head (`nll`).
    ``sample(features, temperature, generator)`` draws x (..., K) as floats 0/1.
    """

    def logits(self, features: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(
        self, features: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        raise NotImplementedError

    def nll(self, features: Tensor, target: Tensor) -> Tensor:
        """-log p(target | features) in nats: features (..., F), target (..., K) -> (...,)."""
        return bernoulli_nll(self.logits(features, target), target)


class BernoulliHead(BinaryHead):
    """K independent Bernoulli outputs: logits = a linear map of the features.

    Args:
        in_features: F.
        out_features: K.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(in_features, out_features)

    def logits(self, features: Tensor, target: Tensor | None = None) -> Tensor:
        return self.proj(features)

    def sample(
        self, features: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        check_sampling(temperature, None, None)
        return _draw_bernoulli(self.proj(features), temperature, generator)


class NADEHead(BinaryHead):
    """The K outputs modelled jointly by a NADE (Larochelle & Murray 2011) whose biases are
    linear maps of the features, as in the RNN-NADE of Boulanger-Lewandowski et al. (2012).

    With biases b (K,) and c (D,) read from the features, W, V (K, D) shared:

    .. math::
        a_k = c + \\sum_{j<k} x_j W_j, \\quad
        p(x_k = 1 \\mid x_{<k}) = \\sigma(b_k + V_k \\cdot \\sigma(a_k))

    Args:
        in_features: F.
        out_features: K.
        hidden_size: D, the NADE's hidden units.
    """

    def __init__(self, in_features: int, out_features: int, hidden_size: int = 128) -> None:
        super().__init__()
        self.out_features, self.hidden_size = out_features, hidden_size
        self.proj = torch.nn.Linear(in_features, out_features + hidden_size)  # -> b | c
        self.W = torch.nn.Parameter(torch.empty(out_features, hidden_size))
        self.V = torch.nn.Parameter(torch.empty(out_features, hidden_size))
        torch.nn.init.uniform_(self.W, -(out_features**-0.5), out_features**-0.5)
        torch.nn.init.uniform_(self.V, -(hidden_size**-0.5), hidden_size**-0.5)

    def logits(self, features: Tensor, target: Tensor) -> Tensor:
        """Each key's logit given the keys below it in ``target`` (0/1): (..., K).

        a_k only changes at the keys that are on, so it takes at most S + 1 values in a frame
        with S keys on: the hidden units are computed for those S + 1 segments only
        (O(S D K) instead of O(K^2 D) work), exactly.
        """
        b, c = self.proj(features).split([self.out_features, self.hidden_size], -1)
        x = target.reshape(-1, self.out_features)  # (N, K)
        b, c = b.reshape(x.shape), c.reshape(x.shape[0], 1, self.hidden_size)
        on, order = torch.sort(x, dim=-1, descending=True, stable=True)  # keys on first, in order
        S = int(x.sum(-1).max()) if x.numel() else 0
        steps = self.W[order[:, :S]] * on[:, :S, None]  # (N, S, D): x_j W_j of the keys on
        a = torch.cat([c, c + steps.cumsum(1)], 1)  # (N, S + 1, D): a after 0..S keys on
        scores = torch.sigmoid(a) @ self.V.T  # (N, S + 1, K)
        segment = (x.cumsum(-1) - x).long().unsqueeze(1)  # (N, 1, K): keys on below key k
        logits = b + scores.gather(1, segment).squeeze(1)  # (N, K)
        return logits.reshape(target.shape)

    def sample(
        self, features: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw x_1, ..., x_K in turn, each given those before it (K small steps)."""
        check_sampling(temperature, None, None)
        b, a = self.proj(features).split([self.out_features, self.hidden_size], -1)
        drawn = []
        for k in range(self.out_features):
            logit = b[..., k] + torch.sigmoid(a) @ self.V[k]  # (...,)
            x_k = _draw_bernoulli(logit, temperature, generator)
            a = a + x_k.unsqueeze(-1) * self.W[k]
            drawn.append(x_k)
        return torch.stack(drawn, -1)
