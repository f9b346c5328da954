"""The Numenta Anomaly Benchmark's scoring rules (Lavin & Ahmad 2015), written from the paper.

Shape legend: T rows of one series, W labelled windows.

A detector flags rows. For each labelled anomaly window (first row ``a``, last row ``b``,
width ``w = b - a + 1``) and a profile's weights A_TP, A_FP, A_FN:

- the earliest flag in a window scores ``A_TP * sigma(y) / sigma(-1)`` with its relative position
  ``y = -(b - i + 1) / w`` (-1 at the window's first row, near 0 at its last), where
  ``sigma(y) = 2 / (1 + exp(5 y)) - 1`` is the scaled sigmoid (-1 for ``y >= 3``); later flags
  in the same window count nothing;
- a window without a flag costs ``-A_FN``;
- a flag outside every window scores ``A_FP * sigma(y)`` (negative) with ``y = (i - b') /
  (w' - 1)`` its distance past the end ``b'`` of the previous window (width ``w'``), or ``y = 3``
  (the full penalty ``-A_FP``) before the first window: flags just after a window cost little;
- the first 15% of the rows (at most 750) are a probationary period: flags there are ignored,
  and a window that lies entirely in it is not counted.

The raw score of a series is the sum of those terms; it is normalised between the null detector
(no flag: ``-A_FN * W``) and the perfect one (a flag at each window's start: ``A_TP * W``):
``100 * (raw - null) / (perfect - null)``. A corpus sums raw, null and perfect over its series
before normalising. NAB's scoreboard picks each detector's threshold to maximise its corpus
score (`best_threshold`); a threshold chosen without labels is scored as it is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rnnkit.data.bounded import load_json
from rnnkit.errors import RnnkitError, shorten

#: NAB's application profiles: weights of a true positive, a false positive, a false negative
PROFILES = {
    "standard": {"tp": 1.0, "fp": 0.11, "fn": 1.0},
    "reward_low_fp": {"tp": 1.0, "fp": 0.22, "fn": 1.0},
    "reward_low_fn": {"tp": 1.0, "fp": 0.11, "fn": 2.0},
}
PROBATION = 0.15


def scaled_sigmoid(y: float) -> float:
    """2 / (1 + exp(5 y)) - 1, and -1 from y = 3 on."""
    return -1.0 if y >= 3.0 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_length(rows: int) -> int:
    """Rows of the probationary period: 15% of the series, at most 750."""
    return int(min(math.floor(PROBATION * rows), PROBATION * 5000))


def read_windows(path: str | os.PathLike, key: str) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """The windows of series ``key`` (e.g. "realKnownCause/nyc_taxi.csv") in NAB's
    ``combined_windows.json``: an object from series names to lists of [start, end] timestamps.

    Raises:
        RnnkitError: the file is missing, not JSON of that shape (the message says where), or
            has no windows for ``key``.
    """
    path = Path(path)
    fix = "give NAB's combined_windows.json"
    if not path.is_file():
        raise RnnkitError(f"windows file {path} does not exist; {fix}")
    windows = load_json(path, fix)
    if not isinstance(windows, dict):
        raise RnnkitError(f"{path} must hold a JSON object from series names to windows; {fix}")
    if key not in windows:
        raise RnnkitError(f"{path} has no windows for {shorten(key)}; name the series as "
                          "category/file")  # fmt: skip
    if not isinstance(windows[key], list):
        raise RnnkitError(f"{path}: the windows of {shorten(key)} are not a list; {fix}")
    return [_window(w, f"{path}: window {i} of {shorten(key)}") for i, w in enumerate(windows[key])]


def _window(window: object, where: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """A [start, end] pair of timestamp strings as Timestamps, or RnnkitError naming ``where``."""
    pair = isinstance(window, list) and len(window) == 2 and all(isinstance(t, str) for t in window)
    try:
        stamps = [pd.Timestamp(t) for t in window] if pair else []
    except (ValueError, OverflowError):  # pandas' parse errors are ValueErrors
        stamps = []
    if len(stamps) != 2 or any(pd.isna(t) or t.tzinfo is not None for t in stamps):
        raise RnnkitError(f"{where} is {shorten(window)}, not [start, end] timestamps such as "
                          '["2014-01-01 00:00:00", "2014-01-02 00:00:00"]')  # fmt: skip
    return stamps[0], stamps[1]


@dataclass
class RowWeights:
    """What a flag on each row would score: ``window`` (T,) the window index or -1, ``weight``
    (T,) its TP or FP value, ``scorable`` (T,) False in the probation, ``windows`` counted."""

    window: np.ndarray
    weight: np.ndarray
    scorable: np.ndarray
    windows: list[int]
    profile: dict[str, float]


def row_weights(
    timestamps: pd.DatetimeIndex, windows: list[tuple], profile: str = "standard"
) -> RowWeights:
    """Precompute every row's score (see the module docstring) for a series and its windows."""
    if profile not in PROFILES:
        raise RnnkitError(f"unknown NAB profile {profile!r}; choose from {', '.join(PROFILES)}")
    a = PROFILES[profile]
    rows = len(timestamps)
    window, weight = np.full(rows, -1), np.empty(rows)
    bounds = [_rows_of(timestamps, start, end) for start, end in windows]
    previous = None
    for i in range(rows):
        inside = [k for k, (s, e) in enumerate(bounds) if s <= i <= e]
        if inside:
            s, e = bounds[inside[0]]
            window[i] = inside[0]
            weight[i] = a["tp"] * scaled_sigmoid(-(e - i + 1) / (e - s + 1)) / scaled_sigmoid(-1)
            previous = (e, e - s + 1)
        else:
            y = 3.0 if previous is None else (i - previous[0]) / max(previous[1] - 1, 1)
            weight[i] = a["fp"] * scaled_sigmoid(y)
    scorable = np.arange(rows) >= probation_length(rows)
    counted = sorted(set(window[scorable & (window >= 0)].tolist()))
    return RowWeights(window, weight, scorable, counted, a)


def _rows_of(timestamps: pd.DatetimeIndex, start, end) -> tuple[int, int]:
    """First and last row of a window: the first row at or after ``start``, the last at or
    before ``end``."""
    t = np.asarray(timestamps)
    after, before = (
        np.flatnonzero(t >= np.datetime64(start)),
        np.flatnonzero(t <= np.datetime64(end)),
    )
    if not len(after) or not len(before) or after[0] > before[-1]:
        raise RnnkitError(f"the window {start} .. {end} holds no row of the series")
    return int(after[0]), int(before[-1])


@dataclass
class NabScore:
    """A series' (or a corpus') raw score, its null and perfect scores, and the counts."""

    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int

    @property
    def normalized(self) -> float:
        """100 * (raw - null) / (perfect - null); NaN without a counted window."""
        span = self.perfect - self.null
        return 100.0 * (self.raw - self.null) / span if span > 0 else float("nan")

    def __add__(self, other: NabScore) -> NabScore:
        return NabScore(*(getattr(self, f) + getattr(other, f)
                          for f in ("raw", "null", "perfect", "tp", "fp", "fn")))  # fmt: skip


def score_flags(weights: RowWeights, flags: np.ndarray) -> NabScore:
    """The NAB score of boolean ``flags`` (T,) on a series with precomputed ``weights``."""
    hit = np.asarray(flags, bool) & weights.scorable
    outside = hit & (weights.window < 0)
    raw, tp = float(weights.weight[outside].sum()), 0
    for k in weights.windows:
        in_k = hit & (weights.window == k)
        if in_k.any():
            raw, tp = raw + float(weights.weight[in_k].max()), tp + 1
    fn = len(weights.windows) - tp
    raw -= weights.profile["fn"] * fn
    n = len(weights.windows)
    null, perfect = -weights.profile["fn"] * n, weights.profile["tp"] * n
    return NabScore(raw, null, perfect, tp, int(outside.sum()), fn)


def corpus_score(weights: list[RowWeights], flags: list[np.ndarray]) -> NabScore:
    """The summed score of several series (normalise the sum, not the mean of the series)."""
    total = NabScore(0.0, 0.0, 0.0, 0, 0, 0)
    for w, f in zip(weights, flags):
        total = total + score_flags(w, f)
    return total


def best_threshold(
    weights: list[RowWeights],
    scores: list[np.ndarray],
    to_flags: Callable[[np.ndarray, float], np.ndarray] = np.greater_equal,
    candidates: int = 200,
) -> tuple[float, NabScore]:
    """NAB's own protocol: the one threshold (over all series) maximising the corpus score,
    searched over the distinct scores (`threshold_grid`); ``to_flags(scores, threshold)`` turns
    scores into flags. It uses the labels: report it apart from a label-free threshold."""
    grid = threshold_grid(scores, candidates)
    best = (math.inf, corpus_score(weights, [np.zeros(len(s), bool) for s in scores]))
    for threshold in grid:
        result = corpus_score(weights, [to_flags(s, threshold) for s in scores])
        if result.raw > best[1].raw:
            best = (float(threshold), result)
    return best


def threshold_grid(scores: list[np.ndarray], candidates: int = 200) -> np.ndarray:
    """Thresholds to search over the scores of several series: every distinct score if there
    are at most ``candidates``, else ``candidates`` of their quantiles spread evenly and as many
    again in the upper tail (quantiles 1 - 10^-k, k up to 7), where a detector's best
    threshold flags a few rows in thousands."""
    grid = np.unique(np.concatenate(scores))
    if len(grid) <= candidates:
        return grid
    levels = np.concatenate([np.linspace(0.0, 1.0, candidates),
                             1.0 - np.logspace(-7.0, -1.0, candidates)])  # fmt: skip
    return np.unique(np.quantile(grid, np.clip(levels, 0.0, 1.0), method="lower"))
