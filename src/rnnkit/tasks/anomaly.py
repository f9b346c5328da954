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
3. Score and threshold, without labels (``threshold``):
   "likelihood" (default) Numenta's anomaly likelihood (Ahmad et al. 2017) on |z|: the mean
              m_t of |z| over the last ``accumulate`` rows is compared with a Gaussian fitted
              to the same means over the ``likelihood_window`` rows before t (its scale at
              least 10% of its mean); the score is -log10 of m_t's upper-tail probability under
              it (at most `MAX_SCORE`; 0 with fewer than `MIN_HISTORY` rows of history), and
              the threshold -log10(``p_value``). Each series is judged against its own recent
              errors, so neither the network's scale nor the series' noise level has to be
              calibrated. With ``spatial`` (as Numenta's detector), a value beyond the range
              of the values before it by more than 5% of that range (`SPATIAL_TOLERANCE`)
              scores `MAX_SCORE` (from the same row on as the likelihood). Causal: a row's
              score reads that row and the rows before it.
   "calibrated" the score is the root mean square of z over the last ``accumulate`` rows, z
              first rescaled so that its median magnitude after the training part is that of
              a standard normal (0.6745: the network's scale is fitted in sample and too small
              out of it); were z then standard normal, the mean of k squares is chi^2_k / k,
              and a row is flagged when its score is a ``p_value`` tail event of that law:
              threshold sqrt(chi2.isf(p, k) / k);
   "dynamic"  that root mean square (not rescaled), with the nonparametric dynamic threshold
              of Hundman et al. (2018): eps = mu + k sigma of the scores after the training
              part, k in 2..10 chosen to maximise the relative drop of mean and deviation when
              the points above eps are removed, penalised by the number of points and runs
              above it;
   "quantile" that root mean square, with the ``quantile`` of the scores after the training
              part as the threshold.
   The last three read the scores of the whole series (offline); none reads labels.
4. Flags: a row is flagged when its score reaches the threshold and no flag was raised in the
   ``refractory`` rows before it (one alarm per event).

A detector's run (`train`, or ``OUT/model`` of `run`) is an anomaly run: the forecaster's
weights, scalers and history, its settings (`AnomalyConfig`) and ``detector.json``, the
threshold and the rescaling of z (step 3) chosen on the training series for each checkpoint
("last", "best"). `AnomalyPredictor` scores new series with them.

The defaults (likelihood, accumulate 10, p_value 1e-6, refractory 200) were chosen on NAB's
realKnownCause and artificialWithAnomaly categories; docs/anomaly.md reports them on the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from rnnkit.data.timeseries import FILL_POLICIES, TimeSeries
from rnnkit.diagnostics.timeseries_plots import plot_anomalies
from rnnkit.errors import RnnkitError
from rnnkit.evaluation import nab
from rnnkit.forecasting.forecaster import (
    DEFAULT_TRAIN as FORECAST_TRAIN,
)
from rnnkit.forecasting.forecaster import (
    ForecastConfig,
    Forecaster,
    ForecastTask,
    Scalers,
    resumed_scalers,
    run_directory,
    series_input,
    torch_threads,
)
from rnnkit.forecasting.forecaster import (
    read_series as read_forecast_series,
)
from rnnkit.io import atomic_write_json, read_json
from rnnkit.layers import IMPLS
from rnnkit.predictor import Predictor, Result, check_inputs
from rnnkit.tasks.common import format_fit, settings_from_dict, train_task
from rnnkit.tasks.spec import TaskSpec
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.options import choice, path
from rnnkit.training.trainer import FitResult, TrainConfig, Trainer

NAME = "anomaly"
DETECTOR = "detector.json"
THRESHOLDS = ("likelihood", "calibrated", "dynamic", "quantile")
ONE_SIGMA = 0.6826894921370859  # P(|Z| < 1): the interval whose half-width is one scale
#: likelihood: rows of past scores before a row's score is more than 0
MIN_HISTORY = 100
#: likelihood: the highest score (-log10 of a tail probability); a spatial anomaly's score
MAX_SCORE = 100.0
#: likelihood: the Gaussian's scale is at least this fraction of its mean
STD_FLOOR = 0.1
#: spatial anomaly: a value beyond the range seen so far by more than this fraction of it
SPATIAL_TOLERANCE = 0.05


@dataclass
class DetectConfig:
    """Settings of the detector (see the module docstring).

    Attributes:
        train_fraction: Early part of the series that trains.
        input_chunk_length: Steps the forecaster reads.
        accumulate: Rows averaged into a score (likelihood: the mean |z|; the others: the
            root mean square of z).
        threshold: Label-free rule: likelihood (a tail probability of the recent errors
            against the series' own past errors), calibrated (a chi-square tail probability),
            dynamic (the largest gap in k sigmas) or quantile (of the scores).
        p_value: likelihood, calibrated: tail probability.
        quantile: quantile: of the scores.
        likelihood_window: likelihood: rows of past scores the Gaussian is fitted to.
        spatial: likelihood: also flag a value beyond the range seen so far (by 5% of it).
        refractory: Quiet rows after a detection.
        calendar: Calendar covariates the training part's frequency offers.
    """

    train_fraction: float = 0.15
    input_chunk_length: int = 32
    accumulate: int = 10
    threshold: str = choice("likelihood", THRESHOLDS)
    p_value: float = 1e-6
    quantile: float = 0.999
    likelihood_window: int = 8640
    spatial: bool = True
    refractory: int = 200
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
        if not 0.0 < self.p_value < 1.0:
            raise RnnkitError(f"p_value must be in (0, 1), got {self.p_value}")
        if self.likelihood_window < MIN_HISTORY:
            raise RnnkitError(f"likelihood_window must be >= {MIN_HISTORY} rows, got "
                              f"{self.likelihood_window}")  # fmt: skip
        need = 2 * (self.input_chunk_length + 1)
        if int(self.train_fraction * rows) < need:
            raise RnnkitError(
                f"the training part ({self.train_fraction:.0%} of {rows} rows) is shorter than "
                f"{need} rows; give a longer series, a larger --train-fraction or a smaller "
                "--input-chunk-length"
            )


@dataclass
class AnomalyConfig(DetectConfig):
    """An anomaly run's settings (config.json's ``task_config``): the detector's (`DetectConfig`),
    the data (a loaded run reads new series the same way), the forecaster's (a one-step
    Gaussian `Forecaster`, see `ForecastConfig`), and what is filled in from the series.

    Attributes:
        csv: CSV file with a time column, or a data set's (nab/realKnownCause/nyc_taxi.csv).
        time_col: Name of the time column.
        columns: Target column (repeatable); none: every column but the time column.
        fill: Policy for gaps and NaN: refuse them, interpolate, or carry the last value
            forward.
        regular: Regular steps of time; --rows-as-steps: the rows in file order are the steps
            (irregular times).
        cell: The recurrent cell.
        hidden_size: Hidden units per layer.
        num_layers: Recurrent layers.
        dropout: Dropout between layers.
        detrend: Subtract each input window's mean level.
        log: Model the log of the targets (positive series).
        batch_size: Windows per step.
        impl: The recurrence's implementation: rnnkit's BPTT engine, torch's kernel, or auto.
        freq: The series' frequency (filled in).
        calendar_features: The calendar covariates (filled in: with calendar, what
            `calendar_for` finds in the training part).
    """

    csv: str = path()
    time_col: str = ""
    columns: list[str] = field(default_factory=list)
    fill: str = choice("refuse", FILL_POLICIES)
    regular: bool = True
    cell: str = choice("lstm", ("lstm", "gru", "rnn"))
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    detrend: bool = True
    log: bool = False
    batch_size: int = 32
    impl: str = choice("auto", IMPLS)
    freq: str = ""
    calendar_features: list[str] | None = None


def forecaster_config(cfg: AnomalyConfig) -> ForecastConfig:
    """The `ForecastConfig` of the detector's one-step Gaussian forecaster."""
    return ForecastConfig(
        csv=cfg.csv, time_col=cfg.time_col, columns=list(cfg.columns), fill=cfg.fill,
        input_chunk_length=cfg.input_chunk_length, output_chunk_length=1, likelihood="gaussian",
        cell=cfg.cell, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
        dropout=cfg.dropout, detrend=cfg.detrend, log=cfg.log,
        calendar=list(cfg.calendar_features or []), batch_size=cfg.batch_size, impl=cfg.impl,
        targets=list(cfg.columns), freq=cfg.freq,
    )  # fmt: skip


@dataclass
class Detection:
    """Per row (T,): standardised error ``z``, ``score``, ``flags``; the ``threshold``; the
    rows that trained the forecaster (``train_end``); the factor z was rescaled by before the
    scores (``z_scale``; 1 but for the calibrated threshold)."""

    z: np.ndarray
    score: np.ndarray
    flags: np.ndarray
    threshold: float
    train_end: int
    z_scale: float = 1.0

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
    return errors_of(model, [series])[0]


#: one-step forecasts made in one forward pass (bounds the memory of long series)
CHUNK = 8192


def errors_of(model: Forecaster, batch: Sequence[TimeSeries]) -> list[np.ndarray]:
    """`standardized_errors` of each series of ``batch``, their windows run as one batch."""
    lag = model.cfg.input_chunk_length
    for series in batch:
        model._check_request(series, [len(series)], 1)
        if len(series) <= lag:
            raise RnnkitError(f"a series of {len(series)} rows has none to score: the first "
                              f"{lag} (input_chunk_length) have no forecast; give a longer "
                              "series")  # fmt: skip
    x = torch.cat([model.window_inputs(s, range(lag, len(s))) for s in batch])
    parts = [model.forecast_windows(x[i : i + CHUNK], [], 1, ONE_SIGMA)
             for i in range(0, len(x), CHUNK)]  # fmt: skip
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("mean", "lower", "upper")}
    scale = (out["upper"] - out["lower"])[:, 0] / 2  # (N, C)
    found, first = [], 0
    for series in batch:
        last = first + len(series) - lag
        z = (series.values[lag:] - out["mean"][first:last, 0]) / np.maximum(
            scale[first:last], 1e-12
        )
        found.append(np.concatenate([np.zeros(lag), np.sqrt(np.mean(z**2, axis=1))]))
        first = last
    return found


def accumulate(z: np.ndarray, k: int) -> np.ndarray:
    """Root mean square of z over the last ``k`` rows (fewer at the start): (T,) -> (T,)."""
    return np.sqrt(accumulate_mean(z**2, k))


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
    above = np.flatnonzero(scores >= threshold)
    k = int(np.searchsorted(above, start))
    while k < len(above):  # one step per flag: jump past the refractory rows
        flags[above[k]] = True
        k = int(np.searchsorted(above, above[k] + refractory + 1))
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
    """Train on the early part of ``series`` into the anomaly run ``run_dir`` (None: a temporary
    directory), score every row, threshold; see the module. ``settings``: `AnomalyConfig`'s
    forecaster fields (cell, hidden_size, ...; ``calendar``: a list of calendar features)."""
    if "calendar" in settings:
        settings["calendar_features"] = settings.pop("calendar")
    values = {**asdict(cfg or DetectConfig()), **settings}
    return fit_detector(settings_from_dict(AnomalyConfig, values, NAME), series, train, run_dir)


class AnomalyTask(ForecastTask):
    """The trainer's task of an anomaly run: a `ForecastTask` on the first ``train_fraction`` of
    ``series`` whose run stores the filled-in `AnomalyConfig` (``settings``); ``scalers``:
    those of a resumed run."""

    name = NAME

    def __init__(
        self, cfg: AnomalyConfig, series: TimeSeries, scalers: Scalers | None = None
    ) -> None:
        cfg.check(len(series))
        self.train_end = int(cfg.train_fraction * len(series))
        calendar = cfg.calendar_features
        if calendar is None:
            calendar = calendar_for(series.index[: self.train_end]) if cfg.calendar else []
        self.settings = replace(cfg, columns=list(series.columns), freq=series.freq,
                                calendar_features=calendar)  # fmt: skip
        self.full_series = series
        super().__init__(forecaster_config(self.settings), series[: self.train_end], scalers)

    def config(self) -> dict[str, Any]:
        return asdict(self.settings)


def fit_detector(
    cfg: AnomalyConfig,
    series: TimeSeries,
    train: dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
) -> Detection:
    """`detect` with the run's settings ``cfg``: train, calibrate (`save_calibration`)."""
    task = AnomalyTask(cfg, series)
    config = TrainConfig.from_dict({**FORECAST_TRAIN, **DEFAULT_TRAIN, **(train or {})})
    with run_directory(run_dir) as path, torch_threads(1):
        Trainer(task, config, path).fit()
        return save_calibration(path, task)


def calibrate(
    model: Forecaster, series: TimeSeries, train_end: int, cfg: DetectConfig
) -> Detection:
    """Score every row of ``series`` with ``model`` and choose the threshold (steps 2 to 4)."""
    z = standardized_errors(model, series)
    found = threshold_scores(z, train_end, cfg, series.values, model.cfg.input_chunk_length)
    return Detection(z, *found, train_end, z_scale(z, train_end, cfg))


def save_calibration(run_dir: Path, task: AnomalyTask) -> Detection:
    """Calibrate the run's task with its "last" and its "best" weights; write each one's
    threshold and z scale to ``detector.json``. Returns the "last" weights' `Detection`."""
    fcfg = forecaster_config(task.settings)
    found: dict[str, Detection] = {}
    for which in ("last", "best"):
        if which == "best" and ckpt.weights_file(run_dir, "best") == ckpt.weights_file(run_dir):
            found[which] = found["last"]
            continue
        model = Forecaster.from_run(run_dir, fcfg, {}, which)
        found[which] = calibrate(model, task.full_series, task.train_end, task.settings)
    atomic_write_json(run_dir / DETECTOR, {
        which: {"threshold": d.threshold, "z_scale": d.z_scale, "train_end": d.train_end,
                "rows": len(task.full_series)} for which, d in found.items()
    })  # fmt: skip
    return found["last"]


def z_scale(z: np.ndarray, train_end: int, cfg: DetectConfig) -> float:
    """The factor the calibrated threshold rescales z (T,) by: 0.6745 over the median |z| after
    the training part (1 for the other thresholds, or a median of 0)."""
    if cfg.threshold != "calibrated":
        return 1.0
    typical = np.median(np.abs(z[train_end:]))
    return float(0.6745 / typical) if typical > 0 else 1.0


def threshold_scores(
    z: np.ndarray,
    train_end: int,
    cfg: DetectConfig,
    values: np.ndarray | None = None,
    first: int = 0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Scores, flags from ``train_end`` on, and threshold of standardised errors z (T,) (see
    the module docstring); ``values`` (T, C): the series' (for ``spatial``; None: not checked);
    ``first``: the first row with a forecast (z is 0 before)."""
    score = row_scores(z, cfg, z_scale(z, train_end, cfg), values, first)
    after = score[train_end:]
    if cfg.threshold == "likelihood":
        threshold = float(-np.log10(cfg.p_value))
    elif cfg.threshold == "calibrated":
        threshold = float(np.sqrt(stats.chi2.isf(cfg.p_value, cfg.accumulate) / cfg.accumulate))
    elif cfg.threshold == "dynamic":
        threshold = dynamic_threshold(after)
    else:
        threshold = float(np.quantile(after, cfg.quantile))
    return score, flags_from(score, threshold, cfg.refractory, start=train_end), threshold


def row_scores(
    z: np.ndarray,
    cfg: DetectConfig,
    scale: float = 1.0,
    values: np.ndarray | None = None,
    first: int = 0,
) -> np.ndarray:
    """The scores (T,) of z (T,) under ``cfg.threshold``'s rule: the likelihood's (with the
    spatial anomalies of ``values`` (T, C) at `MAX_SCORE`, after the same `MIN_HISTORY` rows),
    or the root mean square of ``scale * z`` over ``cfg.accumulate`` rows."""
    if cfg.threshold != "likelihood":
        return accumulate(z * scale, cfg.accumulate)
    score = likelihood_scores(z, first, cfg.accumulate, cfg.likelihood_window)
    if cfg.spatial and values is not None:
        score[beyond_range(values, first + MIN_HISTORY)] = MAX_SCORE
    return score


def likelihood_scores(z: np.ndarray, first: int, k: int, window: int) -> np.ndarray:
    """Anomaly likelihood (T,) of z (T,) from row ``first`` on (0 before): -log10 of the upper
    tail probability of the mean |z| over the last ``k`` rows under a Gaussian fitted to those
    means over the ``window`` rows before (see the module docstring)."""
    means = accumulate_mean(np.abs(z[first:]), k)
    sums = [np.concatenate([[0.0], np.cumsum(means**p)]) for p in (1, 2)]
    t = np.arange(len(means))
    low = np.maximum(0, t - window)
    count = np.maximum(t - low, 1)
    mu = (sums[0][t] - sums[0][low]) / count
    var = np.maximum((sums[1][t] - sums[1][low]) / count - mu**2, 0.0)
    sd = np.maximum(np.sqrt(var), np.maximum(STD_FLOOR * mu, 1e-12))
    score = np.clip(-stats.norm.logsf((means - mu) / sd) / np.log(10.0), 0.0, MAX_SCORE)
    score[t - low < MIN_HISTORY] = 0.0
    return np.concatenate([np.zeros(len(z) - len(means)), score])


def accumulate_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of x over the last ``k`` rows (fewer at the start): (T,) -> (T,)."""
    sums = np.concatenate([[0.0], np.cumsum(x)])
    t = np.arange(1, len(x) + 1)
    count = np.minimum(t, k)
    return (sums[t] - sums[t - count]) / count


def beyond_range(values: np.ndarray, first: int = 0) -> np.ndarray:
    """Spatial anomalies (T,) bool of ``values`` (T, C) (or (T,)): rows from ``first`` on where
    a target lies beyond the range of its values before by more than `SPATIAL_TOLERANCE` of
    that range (never while that range is 0)."""
    v = np.asarray(values, float).reshape(len(values), -1)
    high = np.maximum.accumulate(v, axis=0)[:-1]
    low = np.minimum.accumulate(v, axis=0)[:-1]
    margin = SPATIAL_TOLERANCE * (high - low)
    out = (high > low) & ((v[1:] > high + margin) | (v[1:] < low - margin))
    found = np.concatenate([[False], out.any(axis=1)])
    found[:first] = False
    return found


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
    data = {"csv": str(Path(csv).expanduser().resolve()), "time_col": time_col,
            "columns": list(targets), "fill": fill, "regular": regular}  # fmt: skip
    run_cfg = settings_from_dict(AnomalyConfig, {**asdict(cfg or DetectConfig()), **settings,
                                                 **data}, NAME)  # fmt: skip
    series = read_series(run_cfg)
    labelled = []
    if windows is not None:
        key = series_key or f"{Path(csv).parent.name}/{Path(csv).name}"
        labelled = nab.read_windows(windows, key)
    out.mkdir(parents=True)
    detection = fit_detector(run_cfg, series, train, out / "model")
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


# --- `rnnkit train anomaly`, and a trained detector as a `Predictor` ----------------------------

#: training defaults of `rnnkit train anomaly`: the detector's, with a progress display
TRAIN_DEFAULTS = TrainConfig.from_dict({**FORECAST_TRAIN, **DEFAULT_TRAIN,
                                        "progress": "auto"})  # fmt: skip


def read_series(cfg: AnomalyConfig) -> TimeSeries:
    """The series of ``cfg``'s CSV."""
    return read_forecast_series(forecaster_config(cfg), cfg.regular)[0]


def train(
    flags: dict[str, Any],
    config_file: str | None = None,
    out: str | None = None,
    resume: str | None = None,
    threads: int | None = 1,
) -> FitResult:
    """Train (or resume) a detector on a CSV from command-line ``flags`` (None: not given; named
    like the `AnomalyConfig` fields and `rnnkit.training.options.TRAIN_KEYS`), a TOML
    ``config_file`` and the defaults, then calibrate it on the whole CSV (``detector.json``;
    not after a diverged run). A resumed run keeps its scalers. ``threads``: torch threads."""
    made: list[AnomalyTask] = []

    def make_task(cfg: AnomalyConfig) -> AnomalyTask:
        made.append(AnomalyTask(cfg, read_series(cfg), resumed_scalers(resume, cfg.csv)))
        return made[-1]

    with torch_threads(threads):
        result = train_task(NAME, AnomalyConfig, make_task, TRAIN_DEFAULTS, flags, config_file,
                            out, resume)  # fmt: skip
        if result.stop_reason != "diverged":
            save_calibration(result.run_dir, made[-1])
    return result


@dataclass
class Anomalies(Result):
    """The detector's answer for one series of T rows.

    ``times`` (T,): the rows' timestamps, ISO strings. ``values``: per target column, the T
    values read ({column: (T,)}). ``scores`` (T,): the run's rule's score of the one-step
    standardised errors (likelihood: -log10 of a tail probability, from 0 to 100, 0 without
    `MIN_HISTORY` rows of history; the other rules: the root mean square of the calibrated
    errors over the last ``accumulate`` rows); the first ``input_chunk_length`` rows have no
    forecast: their error counts as 0 and their score is 0 (never null). ``flags`` (T,): 1
    where the score reaches ``threshold`` and no row was flagged in the ``refractory`` rows
    before, else 0. ``threshold``: the run's, chosen on its training series.
    """

    times: list[str]
    values: dict[str, list[float]]
    scores: list[float]
    flags: list[int]
    threshold: float

    def summary(self) -> str:
        flagged = [i for i, f in enumerate(self.flags) if f]
        shown = ", ".join(f"{self.times[i]} (score {self.scores[i]:.3g})" for i in flagged[:3])
        more = f", and {len(flagged) - 3} more" if len(flagged) > 3 else ""
        return (f"{len(flagged)} anomal{'y' if len(flagged) == 1 else 'ies'} in "
                f"{len(self.times)} rows (threshold {self.threshold:.3g})"
                + (f": {shown}{more}" if flagged else ""))  # fmt: skip


def load_run(
    run_dir: str | Path, checkpoint: str = "best"
) -> tuple[Forecaster, AnomalyConfig, dict[str, float]]:
    """The forecaster (its ``checkpoint`` weights), settings and calibration (``threshold``,
    ``z_scale``) of an anomaly run."""
    run_dir = Path(run_dir)
    config = ckpt.read_config(run_dir)
    if config.get("task") != NAME:
        raise RnnkitError(f"{run_dir} is a {config.get('task')!r} run, not an anomaly run")
    cfg = settings_from_dict(AnomalyConfig, config["task_config"], NAME)
    if not (run_dir / DETECTOR).is_file():
        raise RnnkitError(f"{run_dir} has no {DETECTOR}: its training has not ended; resume it "
                          f"(rnnkit train --resume {run_dir})")  # fmt: skip
    saved = read_json(run_dir / DETECTOR)
    calibration = saved.get(checkpoint) if isinstance(saved, dict) else None
    numbers = {k: calibration.get(k) for k in ("threshold", "z_scale")} if isinstance(
        calibration, dict) else {}  # fmt: skip
    if not numbers or not all(_positive(v) for v in numbers.values()):
        raise RnnkitError(f"{run_dir}/{DETECTOR} is damaged (no positive threshold and z_scale "
                          f"for the {checkpoint!r} weights); train again")  # fmt: skip
    model = Forecaster.from_run(run_dir, forecaster_config(cfg), config["train"], checkpoint,
                                threads=None)  # fmt: skip
    return model, cfg, {k: float(v) for k, v in numbers.items()}


def _positive(value: Any) -> bool:
    """Whether ``value`` is a finite number above 0 (bools are not numbers here)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok and bool(np.isfinite(value)) and value > 0


class AnomalyPredictor(Predictor):
    """A trained detector: ``predict([series, ...])`` -> `Anomalies` per series, scored with the
    run's forecaster and flagged with its threshold (all series' windows run as one batch).

    A series is a CSV path or a DataFrame with the run's time column (a DataFrame may carry
    the times as its DatetimeIndex instead) and target columns, read as the run read its CSV,
    or a `TimeSeries` of the run's targets; it needs more than ``input_chunk_length`` rows.
    """

    task = NAME
    takes = "a series (a CSV path, a DataFrame or a TimeSeries)"

    def __init__(self, run_dir: str | Path, checkpoint: str = "best") -> None:
        self.forecaster, self.cfg, self.calibration = load_run(run_dir, checkpoint)
        super().__init__(run_dir, ckpt.read_config(run_dir), checkpoint)

    @property
    def threshold(self) -> float:
        return self.calibration["threshold"]

    def graph(self):
        """What `rnnkit export` records: the forecaster's network over scaled windows
        (`rnnkit.tasks.forecast_export`); model.json adds the detector's calibration (the
        threshold on its scores) and settings."""
        from rnnkit.tasks.forecast_export import export_graph

        return export_graph(self.forecaster, {"detector": self.calibration,
                                              "detect_settings": asdict(self.cfg)})  # fmt: skip

    def predict(self, inputs: Sequence[Any]) -> list[Anomalies]:
        """One `Anomalies` per series."""
        cfg = self.cfg
        batch = [series_input(item, cfg.time_col, cfg.columns, (), cfg.fill, cfg.regular,
                              what=self.takes)
                 for item in check_inputs(inputs, self.takes)]  # fmt: skip
        return [self._result(s, z) for s, z in zip(batch, errors_of(self.forecaster, batch))]

    def parse(self, args: Sequence[str]) -> list[str]:
        """Command-line arguments are CSV paths."""
        return [str(a) for a in args]

    def _result(self, series: TimeSeries, z: np.ndarray) -> Anomalies:
        cfg, first = self.cfg, self.cfg.input_chunk_length
        score = row_scores(z, cfg, self.calibration["z_scale"], series.values, first)
        flags = flags_from(score, self.threshold, cfg.refractory, start=first)
        values = {c: series.values[:, i].tolist() for i, c in enumerate(series.columns)}
        return Anomalies([t.isoformat() for t in series.index], values, score.tolist(),
                         flags.astype(int).tolist(), self.threshold)  # fmt: skip


def load_predictor(run_dir: str | Path, checkpoint: str = "best") -> AnomalyPredictor:
    """The `AnomalyPredictor` of a run (`rnnkit.load`)."""
    return AnomalyPredictor(run_dir, checkpoint)


SPEC = TaskSpec(
    NAME,
    "",
    AnomalyConfig,
    TRAIN_DEFAULTS,
    train,
    format_fit,
    load_predictor,
    internal=("freq", "calendar_features"),
    examples=(
        "rnnkit data fetch nab",
        "rnnkit train anomaly --csv nab/realKnownCause/nyc_taxi.csv --time-col timestamp \\",
        "  --target value --rows-as-steps --out runs/nyc",
    ),
)
