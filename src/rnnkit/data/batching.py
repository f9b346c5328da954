"""Batches of examples of unequal length: padding with lengths, length-bucketed draws, and
stratified folds for cross-validation."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence


def pad(items: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Examples (T_i,) or (T_i, F) -> padded (T, B) or (T, B, F) (zeros) and lengths (B,)."""
    lengths = torch.tensor([len(x) for x in items])
    return pad_sequence(items), lengths


def draw_batch(by_length: list[int], batch: int, bucket: int, rng: torch.Generator) -> list[int]:
    """``batch`` example indices. With ``bucket`` = 0 drawn with replacement from all examples;
    else without replacement from ``bucket * batch`` neighbours in ``by_length`` (the indices
    sorted by length, read circularly from a uniform start, so every example is equally likely):
    such a batch pads to about its own length rather than to the longest of a random draw."""
    n = len(by_length)
    if bucket == 0:
        return torch.randint(0, n, (batch,), generator=rng).tolist()
    start = int(torch.randint(0, n, (1,), generator=rng))
    offsets = torch.randperm(min(n, bucket * batch), generator=rng)[:batch].tolist()
    return [by_length[(start + k) % n] for k in offsets]


def stratified_folds(labels: list[int], folds: int, seed: int) -> list[int]:
    """The fold (0..folds-1) of each example: each class shuffled by ``seed`` and dealt round."""
    fold = [0] * len(labels)
    generator = torch.Generator().manual_seed(seed)
    for c in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == c]
        for k, j in enumerate(torch.randperm(len(members), generator=generator).tolist()):
            fold[members[j]] = k % folds
    return fold
