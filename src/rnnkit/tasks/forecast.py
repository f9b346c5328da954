"""Forecasting as a task: ``rnnkit forecast`` (train, forecast, plot, backtest in one go),
``rnnkit train forecast`` (a CSV named in the settings, resumable) and a trained run as a
`ForecastPredictor` (``rnnkit.load(run)``), which forecasts after its own series or any history.
The model is `rnnkit.forecasting.forecaster.Forecaster`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rnnkit.data.timeseries import (
    TimeSeries,
)
from rnnkit.diagnostics.timeseries_plots import plot_backtest, plot_forecast
from rnnkit.errors import RnnkitError
from rnnkit.evaluation.backtest import backtest, rolling_origins
from rnnkit.forecasting.forecaster import (
    BUDGET,
    DEFAULT_TRAIN,
    NAME,
    ForecastConfig,
    Forecaster,
    ForecastTask,
    fitted_config,
    read_series,
    resumed_scalers,
    series_input,
    torch_threads,
)
from rnnkit.predictor import Predictor, Result, check_inputs
from rnnkit.tasks.common import format_fit, train_task
from rnnkit.tasks.spec import TaskSpec
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.trainer import FitResult, TrainConfig

# --- the command line's entry: `rnnkit forecast` --------------------------------------------


@dataclass
class ForecastReport:
    """What `run` produced: the series read, the forecast, the backtest (if asked), the files."""

    series: TimeSeries
    forecast: pd.DataFrame
    backtest: Any
    files: list[Path]


def run(
    csv: str,
    time_col: str,
    targets: list[str],
    horizon: int,
    out: str | Path,
    covariates: list[str] = (),
    fill: str = "refuse",
    returns: bool = False,
    backtest_start: str | None = None,
    backtest_every: int = 1,
    season: int | None = None,
    level: float = 0.9,
    train: dict[str, Any] | None = None,
    **settings,
) -> ForecastReport:
    """Read ``csv``, train on all of it into the run ``out``, forecast ``horizon`` steps
    (``forecast.csv``, ``forecast.png``); with ``backtest_start`` also backtest beside the
    baselines (``backtest.csv``, ``backtest.png``). ``returns``: forecast log returns.
    ``season``: the seasonal period of the network's defaults, the classical models and the
    MASE scale (None: from the frequency)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RnnkitError(f"{out} exists and is not empty; choose another output directory (--out)")
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    settings.setdefault("output_chunk_length", horizon)
    if season is not None:
        settings["season"] = season
    data = {"csv": str(Path(csv).expanduser().resolve()), "time_col": time_col,
            "columns": list(targets), "covariates": list(covariates), "fill": fill,
            "returns": returns}  # fmt: skip
    series, cfg = read_series(ForecastConfig.from_dict({**settings, **data}))
    settings = asdict(cfg)
    if backtest_start is not None:  # a bad start fails now, not after training
        rolling_origins(series, backtest_start, horizon, backtest_every)
    model = Forecaster(train, **settings).fit(series, out)
    forecast = model.predict(horizon, level=level)
    files = [out / "forecast.csv", out / "forecast.png"]
    forecast.to_csv(files[0], index_label="time")
    plot_forecast(series, forecast, files[1], max(120, 10 * horizon), Path(csv).stem)
    result = None
    if backtest_start is not None:
        m = model.cfg.season
        result = backtest(series, Forecaster(train, **settings), backtest_start, horizon,
                          backtest_every, m, returns, level)  # fmt: skip
        files += [out / "backtest.csv", out / "backtest.png"]
        result.table.to_csv(files[2], index_label="model")
        plot_backtest(series, result, files[3], f"{Path(csv).stem}: rolling-origin backtest")
    return ForecastReport(series, forecast, result, files)


def format_report(report: ForecastReport) -> str:
    """The text `rnnkit forecast` prints: the data read, the forecast, the backtest table."""
    r = report.series.report
    lines = [
        f"data: {r['rows']} rows, {r['start']} .. {r['end']}, frequency {r['freq']}, "
        f"{r['gaps']} gap(s), missing {r['missing'] or 'none'} (fill: {r['fill']})",
        "",
        "forecast:",
        report.forecast.to_string(float_format=lambda v: f"{v:.4g}"),
    ]
    if report.backtest is not None:
        b = report.backtest
        lines += ["", f"backtest: {len(b.origins)} origins, horizon {b.actual.shape[1]}:",
                  b.table.drop(columns="note").to_string(float_format=lambda v: f"{v:.4g}",
                                                         na_rep="")]  # fmt: skip
        lines += [f"  note: {name}: {note}" for name, note in b.table["note"].items() if note]
    lines += ["", "wrote " + ", ".join(str(f) for f in report.files)]
    return "\n".join(lines)


# --- `rnnkit train forecast`, and a trained run as a `Predictor` --------------------------------

#: training defaults of `rnnkit train forecast`: a `Forecaster`'s, with a progress display
TRAIN_DEFAULTS = TrainConfig.from_dict({**DEFAULT_TRAIN, **BUDGET, "progress": "auto"})


def train(
    flags: dict[str, Any],
    config_file: str | None = None,
    out: str | None = None,
    resume: str | None = None,
    threads: int | None = 1,
) -> FitResult:
    """Train (or resume) a forecaster on a CSV from command-line ``flags`` (None: not given;
    named like the `ForecastConfig` fields and `rnnkit.training.options.TRAIN_KEYS`: the data
    is ``csv``, ``time_col``, ``columns``, ``covariates``, ``fill``, ``returns``), a TOML
    ``config_file`` and the defaults. A resumed run keeps its scalers. ``threads``: torch
    threads while training (see `Forecaster`)."""

    def make_task(cfg: ForecastConfig) -> ForecastTask:
        saved = resumed_scalers(resume, cfg.csv)
        series, cfg = read_series(cfg)
        cfg = fitted_config(cfg, series)
        if resume is None and cfg.calibrate and cfg.likelihood is not None:
            cfg.check(series)
            scale = Forecaster(threads=threads).conformal_scale(cfg, series)
            cfg = replace(cfg, interval_scale=scale)
        return ForecastTask(cfg, series, saved)

    with torch_threads(threads):
        return train_task(NAME, ForecastConfig, make_task, TRAIN_DEFAULTS, flags, config_file,
                          out, resume)  # fmt: skip


@dataclass
class Forecast(Result):
    """The n steps after a history.

    ``times`` (n,): the steps' timestamps, ISO strings. ``mean``: per target column, the n
    point forecasts ({column: (n,)}; the mean path in the autoregressive mode). ``lower``,
    ``upper``: per target column, the n bounds of the central ``level`` prediction interval
    (None for a run trained without a likelihood, whose ``level`` is None too).
    """

    times: list[str]
    mean: dict[str, list[float]]
    lower: dict[str, list[float]] | None
    upper: dict[str, list[float]] | None
    level: float | None

    def rows(self) -> list[dict[str, Any]]:
        """One row per step and target column: time, column, mean, lower, upper, level."""
        d = self.to_dict()
        lower, upper = d["lower"] or {}, d["upper"] or {}
        return [
            {"time": time, "column": column, "mean": values[k],
             "lower": lower[column][k] if lower else None,
             "upper": upper[column][k] if upper else None, "level": d["level"]}
            for column, values in d["mean"].items() for k, time in enumerate(d["times"])
        ]  # fmt: skip

    def summary(self) -> str:
        """A table: a line per step, a column per target (with its interval)."""
        table = pd.DataFrame({"time": self.times})
        for column, values in self.mean.items():
            table[column] = values
            if self.lower is not None and self.upper is not None:
                table[f"{column}_lower"] = self.lower[column]
                table[f"{column}_upper"] = self.upper[column]
        interval = "" if self.level is None else f" ({self.level:.0%} intervals)"
        text = table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
        return f"{text}\n{len(self.times)} steps{interval}"


class ForecastPredictor(Predictor):
    """A trained forecast run: ``forecast(horizon, history)`` -> a `Forecast` of the steps after
    ``history`` (default: the end of the run's own series); ``predict([history, ...])`` the
    run's horizon (``output_chunk_length``) after each, as one batch. Any horizon can be asked
    (direct mode: beyond ``output_chunk_length`` chunk by chunk, see
    `Forecaster.forecast_windows`; not for a run with covariates).

    A history is a CSV path or a DataFrame with the run's time column (a DataFrame may carry
    the times as its DatetimeIndex instead), target columns and covariates, read as the run
    read its CSV (gaps, log returns), or a `TimeSeries` of the run's targets; at least
    ``input_chunk_length`` rows at the run's frequency, of which the last L_in are read.
    """

    task = NAME
    takes = "a history (a CSV path, a DataFrame or a TimeSeries)"

    def __init__(self, run_dir: str | Path, checkpoint: str = "best") -> None:
        self.forecaster = Forecaster.load(run_dir, checkpoint, threads=None)
        super().__init__(run_dir, ckpt.read_config(run_dir), checkpoint)
        self.cfg = self.forecaster.cfg

    @property
    def horizon(self) -> int:
        """The steps ``predict`` forecasts: the run's ``output_chunk_length``."""
        return self.cfg.output_chunk_length

    def forecast(
        self, horizon: int | None = None, history: Any = None, level: float = 0.9
    ) -> Forecast:
        """The ``horizon`` steps (None: the run's) after ``history`` (None: the run's own
        series), with central ``level`` intervals."""
        return self._forecasts([history], horizon, level)[0]

    def predict(
        self, inputs: Sequence[Any], horizon: int | None = None, level: float = 0.9
    ) -> list[Forecast]:
        """One `Forecast` of ``horizon`` steps (None: the run's) per history (None: the run's
        own series), with central ``level`` intervals."""
        return self._forecasts(check_inputs(inputs, self.takes), horizon, level)

    def graph(self):
        """What `rnnkit export` records: the network over scaled windows
        (`rnnkit.tasks.forecast_export`)."""
        from rnnkit.tasks.forecast_export import export_graph

        return export_graph(self.forecaster)

    def parse(self, args: Sequence[str]) -> list[str | None]:
        """Command-line arguments are CSV paths; none: the run's own series."""
        return [str(a) for a in args] or [None]

    def _forecasts(self, histories: list[Any], horizon: int | None, level: float) -> list[Forecast]:
        n = self.horizon if horizon is None else horizon
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise RnnkitError(f"the horizon is a number of steps, got {n!r}")
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
            raise RnnkitError(f"the interval level must be in (0, 1), got {level!r}")
        series = [self._history(h) for h in histories]
        for s in series:
            self.forecaster._check_request(s, [len(s)], int(n))
        x = torch.cat([self.forecaster.window_inputs(s, [len(s)]) for s in series])
        futures = [s.future_index(int(n)) for s in series]
        out = self.forecaster.forecast_windows(x, futures, int(n), level, seed_each=True)
        return [self._result(out, b, futures[b], level) for b in range(len(series))]

    def _history(self, item: Any) -> TimeSeries:
        """``item`` (None: the run's own history) as a `TimeSeries` at the run's frequency."""
        if item is None:
            return self.forecaster.history
        cfg = self.cfg
        series = series_input(item, cfg.time_col, cfg.columns or cfg.targets, cfg.covariates,
                              cfg.fill, returns=cfg.returns, what=self.takes)  # fmt: skip
        if series.freq != cfg.freq:
            raise RnnkitError(f"the history's steps are {series.freq}, the run's are {cfg.freq}; "
                              "give a history at the run's frequency")  # fmt: skip
        return series

    def _result(
        self, out: dict[str, np.ndarray], b: int, times: pd.DatetimeIndex, level: float
    ) -> Forecast:
        def per_column(key: str) -> dict[str, list[float]] | None:
            if key not in out:
                return None
            return {c: out[key][b, :, i].tolist() for i, c in enumerate(self.cfg.targets)}

        interval = "lower" in out
        return Forecast([t.isoformat() for t in times], per_column("mean"), per_column("lower"),
                        per_column("upper"), float(level) if interval else None)  # fmt: skip


def load_predictor(run_dir: str | Path, checkpoint: str = "best") -> ForecastPredictor:
    """The `ForecastPredictor` of a run (`rnnkit.load`)."""
    return ForecastPredictor(run_dir, checkpoint)


SPEC = TaskSpec(
    NAME,
    "",
    ForecastConfig,
    TRAIN_DEFAULTS,
    train,
    format_fit,
    load_predictor,
    internal=("targets", "freq", "interval_scale"),
    examples=(
        "rnnkit data fetch airline-passengers",
        "rnnkit train forecast --csv airline-passengers --time-col Month --target Passengers \\",
        "  --log --mode autoregressive --calendar month --out runs/airline",
        "rnnkit predict runs/airline --horizon 12 --json",
    ),
)
