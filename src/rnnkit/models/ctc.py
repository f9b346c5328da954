"""Connectionist temporal classification (Graves et al. 2006): the loss and the decoders.

Shape legend: T frames, B batch, K classes with class 0 the blank (K - 1 labels), S target
length. Posteriors are log-probabilities (T, K) (one sequence) or (T, B, K).

- `ctc_loss`: ``torch.nn.CTCLoss`` (mean over the batch of the loss divided by the target length).
- `greedy_decode`: the likeliest class per frame, repeats merged, blanks removed.
- `prefix_beam_search`: CTC prefix beam search (Hannun et al. 2014, without a language model):
  keeps the ``beam`` likeliest label prefixes, each with the probability of ending in a blank and
  in a non-blank, summing over every alignment of the prefix.
- `edit_distance`: Levenshtein distance; the error rate is distance / reference length.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor, nn


def ctc_loss(log_probs: Tensor, lengths: Tensor, targets: list[list[int]]) -> Tensor:
    """Mean CTC loss: log_probs (T, B, K), lengths (B,) frames, targets label lists (1..K-1)."""
    flat = torch.tensor([y for t in targets for y in t], dtype=torch.long)
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    loss = nn.CTCLoss(blank=0, zero_infinity=True)
    return loss(log_probs, flat, lengths, target_lengths)


def greedy_decode(log_probs: Tensor) -> list[int]:
    """Best path: (T, K) -> labels (the argmax per frame, repeats merged, blanks dropped)."""
    best = log_probs.argmax(-1).tolist()
    return [k for t, k in enumerate(best) if k != 0 and (t == 0 or best[t - 1] != k)]


def _logadd(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search(log_probs: Tensor, beam: int = 8) -> list[int]:
    """The likeliest label sequence by prefix beam search over (T, K) log-probabilities."""
    neg = -math.inf
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, neg)}  # (blank, non-blank)
    for frame in log_probs.tolist():
        new: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [neg, neg])
        for prefix, (p_b, p_nb) in beams.items():
            total = _logadd(p_b, p_nb)
            entry = new[prefix]
            entry[0] = _logadd(entry[0], total + frame[0])  # a blank: the prefix stays
            if prefix:  # the last label repeated without a blank between: the prefix stays
                entry[1] = _logadd(entry[1], p_nb + frame[prefix[-1]])
            for k in range(1, len(frame)):
                extended = new[prefix + (k,)]
                # after a non-blank ending in k, a new k needs a blank in between
                via = p_b if prefix and prefix[-1] == k else total
                extended[1] = _logadd(extended[1], via + frame[k])
        ranked = sorted(new.items(), key=lambda kv: _logadd(*kv[1]), reverse=True)
        beams = {p: (v[0], v[1]) for p, v in ranked[:beam]}
    return list(max(beams.items(), key=lambda kv: _logadd(*kv[1]))[0])


def edit_distance(hypothesis: list[int], reference: list[int]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    row = list(range(len(reference) + 1))
    for i, h in enumerate(hypothesis, start=1):
        previous, row[0] = row[0], i
        for j, r in enumerate(reference, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (h != r))
    return row[-1]
