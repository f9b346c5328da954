"""Anomaly detection: a forecaster learns the series' early, presumably normal part; every later
point is scored by how badly it was predicted, and flagged above a threshold chosen without labels.

Shape legend: T rows, C targets.

1. Train a one-step Gaussian `Forecaster` (direct, output_chunk_length 1) on the first
   ``train_fraction`` of the rows (NAB's probationary period is the first 15%). With
   ``calendar=True`` and steps shorter than a day, it also reads the hour of the day (and the
   day of the week when the training part spans two weeks), so that a daily rhythm is predicted
   rather than flagged.
2. Standardised error of each row t >= L_in: z_t = (y_t - mean_t) / scale_t, from the
   network's predicted mean and scale (C > 1: the root mean square over targets).
3. Score: the root mean square of z over the last ``accumulate`` rows (a short accumulation,
   so that a run of moderate errors counts as much as one large error).
4. Threshold, without labels (``threshold``):
   "calibrated" (default) z is first rescaled so that its median magnitude after the training
              part is that of a standard normal (0.6745: the network's scale is fitted in
              sample and too small out of it); then, were z standard normal, the mean of k
              squares is chi^2_k / k, and a row is flagged when its score is a ``p_value`` tail
              event of that law: threshold sqrt(chi2.isf(p, k) / k);
   "dynamic"  the nonparametric dynamic threshold of Hundman et al. (2018): eps = mu + k sigma of
              the scores after the training part, k in 2..10 chosen to maximise the relative
              drop of mean and deviation when the points above eps are removed, penalised by
              the number of points and runs above it;
   "quantile" the ``quantile`` of the scores after the training part.
   All three read the scores of the whole series (offline), never the labels.
5. Flags: a row is flagged when its score reaches the threshold and no flag was raised in the
   ``refractory`` rows before it (one alarm per event).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from rnnkit.data.timeseries import TimeSeries, read_csv
from rnnkit.errors import RnnkitError
from rnnkit.tasks import nab
from rnnkit.tasks.forecast import Forecaster
from rnnkit.tasks.timeseries_plots import plot_anomalies

NAME = "anomaly"
THRESHOLDS = ("calibrated", "dynamic", "quantile")
ONE_SIGMA = 0.6826894921370859  # P(|Z| < 1): the interval whose half-width is one scale


@dataclass
class DetectConfig:
    """Settings of the detector (see the module docstring)."""

    train_fraction: float = 0.15
    input_chunk_length: int = 32
    accumulate: int = 20
    threshold: str = "calibrated"
    p_value: float = 1e-6
    quantile: float = 0.999
    refractory: int = 300
    calendar: bool = True

    def check(self, rows: int) -> None:
        if not 0.0 < self.train_fraction < 1.0:
            raise RnnkitError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.threshold not in THRESHOLDS:
            raise RnnkitError(
                f"threshold must be one of {', '.join(THRESHOLDS)}, got {self.threshold!r}"
            )
        if self.accumulate < 1 or self.refractory < 0:
            raise RnnkitError("accumulate must be >= 1 and refractory >= 0")
        need = 2 * (self.input_chunk_length + 1)
        if int(self.train_fraction * rows) < need:
            raise RnnkitError(
                f"the training part ({self.train_fraction:.0%} of {rows} rows) is shorter than "
                f"{need} rows; give a longer series, a larger --train-fraction or a smaller "
                "--input-chunk-length"
            )


@dataclass
class Detection:
    """Per row (T,): standardised error ``z``, ``score``, ``flags``; the ``threshold``; the
    rows that trained the forecaster (``train_end``)."""

    z: np.ndarray
    score: np.ndarray
    flags: np.ndarray
    threshold: float
    train_end: int

    def frame(self, series: TimeSeries) -> pd.DataFrame:
        """One row per time step: time, value(s), z, score, flag."""
        out = series.to_frame()
        out["z"], out["score"], out["flag"] = self.z, self.score, self.flags.astype(int)
        return out


def calendar_for(index: pd.DatetimeIndex) -> list[str]:
    """Calendar covariates the training part can teach: the hour for steps shorter than a day,
    and the day of the week when it spans at least two weeks."""
    step = pd.Series(index[1:] - index[:-1]).median()
    found = ["hour"] if step < pd.Timedelta(days=1) else []
    if index.max() - index.min() >= pd.Timedelta(days=14):
        found.append("dayofweek")
    return found


def standardized_errors(model: Forecaster, series: TimeSeries) -> np.ndarray:
    """z (T,): one-step standardised errors (0 for the first L_in rows, which have no forecast)."""
    lag = model.cfg.input_chunk_length
    ends = list(range(lag, len(series)))
    out = model.forecast_at(series, ends, 1, level=ONE_SIGMA)
    scale = (out["upper"] - out["lower"])[:, 0] / 2  # (T - lag, C)
    z = (series.values[lag:] - out["mean"][:, 0]) / np.maximum(scale, 1e-12)
    return np.concatenate([np.zeros(lag), np.sqrt(np.mean(z**2, axis=1))])


def accumulate(z: np.ndarray, k: int) -> np.ndarray:
    """Root mean square of z over the last ``k`` rows (fewer at the start): (T,) -> (T,)."""
    sq = np.concatenate([[0.0], np.cumsum(z**2)])
    t = np.arange(1, len(z) + 1)
    count = np.minimum(t, k)
    return np.sqrt((sq[t] - sq[t - count]) / count)


K_SIGMAS = np.arange(2.0, 10.5, 0.5)


def dynamic_threshold(scores: np.ndarray, ks: np.ndarray = K_SIGMAS) -> float:
    """Hundman et al. (2018)'s threshold on ``scores`` (see the module docstring)."""
    mu, sigma = scores.mean(), scores.std()
    best, best_eps = -np.inf, mu + ks[-1] * sigma
    for k in ks:
        eps = mu + k * sigma
        above = scores >= eps
        if not above.any() or above.all():
            continue
        below = scores[~above]
        runs = int(np.sum(np.diff(np.concatenate([[0], above.astype(int)])) == 1))
        gain = (mu - below.mean()) / mu + (sigma - below.std()) / sigma
        value = gain / (above.sum() + runs**2)
        if value > best:
            best, best_eps = value, eps
    return float(best_eps)


def flags_from(scores: np.ndarray, threshold: float, refractory: int, start: int = 0) -> np.ndarray:
    """Rows from ``start`` on whose score reaches ``threshold``, at most one per ``refractory``
    rows: (T,) -> (T,) bool."""
    flags = np.zeros(len(scores), bool)
    last = -refractory - 1
    for i in np.flatnonzero(scores >= threshold):
        if i >= start and i - last > refractory:
            flags[i], last = True, i
    return flags


#: training defaults of the detector's forecaster (a few thousand rows: seconds on a CPU)
DEFAULT_TRAIN: dict[str, Any] = {"max_steps": 600, "warmup_steps": 30, "eval_every": 600}


def detect(
    series: TimeSeries,
    cfg: DetectConfig | None = None,
    train: dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
    **settings,
) -> Detection:
    """Train on the early part of ``series``, score every row, threshold; see the module.
    ``settings`` go to the `Forecaster` (cell, hidden_size, ...)."""
    cfg = cfg or DetectConfig()
    cfg.check(len(series))
    train_end = int(cfg.train_fraction * len(series))
    train = {**DEFAULT_TRAIN, **(train or {})}
    if cfg.calendar:
        settings.setdefault("calendar", calendar_for(series.index[:train_end]))
    model = Forecaster(train, input_chunk_length=cfg.input_chunk_length, output_chunk_length=1,
                       likelihood="gaussian", **settings)  # fmt: skip
    model.fit(series[:train_end], run_dir)
    z = standardized_errors(model, series)
    return Detection(z, *threshold_scores(z, train_end, cfg), train_end)


def threshold_scores(
    z: np.ndarray, train_end: int, cfg: DetectConfig
) -> tuple[np.ndarray, np.ndarray, float]:
    """Scores, flags and threshold of standardised errors z (T,); see the module docstring."""
    if cfg.threshold == "calibrated":
        typical = np.median(np.abs(z[train_end:]))
        z = z * (0.6745 / typical) if typical > 0 else z
    score = accumulate(z, cfg.accumulate)
    after = score[train_end:]
    if cfg.threshold == "calibrated":
        threshold = float(np.sqrt(stats.chi2.isf(cfg.p_value, cfg.accumulate) / cfg.accumulate))
    elif cfg.threshold == "dynamic":
        threshold = dynamic_threshold(after)
    else:
        threshold = float(np.quantile(after, cfg.quantile))
    return score, flags_from(score, threshold, cfg.refractory, start=train_end), threshold


@dataclass
class DetectReport:
    """What `run` produced: the series, the detection, the NAB score (with windows), files."""

    series: TimeSeries
    detection: Detection
    nab: nab.NabScore | None
    files: list[Path]


def run(
    csv: str,
    time_col: str,
    targets: list[str],
    out: str | Path,
    fill: str = "refuse",
    regular: bool = True,
    windows: str | None = None,
    series_key: str | None = None,
    cfg: DetectConfig | None = None,
    train: dict[str, Any] | None = None,
    **settings,
) -> DetectReport:
    """Read ``csv``, detect, write ``scores.csv`` and ``detections.png`` into ``out`` (the
    forecaster's run is ``out/model``); with NAB ``windows`` (combined_windows.json), shade the
    labelled windows and score the flags (``series_key``: "category/file.csv", default the
    CSV's folder and name)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RnnkitError(f"{out} exists and is not empty; choose another output directory (--out)")
    series = read_csv(csv, time_col, targets or None, fill=fill, regular=regular)
    labelled = []
    if windows is not None:
        key = series_key or f"{Path(csv).parent.name}/{Path(csv).name}"
        labelled = nab.read_windows(windows, key)
    out.mkdir(parents=True)
    detection = detect(series, cfg, train, out / "model", **settings)
    files = [out / "scores.csv", out / "detections.png"]
    detection.frame(series).to_csv(files[0], index_label="time")
    plot_anomalies(series, detection.score, detection.flags, detection.threshold, files[1],
                   labelled, detection.train_end, Path(csv).stem)  # fmt: skip
    score = None
    if labelled:
        score = nab.score_flags(nab.row_weights(series.index, labelled), detection.flags)
    return DetectReport(series, detection, score, files)


def format_report(report: DetectReport) -> str:
    """The text `rnnkit detect` prints."""
    d, r = report.detection, report.series.report
    flagged = report.series.index[d.flags]
    lines = [f"data: {r['rows']} rows, {r['start']} .. {r['end']}, frequency {r['freq']}",
             f"trained on the first {d.train_end} rows; threshold {d.threshold:.3g}; "
             f"{len(flagged)} detection(s):"]  # fmt: skip
    lines += [f"  {t}  score {s:.3g}" for t, s in zip(flagged, d.score[d.flags])]
    if report.nab is not None:
        s = report.nab
        lines.append(f"NAB standard profile: {s.normalized:.1f} (raw {s.raw:.3f}; windows "
                     f"detected {s.tp}, missed {s.fn}; false positives {s.fp})")  # fmt: skip
    lines.append("wrote " + ", ".join(str(f) for f in report.files))
    return "\n".join(lines)
