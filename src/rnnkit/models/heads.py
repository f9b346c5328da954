"""Output heads: sampling from a categorical output (B batch, V classes), a Gaussian head
(mean and scale per output) with its negative log-likelihood and prediction intervals, and heads
for binary vectors (independent Bernoulli, and NADE for a joint distribution) with their NLL."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

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
    The draws are `torch.multinomial`'s with ``generator`` (`draw_rows`).
    """
    settings = Sampling.of([(temperature, top_k, top_p)] * logits.shape[0], logits.shape[-1])
    return draw_rows(logits, settings, generator)


class Sampling(NamedTuple):
    """Sampling settings of B rows (each its own), as `draw_rows` applies them batched.

    ``temperature`` (B, 1) float (1 where the row takes the likeliest class), ``top_k`` (B, 1)
    int64 (V: off), ``top_p`` (B, 1) float (inf: off); ``drawn`` (B,) bools, False where
    the temperature is 0. Derived: ``largest_k``, the largest top-k below V (0: none);
    ``kth`` (B, 1), where each row's k-th largest logit is among the ``largest_k`` largest
    (``largest_k`` itself for a row without top-k: a -inf put there); ``any_off``, whether
    a row has no top-k; ``nucleus``, whether a row has a top-p. Build with
    `Sampling.of`; `rows` selects rows (streams leaving a batch), `cat` joins settings.
    """

    temperature: Tensor
    top_k: Tensor
    top_p: Tensor
    drawn: tuple[bool, ...]
    largest_k: int = 0
    kth: Tensor | None = None
    any_off: bool = False
    nucleus: bool = False

    @staticmethod
    def of(rows: Sequence[tuple[float, int | None, float | None]], classes: int) -> Sampling:
        """Settings of rows ``(temperature, top_k, top_p)`` for logits of ``classes`` (V)."""
        for row in rows:
            check_sampling(*row)
        temperature = torch.tensor([[t if t > 0 else 1.0] for t, _, _ in rows])
        top_k = torch.tensor([[min(k, classes) if k is not None else classes] for _, k, _ in rows])
        top_p = torch.tensor([[p if p is not None and p < 1 else math.inf] for _, _, p in rows])
        drawn = tuple(t > 0 for t, _, _ in rows)
        return Sampling(temperature, top_k, top_p, drawn)._flagged(classes)

    def rows(self, rows: Sequence[int], classes: int) -> Sampling:
        """The settings of rows ``rows``."""
        index = torch.tensor(rows, dtype=torch.int64)
        parts = (t.index_select(0, index) for t in self[:3])
        return Sampling(*parts, tuple(self.drawn[b] for b in rows))._flagged(classes)

    @staticmethod
    def cat(parts: Sequence[Sampling], classes: int) -> Sampling:
        """The rows of ``parts`` in order."""
        joined = (torch.cat(tensors) for tensors in zip(*(p[:3] for p in parts)))
        drawn = tuple(d for p in parts for d in p.drawn)
        return Sampling(*joined, drawn)._flagged(classes)

    def _flagged(self, classes: int) -> Sampling:
        on = self.top_k < classes
        largest_k = int(self.top_k[on].max()) if bool(on.any()) else 0
        kth = torch.where(on, self.top_k - 1, largest_k)
        nucleus = bool(self.top_p.isfinite().any())
        return self._replace(largest_k=largest_k, kth=kth, any_off=not bool(on.all()),
                             nucleus=nucleus)  # fmt: skip


def filtered_probs(logits: Tensor, settings: Sampling) -> Tensor:
    """Each row's sampling distribution (B, V): the softmax of its logits / temperature, zero
    outside its top-k and its nucleus of mass top-p (the likeliest classes whose mass before
    them is under p); a row of temperature 0 as one of temperature 1. Every operation is row by
    row, so a row's result does not depend on the other rows of the batch."""
    logits = logits / settings.temperature
    if settings.largest_k:
        largest = torch.topk(logits, settings.largest_k, dim=-1).values
        if settings.any_off:  # their k-th largest: -inf, nothing masked
            largest = nn.functional.pad(largest, (0, 1), value=float("-inf"))
        kth = largest.gather(1, settings.kth)  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.nucleus:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        beyond = probs.cumsum(-1) - probs >= settings.top_p  # mass before it already reaches p
        sorted_logits = sorted_logits.masked_fill(beyond, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits.softmax(-1)


def draw_rows(
    logits: Tensor,
    settings: Sampling,
    generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """One class per row of logits (B, V) -> (B,) int64, row b with settings b (`Sampling`):
    the likeliest class where its temperature is 0, else a draw from `filtered_probs`.

    A draw is `torch.multinomial`'s (the argmax of p / q with q ~ Exp(1) per class), so the
    same generator gives the same classes as ``torch.multinomial(p, 1)``. ``generator``: one
    for all rows (one call fills q for them all, as multinomial does), or a sequence of B, row
    b's q drawn by generator b alone, so that a row draws the same class in any batch; rows
    with temperature 0 draw nothing from theirs. ``noise``: q (B, V) drawn ahead by the caller
    (a generator's draws for several steps in one call are its draws step by step), used
    instead of ``generator``.
    """
    if not any(settings.drawn):
        return logits.argmax(-1)
    probs = filtered_probs(logits, settings)
    greedy = not all(settings.drawn)
    q = noise if noise is not None else _exponentials(probs, settings.drawn, generator)
    best, drawn = (probs / q).max(-1)
    if bool(best.isnan().any()):
        raise RnnkitError("the model's outputs are not numbers (NaN); nothing to draw from")
    if greedy:
        drawn = torch.where(torch.tensor(settings.drawn), drawn, logits.argmax(-1))
    return drawn


def _exponentials(
    probs: Tensor,
    drawn: Sequence[bool],
    generator: torch.Generator | Sequence[torch.Generator | None] | None,
) -> Tensor:
    """q ~ Exp(1) shaped as probs (B, V), as `draw_rows` describes (1 in rows not drawn)."""
    q = torch.ones_like(probs) if not all(drawn) else torch.empty_like(probs)
    if generator is None or isinstance(generator, torch.Generator):
        return q.exponential_(generator=generator)
    if len(generator) != probs.shape[0]:
        raise RnnkitError(f"{len(generator)} generators for a batch of {probs.shape[0]}")
    for row, row_drawn, row_generator in zip(q, drawn, generator):
        if row_drawn:
            row.exponential_(generator=row_generator)
    return q


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
