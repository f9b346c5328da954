"""Synthetic long-term-memory problems: the adding problem and copy memory (Arjovsky et al. 2016).

Both are generated on the fly from a `torch.Generator`: no files, and every batch is reproducible
from the generator's seed. Tensors are time-major, as the layers expect.

Adding problem, length T, batch B:

    x (T, B, 2)   channel 0: values drawn from U[0, 1]; channel 1: markers, exactly one 1 at a
                  position uniform in [0, T//2) and one uniform in [T//2, T), zeros elsewhere
    y (B,)        the sum of the two marked values

    y is the sum of two independent U[0, 1], so its mean is 1 and its variance 2/12: always
    predicting 1 gives MSE 1/6 = 0.167 (`ADDING_BASELINE_MSE`).

Copy memory, delay T, K = 10 symbols from C = 8 categories (alphabet of C + 2 tokens):

    token 0 blank, 1..C the categories, C + 1 the delimiter
    x (T + 2K, B) K symbols uniform in 1..C, then T - 1 blanks, the delimiter, K blanks
    y (T + 2K, B) T + K blanks, then the K symbols (as in Arjovsky et al.'s code)

    A model without memory predicts a blank for the first T + K steps (cost 0) and guesses
    uniformly over C for the last K: mean cross-entropy per step K ln C / (T + 2K), which is
    10 ln 8 / (T + 20) (`copy_baseline`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rnnkit.errors import RnnkitError

ADDING_BASELINE_MSE = 1.0 / 6.0
BLANK = 0


def adding_problem(
    batch_size: int, steps: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """A batch of the adding problem: x (T, B, 2) float32, y (B,) float32; see module doc."""
    _check_positive("batch_size", batch_size)
    if not isinstance(steps, int) or steps < 2:
        raise RnnkitError(
            f"the adding problem needs T >= 2 steps (one marker per half), got {steps!r}"
        )
    half = steps // 2
    values = torch.rand(steps, batch_size, generator=generator)
    first = torch.randint(0, half, (batch_size,), generator=generator)
    second = torch.randint(half, steps, (batch_size,), generator=generator)
    markers = torch.zeros(steps, batch_size)
    columns = torch.arange(batch_size)
    markers[first, columns] = 1.0
    markers[second, columns] = 1.0
    y = values[first, columns] + values[second, columns]
    return torch.stack((values, markers), dim=-1), y


def copy_memory(
    batch_size: int,
    delay: int,
    symbols: int = 10,
    categories: int = 8,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """A batch of copy memory: x, y (T + 2K, B) int64 tokens in [0, C + 1]; see module doc."""
    _check_positive("batch_size", batch_size)
    _check_positive("delay (T)", delay)
    _check_positive("symbols (K)", symbols)
    if not isinstance(categories, int) or categories < 2:
        raise RnnkitError(f"copy memory needs at least 2 categories, got {categories!r}")
    length = delay + 2 * symbols
    sequence = torch.randint(1, categories + 1, (symbols, batch_size), generator=generator)
    x = torch.full((length, batch_size), BLANK, dtype=torch.long)
    y = torch.full((length, batch_size), BLANK, dtype=torch.long)
    x[:symbols] = sequence
    x[symbols + delay - 1] = categories + 1  # the delimiter
    y[delay + symbols :] = sequence
    return x, y


def copy_baseline(delay: int, symbols: int = 10, categories: int = 8) -> float:
    """Cross-entropy per step (nats) of the memoryless strategy: K ln C / (T + 2K)."""
    return symbols * math.log(categories) / (delay + 2 * symbols)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RnnkitError(f"{name} must be a positive integer, got {value!r}")
