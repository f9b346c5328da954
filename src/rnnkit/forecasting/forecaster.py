"""The forecaster: a `TimeSeries` in, a forecast with prediction intervals out.

Shape legend: T time steps, C targets, K covariates (user columns, then calendar sin/cos pairs),
F = C + K, L_in ``input_chunk_length``, L_out ``output_chunk_length``, n steps forecast,
B origins (forecasts made at once).

Data: the series given to `Forecaster.fit` trains; its last ``val_fraction``, if any,
validates (the windows that end there; in direct mode all their targets lie there). Targets and
covariates are standardised with statistics of the training rows only (optionally after a log),
stored as ``scaler.json``. The run also keeps the last L_in rows as ``history.json`` so that a
loaded run can ``predict(n)`` by itself.
Model: `rnnkit.models.forecaster.ForecastNet` (direct or autoregressive, point or Gaussian).
Loss: Gaussian negative log-likelihood (nats per value, scaled units) or mean squared error.

One task object (`ForecastTask`) trains it three ways: `Forecaster.fit` on a `TimeSeries` in
Python, and the forecast task's ``rnnkit train forecast`` and ``rnnkit forecast``
(`rnnkit.tasks.forecast`); the anomaly task trains it too (`rnnkit.tasks.anomaly`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from rnnkit.data.timeseries import (
    CALENDAR,
    FILL_POLICIES,
    Scaler,
    TimeSeries,
    calendar_features,
    check_window,
    from_frame,
    log_returns,
    make_windows,
    read_csv,
    season_of,
)
from rnnkit.errors import RnnkitError, shorten
from rnnkit.io import atomic_write_json, read_json
from rnnkit.layers import IMPLS
from rnnkit.models.forecaster import MODES, ForecastNet
from rnnkit.models.heads import GaussianHead
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.options import choice, path
from rnnkit.training.runs import settings_from_dict
from rnnkit.training.trainer import FitResult, StepOutput, TrainConfig, Trainer

NAME = "forecast"
SCALER, HISTORY = "scaler.json", "history.json"


@dataclass
class ForecastConfig:
    """What rebuilds the model and its data pipeline (stored in config.json).

    The data (``csv`` to ``returns``) is empty for a `Forecaster` fitted on a `TimeSeries` in
    Python; a loaded run reads histories the same way. ``targets``, ``covariates`` and ``freq``
    are filled in from the series by `Forecaster.fit`.

    Attributes:
        csv: CSV file with a time column, or a data set's (airline-passengers,
            nab/realKnownCause/nyc_taxi.csv).
        time_col: Name of the time column.
        columns: Target column (repeatable); none: every column but the time column and the
            covariates (filled in when the CSV is read).
        fill: Policy for gaps and NaN: refuse them, interpolate, or carry the last value
            forward.
        returns: Forecast the log returns of a price.
        input_chunk_length: Steps the network reads; 0: from the data (`auto_input_length`:
            three seasons or two horizons, at most a third of the series).
        output_chunk_length: Steps it forecasts at once (direct mode).
        mode: direct: all steps at once; autoregressive: one step at a time, fed back.
        likelihood: gaussian: intervals from a Gaussian; none: a point forecast (MSE).
        cell: The recurrent cell.
        hidden_size: Hidden units per layer.
        num_layers: Recurrent layers.
        dropout: Dropout between layers.
        detrend: Subtract each input window's mean level.
        log: Model the log of the targets; not given: on when every training value is
            positive (off for log returns).
        calendar: Calendar covariate (repeatable).
        batch_size: Windows per step.
        val_fraction: The end of the series that validates; 0: none.
        impl: The recurrence's implementation: rnnkit's BPTT engine, torch's kernel, or auto.
        targets: The model's target names (the columns, or "<column> log return").
        covariates: Past covariate column (repeatable).
        freq: The series' frequency.
        season: The seasonal period: of the defaults (input length, seasonal base) and, in a
            backtest, of the classical models and the MASE scale; 0: from the frequency (12
            monthly, 4 quarterly, 7 daily, 5 business-daily, ...).
        members: Networks trained side by side from different initial weights (direct mode):
            the forecast is their median, the interval their mixture's; 0: 5 in direct mode,
            1 in autoregressive mode.
        calibrate: Widen the intervals so that they cover their level on the last origins of
            the series (a conformal correction: one more fit, on the series without its last
            forecasts; see `Forecaster.fit`; `rnnkit train forecast` makes that fit with the
            default budget, and a resumed run keeps its scale).
        seasonal_base: Add the network's output (direct mode, detrend) to the window's last
            season's level plus its seasonal profile (a smoothed seasonal naive) instead of its
            mean level; a run stored without this setting has the mean level.
        interval_scale: The factor the predictive scale is multiplied by (set by --calibrate).
    """

    csv: str = path()
    time_col: str = ""
    columns: list[str] = field(default_factory=list)
    fill: str = choice("refuse", FILL_POLICIES)
    returns: bool = False
    input_chunk_length: int = 0
    output_chunk_length: int = 6
    mode: str = choice("direct", MODES)
    likelihood: str | None = choice("gaussian", ("gaussian", None))
    cell: str = choice("lstm", ("lstm", "gru", "rnn"))
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    detrend: bool = True
    log: bool | None = None
    calendar: list[str] = field(default_factory=list, metadata={"choices": CALENDAR})
    batch_size: int = 32
    val_fraction: float = 0.0
    impl: str = choice("auto", IMPLS)
    targets: list[str] = field(default_factory=list)
    covariates: list[str] = field(default_factory=list)
    freq: str = ""
    season: int = 0
    members: int = 0
    calibrate: bool = True
    seasonal_base: bool = True
    interval_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.likelihood == "none":  # the command line's and a TOML file's word for None
            self.likelihood = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ForecastConfig:
        """Refuses unknown keys (a typo), naming the known ones."""
        return settings_from_dict(cls, values, NAME)

    @property
    def input_size(self) -> int:
        return len(self.targets) + len(self.covariates) + 2 * len(self.calendar)

    def check(self, series: TimeSeries) -> None:
        """Raise RnnkitError for settings that cannot work with ``series``."""
        if self.mode == "autoregressive" and series.covariate_names:
            raise RnnkitError(
                "the autoregressive mode needs the covariates of future steps, which only the "
                "calendar gives: drop the covariate columns or use --mode direct"
            )
        if not 0.0 <= self.val_fraction < 0.5:
            raise RnnkitError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        check_window(len(series), self.input_chunk_length, self.output_chunk_length)


class Scalers:
    """The targets' and the covariates' `Scaler`, saved together as ``scaler.json``."""

    def __init__(self, targets: Scaler, covariates: Scaler | None) -> None:
        self.targets, self.covariates = targets, covariates

    @classmethod
    def fit(cls, series: TimeSeries, log: bool) -> Scalers:
        """Fit on ``series`` (pass the training rows only)."""
        cov = series.covariates
        cov_scaler = None if cov is None else Scaler.fit(cov, series.covariate_names)
        return cls(Scaler.fit(series.values, series.columns, log), cov_scaler)

    def inputs(self, series: TimeSeries, calendar: list[str]) -> np.ndarray:
        """The network's inputs (T, F): scaled targets, scaled covariates, calendar."""
        parts = [self.targets.transform(series.values)]
        if self.covariates is not None:
            parts.append(self.covariates.transform(series.covariates))
        parts.append(calendar_features(series.index, calendar))
        return np.concatenate(parts, axis=1)

    def to_dict(self) -> dict[str, Any]:
        cov = None if self.covariates is None else self.covariates.to_dict()
        return {"targets": self.targets.to_dict(), "covariates": cov}

    @classmethod
    def from_dict(cls, data: Any) -> Scalers:
        """The scalers stored by `to_dict`; RnnkitError if ``data`` is not of that shape."""
        if not isinstance(data, dict):
            raise RnnkitError("a run's scalers are damaged (not a JSON object); train again")
        cov = data.get("covariates")
        return cls(Scaler.from_dict(data.get("targets")), cov and Scaler.from_dict(cov))


def build_model(cfg: ForecastConfig) -> ForecastNet:
    """The network of ``cfg`` (its targets, covariates and calendar set)."""
    return ForecastNet(
        cfg.input_size, len(cfg.targets), cfg.output_chunk_length, cfg.hidden_size,
        cfg.num_layers, cfg.cell, cfg.dropout, cfg.mode, cfg.likelihood, cfg.detrend, cfg.impl,
        max(1, cfg.members), cfg.interval_scale, cfg.season if cfg.seasonal_base else 0,
    )  # fmt: skip


def sliding(a: np.ndarray, length: int) -> np.ndarray:
    """All windows of ``length`` rows: (T, F) -> (T - length + 1, length, F)."""
    return a[np.arange(len(a) - length + 1)[:, None] + np.arange(length)]


class ForecastTask:
    """The task object the trainer drives (see `rnnkit.training.trainer`); ``scalers``: those
    of a resumed run (None: fitted on the training rows)."""

    name = NAME

    def __init__(
        self, cfg: ForecastConfig, series: TimeSeries, scalers: Scalers | None = None
    ) -> None:
        cfg.check(series)
        self.cfg, self.series = cfg, series
        n_train = len(series) - int(round(cfg.val_fraction * len(series)))
        self.scalers = scalers or Scalers.fit(series[:n_train], cfg.log)
        inputs = self.scalers.inputs(series, cfg.calendar)
        self.train = self._windows(inputs[:n_train])
        cut = max(0, n_train - self._context())
        self.valid = self._windows(inputs[cut:]) if n_train < len(series) else self.train
        self.steps_per_epoch = max(1, math.ceil(len(self.train[0]) / cfg.batch_size))

    def _context(self) -> int:
        """Rows before the first target a validation window reads."""
        cfg = self.cfg
        return cfg.input_chunk_length + (cfg.output_chunk_length - 1) * (cfg.mode != "direct")

    def _windows(self, inputs: np.ndarray) -> tuple[Tensor, Tensor]:
        """Training pairs: direct X (N, L_in, F), Y (N, L_out, C); autoregressive X (N, L - 1,
        F), Y (N, L - 1, C) with L = L_in + L_out and Y the targets one step after X."""
        cfg, c = self.cfg, len(self.cfg.targets)
        check_window(len(inputs), cfg.input_chunk_length, cfg.output_chunk_length)
        if cfg.mode == "direct":
            x, y = make_windows(inputs, inputs[:, :c], cfg.input_chunk_length,
                                cfg.output_chunk_length)  # fmt: skip
        else:
            seq = sliding(inputs, cfg.input_chunk_length + cfg.output_chunk_length)
            x, y = seq[:, :-1], seq[:, 1:, :c]
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def save_assets(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / SCALER, self.scalers.to_dict())
        atomic_write_json(run_dir / HISTORY, history_to_dict(self.series, self.cfg))

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def train_batch(self, step: int, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = self.train
        pick = torch.randint(0, len(x), (self.cfg.batch_size,), generator=rng)
        return x[pick], y[pick]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor], state: Any) -> StepOutput:
        x, y = batch
        outs = model.member_outputs(x, self.cfg.input_chunk_length)
        loss = sum(output_loss(mean, scale, y) for mean, scale in outs) / len(outs)
        return StepOutput(loss, tokens=y.numel())

    def evaluate(self, model: nn.Module, full: bool) -> dict[str, float]:
        x, y = self.valid
        mean, scale = model(x, self.cfg.input_chunk_length)
        mae = float((mean - y).abs().mean())
        return {"loss": float(output_loss(mean, scale, y)), "mae": mae}


def output_loss(mean: Tensor, scale: Tensor | None, y: Tensor) -> Tensor:
    """Gaussian NLL (nats per value), or mean squared error without a scale: (B, L, C) each."""
    if scale is None:
        return nn.functional.mse_loss(mean, y)
    return GaussianHead.loss(mean, scale, y)


def history_to_dict(series: TimeSeries, cfg: ForecastConfig) -> dict[str, Any]:
    """The last L_in rows of ``series`` as JSON (timestamps as ISO strings)."""
    tail = series[len(series) - cfg.input_chunk_length :]
    cov = None if tail.covariates is None else tail.covariates.tolist()
    return {"index": [t.isoformat() for t in tail.index], "values": tail.values.tolist(),
            "covariates": cov}  # fmt: skip


def history_from_dict(data: Any, cfg: ForecastConfig) -> TimeSeries:
    """Inverse of `history_to_dict`: the stored rows as a `TimeSeries` (RnnkitError if
    ``data`` is not of that shape)."""
    try:
        cov = data.get("covariates")
        values = np.asarray(data["values"], np.float64)
        cov = None if cov is None else np.asarray(cov, np.float64)
        return TimeSeries(pd.DatetimeIndex(data["index"]), values, list(cfg.targets), cfg.freq,
                          cov, list(cfg.covariates))  # fmt: skip
    except RnnkitError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as err:
        raise RnnkitError(
            f"a run's history is damaged ({shorten(str(err))}); train again"
        ) from None


#: the time column of a CSV or DataFrame given to a run fitted in Python (without ``time_col``)
DEFAULT_TIME_COL = "time"


def read_series(cfg: ForecastConfig, regular: bool = True) -> tuple[TimeSeries, ForecastConfig]:
    """The series of ``cfg``'s CSV (log returns with ``returns``; ``regular`` see `read_csv`),
    and ``cfg`` with its ``columns`` filled in (the target columns read)."""
    if not cfg.csv:
        raise RnnkitError("no data to train on: give --csv FILE (or csv = ... in --config)")
    if not cfg.time_col:
        raise RnnkitError("name the CSV's time column: --time-col NAME (or time_col = ...)")
    series = read_csv(cfg.csv, cfg.time_col, cfg.columns or None, cfg.covariates, cfg.fill,
                      regular)  # fmt: skip
    cfg = replace(cfg, columns=list(series.columns))
    return (log_returns(series) if cfg.returns else series), cfg


def fitted_config(cfg: ForecastConfig, series: TimeSeries) -> ForecastConfig:
    """``cfg`` with the model's targets, covariates and frequency taken from ``series``, and
    the settings left to the data chosen (`data_defaults`)."""
    cfg = ForecastConfig.from_dict({**asdict(cfg), "targets": list(series.columns),
                                    "covariates": list(series.covariate_names),
                                    "freq": series.freq})  # fmt: skip
    return data_defaults(cfg, series)


def data_defaults(cfg: ForecastConfig, series: TimeSeries) -> ForecastConfig:
    """``cfg`` with its settings left to the data filled in from ``series`` (its training
    rows): the season (from the frequency), the log (a positive series), the input length
    (`auto_input_length`) and the ensemble's size."""
    season = cfg.season or season_of(series.freq)
    log = bool((series.values > 0).all()) if cfg.log is None else cfg.log
    length = cfg.input_chunk_length or auto_input_length(len(series), season,
                                                         cfg.output_chunk_length)  # fmt: skip
    members = cfg.members or (5 if cfg.mode == "direct" else 1)
    return replace(cfg, season=season, log=log, input_chunk_length=length, members=members)


def auto_input_length(length: int, season: int, horizon: int) -> int:
    """Steps read by default: three seasons or two horizons (the larger), at most a third of
    the ``length`` rows left after a horizon (so that windows stay many), at least 2."""
    want = max(3 * season, 2 * horizon)
    return max(2, min(want, (length - horizon) // 3))


def series_input(
    item: Any,
    time_col: str,
    columns: Sequence[str],
    covariates: Sequence[str] = (),
    fill: str = "refuse",
    regular: bool = True,
    returns: bool = False,
    what: str = "a history",
) -> TimeSeries:
    """One input of a predictor as a `TimeSeries`: a `TimeSeries` as it is; a CSV path or a
    DataFrame read as the run read its CSV: its ``time_col`` (a run without one: the column
    "time"; a DataFrame may instead have a DatetimeIndex), target ``columns`` and
    ``covariates`` (other columns are ignored), ``fill``, ``regular``, log ``returns``."""
    if isinstance(item, TimeSeries):
        return item
    time_col = time_col or DEFAULT_TIME_COL
    if isinstance(item, (str, os.PathLike)):
        series = read_csv(item, time_col, list(columns), list(covariates), fill, regular)
    elif isinstance(item, pd.DataFrame):
        if time_col not in item.columns and isinstance(item.index, pd.DatetimeIndex):
            item = item.rename_axis(time_col).reset_index()
        series = from_frame(item, time_col, list(columns), list(covariates), fill,
                            "the DataFrame", regular)  # fmt: skip
    else:
        raise RnnkitError(f"{what} is a CSV path, a DataFrame or a TimeSeries, got "
                          f"{type(item).__name__}")  # fmt: skip
    return log_returns(series) if returns else series


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch threads (None: unchanged), then restore the setting."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def run_directory(run_dir: str | Path | None):
    """``run_dir`` itself, or a temporary directory removed afterwards (None)."""
    if run_dir is not None:
        yield Path(run_dir)
        return
    with tempfile.TemporaryDirectory(prefix="rnnkit-forecast-") as tmp:
        yield Path(tmp) / "run"


#: training defaults of a `Forecaster` (small series: about 10-30 s on a 2-core CPU)
DEFAULT_TRAIN: dict[str, Any] = {
    "lr": 3e-3, "warmup_steps": 50, "max_steps": 1500, "eval_every": 500, "log_every": 100,
    "progress": "none",
}  # fmt: skip
#: a forecaster's budget over `DEFAULT_TRAIN` (the anomaly detector keeps its own): 80 epochs
#: of the training windows, at most ``max_steps`` (a small series overfits in more)
BUDGET: dict[str, Any] = {"max_epochs": 80, "warmup_steps": 20}


#: the interval level the conformal correction aims at, and the origins it reads at most
CALIBRATION_LEVEL, CALIBRATION_ORIGINS = 0.9, 4
#: the fewest training windows the calibration's first fit keeps
MIN_WINDOWS = 8


def calibration_origins(length: int, input_length: int, horizon: int) -> list[int]:
    """The origins the calibration forecasts: up to `CALIBRATION_ORIGINS`, ``horizon // 2``
    apart, the last ``horizon`` steps before the end, the first leaving `MIN_WINDOWS` training
    windows before it. RnnkitError if not even one fits (then train with --no-calibrate)."""
    every, fewest = max(1, horizon // 2), input_length + horizon + MIN_WINDOWS - 1
    count = CALIBRATION_ORIGINS
    while count and length - horizon - (count - 1) * every < fewest:
        count -= 1
    if not count:
        raise RnnkitError(
            f"the series ({length} steps) is too short to calibrate the intervals: that needs "
            f"{fewest + horizon} steps with input_chunk_length {input_length} and horizon "
            f"{horizon}; give --no-calibrate (calibrate=False) or a shorter input_chunk_length"
        )
    last = length - horizon
    return [last - k * every for k in reversed(range(count))]


class Forecaster:
    """An RNN forecaster: ``fit(series)``, then ``predict(n)``; trained by the generic trainer.

    Args:
        train: training settings, a `TrainConfig` or a dict of its fields over `DEFAULT_TRAIN`
            and `BUDGET`.
        threads: torch threads while fitting and forecasting (None: leave torch's setting). The
            default 1 is fastest for these small networks: on 2 busy cores, 2 threads made a
            training step 30 times slower than 1.
        **settings: `ForecastConfig` fields (input_chunk_length, output_chunk_length, mode,
            likelihood, cell, hidden_size, num_layers, dropout, detrend, log, calendar, ...).

    Example::

        series = read_csv("airline-passengers.csv", "Month", ["Passengers"])
        model = Forecaster(input_chunk_length=24, output_chunk_length=6, log=True)
        model.fit(series[:120])
        model.predict(6)          # DataFrame: Passengers, Passengers_lower, Passengers_upper
    """

    def __init__(
        self,
        train: TrainConfig | dict[str, Any] | None = None,
        threads: int | None = 1,
        **settings,
    ) -> None:
        self.cfg = ForecastConfig.from_dict(settings)
        self.threads = threads
        if not isinstance(train, TrainConfig):
            train = TrainConfig.from_dict({**DEFAULT_TRAIN, **BUDGET, **(train or {})})
        self.train_config = train
        self.model: ForecastNet | None = None
        self.scalers: Scalers | None = None
        self.history: TimeSeries | None = None
        self.result: FitResult | None = None
        self.calibration: dict[str, float] | None = None

    def fit(self, series: TimeSeries, run_dir: str | Path | None = None) -> Forecaster:
        """Train on ``series`` into ``run_dir`` (None: a temporary directory). Returns self.

        With ``calibrate`` (and a likelihood) a first fit on ``series`` without its end
        forecasts the last origins (`calibration_origins`); ``interval_scale`` becomes the
        `CALIBRATION_LEVEL` quantile of those errors in units of the interval's half-width
        (in the model's scaled units: the factor that makes that interval cover that share of
        them; split conformal, the quantile interpolated rather than its conservative
        finite-sample version, which with a few dozen values is their maximum), at least 1:
        the correction widens an over-confident model's intervals and never narrows them (a
        calm stretch before the end made narrowed intervals cover 65-75% after it); the final
        fit's intervals use it. The figures are in ``calibration``."""
        cfg = fitted_config(self.cfg, series)
        cfg.check(series)
        if cfg.calibrate and cfg.likelihood is not None:
            cfg = replace(cfg, interval_scale=self.conformal_scale(cfg, series))
        task = ForecastTask(cfg, series)
        with run_directory(run_dir) as path, torch_threads(self.threads):
            trainer = Trainer(task, self.train_config, path)
            self.result = trainer.fit()
        self.cfg, self.scalers, self.history = cfg, task.scalers, series
        self.model = trainer.model.eval()
        return self

    def conformal_scale(self, cfg: ForecastConfig, series: TimeSeries) -> float:
        """The interval scale that makes the first fit's intervals cover ``CALIBRATION_LEVEL``
        of the values it forecasts at the last origins (see `fit`); sets ``calibration``."""
        origins = calibration_origins(len(series), cfg.input_chunk_length,
                                      cfg.output_chunk_length)  # fmt: skip
        h = cfg.output_chunk_length
        first = Forecaster(
            self.train_config,
            self.threads,
            **asdict(replace(cfg, calibrate=False, interval_scale=1.0)),
        )
        first.fit(series[: origins[0]])
        out = first.forecast_at(series, origins, h, CALIBRATION_LEVEL)
        scaled = first.scalers.targets.transform
        y = np.stack([scaled(series.values[p : p + h]) for p in origins])
        mean, lower, upper = (scaled(out[k]) for k in ("mean", "lower", "upper"))
        ratio = np.where(y >= mean, (y - mean) / (upper - mean), (mean - y) / (mean - lower))
        quantile = float(np.quantile(ratio, CALIBRATION_LEVEL))
        factor = max(1.0, quantile)  # widen an over-confident model, never narrow its own
        self.calibration = {"origins": len(origins), "values": ratio.size,
                            "coverage_before": float(np.mean(ratio <= 1.0)),
                            "quantile": quantile, "interval_scale": factor}  # fmt: skip
        return factor

    @classmethod
    def load(
        cls, run_dir: str | Path, checkpoint: str = "last", threads: int | None = 1
    ) -> Forecaster:
        """The forecaster of a forecast run (written by `fit`, `train` or `run`): its
        ``checkpoint`` weights, "last" or "best"."""
        run_dir = Path(run_dir)
        config = ckpt.read_config(run_dir)
        if config.get("task") != NAME:
            raise RnnkitError(f"{run_dir} is a {config.get('task')!r} run, not a forecast run")
        cfg = ForecastConfig.from_dict(config["task_config"])
        return cls.from_run(run_dir, cfg, config["train"], checkpoint, threads)

    @classmethod
    def from_run(
        cls,
        run_dir: Path,
        cfg: ForecastConfig,
        train: dict[str, Any],
        checkpoint: str = "last",
        threads: int | None = 1,
    ) -> Forecaster:
        """The forecaster of ``cfg`` with the scalers, history and weights of ``run_dir``."""
        self = cls(train=train, threads=threads, **asdict(cfg))
        self.scalers = Scalers.from_dict(read_json(run_dir / SCALER))
        self.history = history_from_dict(read_json(run_dir / HISTORY), self.cfg)
        self.model = ckpt.load_trained(lambda: build_model(self.cfg), run_dir, checkpoint)
        return self

    def predict(self, n: int, series: TimeSeries | None = None, level: float = 0.9) -> pd.DataFrame:
        """The ``n`` steps after ``series`` (default: the series it was fitted on); in direct
        mode ``n`` may exceed ``output_chunk_length`` (see `forecast_windows`).

        Returns a DataFrame indexed by the future timestamps with, per target, the point
        forecast and (Gaussian likelihood) the bounds ``<col>_lower``/``<col>_upper`` of the
        central ``level`` prediction interval.
        """
        self._fitted()
        series = self.history if series is None else series
        out = self.forecast_at(series, [len(series)], n, level)
        columns = {}
        for i, name in enumerate(self.cfg.targets):
            columns[name] = out["mean"][0, :, i]
            if "lower" in out:
                columns[f"{name}_lower"] = out["lower"][0, :, i]
                columns[f"{name}_upper"] = out["upper"][0, :, i]
        return pd.DataFrame(columns, index=series.future_index(n))

    def forecast_at(
        self, series: TimeSeries, ends: list[int], n: int, level: float = 0.9, samples: int = 200
    ) -> dict[str, np.ndarray]:
        """Forecasts of ``n`` steps from B origins at once, in the series' units.

        Origin b reads rows ``ends[b] - L_in .. ends[b] - 1`` and forecasts rows ``ends[b] ..
        ends[b] + n - 1``. Returns "mean" (B, n, C), and with a Gaussian likelihood "lower" and
        "upper" (B, n, C): the central ``level`` interval (autoregressive, and direct beyond
        ``output_chunk_length``: quantiles of ``samples`` sampled paths, drawn with a fixed
        seed; see `forecast_windows`).
        """
        self._fitted()
        self._check_request(series, ends, n)
        futures = [_after(series, e, n) for e in ends]
        return self.forecast_windows(self.window_inputs(series, ends), futures, n, level, samples)

    def window_inputs(self, series: TimeSeries, ends: Sequence[int]) -> Tensor:
        """The network's input windows of ``series``, window b the L_in rows before row
        ``ends[b]``: (B, L_in, F) scaled, with the calendar."""
        inputs = self.scalers.inputs(series, self.cfg.calendar)
        rows = np.asarray(ends, dtype=np.int64)[:, None] + np.arange(
            -self.cfg.input_chunk_length, 0
        )
        return torch.tensor(inputs[rows], dtype=torch.float32)

    def forecast_windows(
        self,
        x: Tensor,
        futures: Sequence[pd.DatetimeIndex],
        n: int,
        level: float = 0.9,
        samples: int = 200,
        seed_each: bool = False,
    ) -> dict[str, np.ndarray]:
        """`forecast_at` of input windows ``x`` (B, L_in, F) (`window_inputs`); ``futures``
        the n timestamps after each window (the calendar of the steps fed back). Sample paths
        come from one generator seeded 0 (``seed_each``: one per window, so that a window's
        interval does not depend on the others in the batch).

        Direct mode within ``output_chunk_length`` (n <= L_out): one forward pass, the
        Gaussian's interval. Beyond it, chunk by chunk (`ForecastNet.generate`): ``samples``
        paths of the first chunk are drawn from the predictive Gaussian, each appended to its
        own copy of the window (with the calendar of those steps), the next chunk forecast for
        all paths in one batch and drawn again, until n steps; the interval is the paths'
        quantiles (so it widens with the horizon, as in the autoregressive mode) and the mean
        the chunks chained on the forecast means (its first chunk is the plain forecast).
        Without a likelihood the chunks are chained on the point forecast itself (no
        interval)."""
        model = self._fitted()
        with torch.inference_mode(), torch_threads(self.threads):
            if self.cfg.mode == "direct" and n <= self.cfg.output_chunk_length:
                mean, scale = (t[:, :n] if t is not None else None for t in model(x))
                bounds = None if scale is None else GaussianHead.interval(mean, scale, level)
            else:
                mean, bounds = self._generate(x, futures, level, samples, seed_each)
        out = {"mean": mean.numpy()}
        if bounds is not None:
            out["lower"], out["upper"] = (b.numpy() for b in bounds)
        return {k: self.scalers.targets.inverse(v.astype(np.float64)) for k, v in out.items()}

    def _generate(
        self,
        x: Tensor,
        futures: Sequence[pd.DatetimeIndex],
        level: float,
        samples: int,
        seed_each: bool,
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """The mean path fed back (`ForecastNet.generate`: autoregressive, or direct beyond
        ``output_chunk_length``), and quantiles of sampled paths (Gaussian)."""
        future = np.stack([calendar_features(f, self.cfg.calendar) for f in futures])
        future = torch.tensor(future, dtype=torch.float32)  # (B, n, 2 * calendar)
        mean = self.model.generate(x, future)
        if self.cfg.likelihood is None:
            return mean, None
        if not 0.0 < level < 1.0:
            raise RnnkitError(f"the interval level must be in (0, 1), got {level}")
        if seed_each:
            paths = torch.cat([self.model.generate(x[b : b + 1], future[b : b + 1], samples,
                                                   torch.Generator().manual_seed(0))
                               for b in range(len(x))], dim=1)  # fmt: skip
        else:
            paths = self.model.generate(x, future, samples, torch.Generator().manual_seed(0))
        q = torch.tensor([0.5 - level / 2, 0.5 + level / 2])
        lower, upper = torch.quantile(paths, q, dim=0)
        return mean, (lower, upper)

    def _fitted(self) -> ForecastNet:
        if self.model is None or self.scalers is None:
            raise RnnkitError("this Forecaster is not trained: call fit(series) or load(run_dir)")
        return self.model

    def _check_request(self, series: TimeSeries, ends: list[int], n: int) -> None:
        cfg = self.cfg
        if list(series.columns) != cfg.targets or list(series.covariate_names) != cfg.covariates:
            raise RnnkitError(
                f"the series has columns {series.columns} + covariates {series.covariate_names}; "
                f"the model was trained on {cfg.targets} + {cfg.covariates}"
            )
        if n < 1:
            raise RnnkitError(f"the horizon must be at least 1 step, got {n}")
        if cfg.mode == "direct" and n > cfg.output_chunk_length and cfg.covariates:
            raise RnnkitError(
                f"horizon {n} is longer than the model's output_chunk_length "
                f"{cfg.output_chunk_length}, and forecasting chunk after chunk needs the future "
                f"values of the covariates {cfg.covariates}; train with --output-chunk-length "
                f"{n} or without covariates"
            )
        if min(ends) < cfg.input_chunk_length or max(ends) > len(series):
            raise RnnkitError(
                f"a forecast needs {cfg.input_chunk_length} steps of history "
                f"(input_chunk_length) within the {len(series)} steps of the series"
            )


def _after(series: TimeSeries, end: int, n: int) -> pd.DatetimeIndex:
    """The ``n`` timestamps from row ``end`` on (past the end: continued by the frequency)."""
    return pd.date_range(series.index[end - 1], periods=n + 1, freq=series.freq)[1:]


def resumed_scalers(resume: str | None, csv: str) -> Scalers | None:
    """The scalers of the run ``resume`` (None: a new run, whose scalers are fitted); a run
    fitted in Python, without a ``csv``, cannot be resumed (RnnkitError)."""
    if resume is None:
        return None
    if not csv:
        raise RnnkitError(f"{resume} was fitted on a series in Python, not on a CSV; it cannot "
                          "be resumed")  # fmt: skip
    return Scalers.from_dict(read_json(Path(resume) / SCALER))
