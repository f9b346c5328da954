"""Backtesting: rolling-origin evaluation of the RNN beside classical peers, in one table.

Shape legend: T time steps, C targets, n horizon, B origins.

Protocol: origins are the positions ``p`` (the first forecast step) from ``start`` every
``every`` steps while ``p + n`` fits in the series. The RNN is trained once on the rows before
the first origin (no retraining; at each origin it reads the real history before it). The
classical models see the same history at each origin and are refitted at every origin:
naive and seasonal naive, statsmodels' Holt-Winters ETS, and (with the ``forecast`` extra
installed) Nixtla's statsforecast AutoETS, AutoARIMA and AutoTheta. A model that cannot run
(no season, not installed, failed to fit at some origin) keeps its row, without figures, and
says why in the ``note`` column. Every metric averages over all origins, steps and targets.

Point metrics (y actual, f forecast, e = y - f):
    MAE   mean |e|                 RMSE  sqrt(mean e^2)
    MAPE  100 mean |e| / |y|       (undefined, NaN, if some y is 0)
    sMAPE 200 mean |e| / (|y| + |f|)   (0..200, as in M4 and Darts)
    MASE  MAE / s,  s = mean |y_t - y_{t-m}| over the training rows (m the season; 1: naive)
Interval metrics, for the models that give intervals (central intervals [l, u] at level
``level``, alpha = 1 - level; the RNN's from its predictive distribution, statsforecast's its
own, naive and seasonal naive Gaussian ones from their in-sample residuals):
    coverage_90  share of the actual values inside the interval at the nominal level (90%)
    MSIS  mean (u - l + 2/alpha (l - y) [y < l] + 2/alpha (y - u) [y > u]) / s   (M4's mean
          scaled interval score, Makridakis et al. 2020, with the MASE scale s)
    QL    mean over the quantiles q in Q of mean 2 rho_q(y - f_q) / s, rho_q(u) = u (q - [u < 0])
          the pinball loss, Q = {0.5} and the bounds (1 -/+ l) / 2 of the intervals at the
          levels l in {0.5, 0.8, level}; f_0.5 is the point forecast. With the median alone QL
          is MASE; over many quantiles it tends to the scaled CRPS (CRPS = int_0^1 2 rho_q dq).
For returns (``returns=True``: a price turned into log returns) the scale s is the in-sample
error of the random walk, mean |r_t| (its forecast of a return is 0), and the table adds the
directional accuracy: the share of steps whose forecast has the sign of the return.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from rnnkit.data.timeseries import TimeSeries
from rnnkit.errors import RnnkitError


@dataclass
class Prediction:
    """One model's forecast from one history: ``mean`` (n, C), and ``bounds`` {level: (lower,
    upper)} of central intervals, each (n, C) (empty for a point forecast)."""

    mean: np.ndarray
    bounds: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


Baseline = Callable[[np.ndarray, int], np.ndarray]  # history (T, C), n -> forecast (n, C)
Model = Callable[[np.ndarray, int, tuple[float, ...]], Prediction]  # history, n, levels
STATSFORECAST = ("AutoETS", "AutoARIMA", "AutoTheta")
MAX_PEER_SEASON = 24
"""statsforecast's AutoETS is seasonal up to a period of 24 (above: non-seasonal, as in R's
forecast package); the three peers share that cap."""


# --- metrics ---------------------------------------------------------------------------------


def mae(y: np.ndarray, f: np.ndarray) -> float:
    return float(np.mean(np.abs(y - f)))


def rmse(y: np.ndarray, f: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - f) ** 2)))


def mape(y: np.ndarray, f: np.ndarray) -> float:
    """Percent; NaN when an actual value is 0."""
    if (y == 0).any():
        return float("nan")
    return float(100 * np.mean(np.abs(y - f) / np.abs(y)))


def smape(y: np.ndarray, f: np.ndarray) -> float:
    """Percent, 0..200; a step where both are 0 counts as 0."""
    denom = np.abs(y) + np.abs(f)
    ratio = np.divide(np.abs(y - f), denom, out=np.zeros_like(denom), where=denom > 0)
    return float(200 * np.mean(ratio))


def mase(y: np.ndarray, f: np.ndarray, scale: float) -> float:
    """MAE divided by ``scale`` (see `mase_scale`)."""
    return mae(y, f) / scale


def mase_scale(train: np.ndarray, season: int) -> float:
    """In-sample MAE of the seasonal naive forecast, mean |y_t - y_{t-m}|, of ``train`` (T, C)."""
    m = season if len(train) > season else 1
    scale = float(np.mean(np.abs(train[m:] - train[:-m])))
    if not scale > 0:
        raise RnnkitError("the training part is constant: MASE is undefined")
    return scale


def directional_accuracy(y: np.ndarray, f: np.ndarray) -> float:
    """Share of steps where the forecast has the actual's sign (steps with y = 0 skipped)."""
    keep = y != 0
    return float(np.mean(np.sign(f[keep]) == np.sign(y[keep])))


def coverage(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of the actual values within [lower, upper] (arrays of one shape)."""
    return float(np.mean((y >= lower) & (y <= upper)))


def msis(y: np.ndarray, lower: np.ndarray, upper: np.ndarray, scale: float, level: float) -> float:
    """M4's mean scaled interval score of central ``level`` intervals (see the module)."""
    alpha = 1.0 - level
    below = (2 / alpha) * (lower - y) * (y < lower)
    above = (2 / alpha) * (y - upper) * (y > upper)
    return float(np.mean(upper - lower + below + above)) / scale


def pinball(y: np.ndarray, f: np.ndarray, q: float) -> float:
    """Mean pinball loss of the ``q`` quantile forecast ``f``: mean rho_q(y - f)."""
    u = y - f
    return float(np.mean(np.maximum(q * u, (q - 1) * u)))


def quantile_loss(y: np.ndarray, quantiles: dict[float, np.ndarray], scale: float) -> float:
    """QL: twice the pinball loss, averaged over ``quantiles`` {q: forecast}, over ``scale``."""
    return float(np.mean([2 * pinball(y, f, q) for q, f in quantiles.items()])) / scale


def interval_levels(level: float) -> tuple[float, ...]:
    """The interval levels the quantile loss reads: 0.5, 0.8 and the nominal ``level``."""
    if not 0.0 < level < 1.0:
        raise RnnkitError(f"the interval level must be in (0, 1), got {level}")
    return tuple(sorted({0.5, 0.8, float(level)}))


def quantiles_of(
    mean: np.ndarray, bounds: dict[float, tuple[np.ndarray, np.ndarray]]
) -> dict[float, np.ndarray]:
    """{q: forecast}: the point forecast as the median, each interval's bounds as the
    (1 - l) / 2 and (1 + l) / 2 quantiles."""
    out = {0.5: mean}
    for lvl, (lower, upper) in bounds.items():
        out[round((1 - lvl) / 2, 10)], out[round((1 + lvl) / 2, 10)] = lower, upper
    return dict(sorted(out.items()))


# --- classical models --------------------------------------------------------------------------


def naive(history: np.ndarray, n: int) -> np.ndarray:
    """The last value, repeated: (T, C) -> (n, C)."""
    return np.repeat(history[-1:], n, axis=0)


def seasonal_naive(season: int) -> Baseline:
    """The value one season earlier: step h forecasts y[T - m + (h mod m)]."""

    def forecast(history: np.ndarray, n: int) -> np.ndarray:
        if len(history) < season:
            raise RnnkitError(f"the history has {len(history)} steps, less than a season")
        return history[len(history) - season + np.arange(n) % season]

    return forecast


def zero(history: np.ndarray, n: int) -> np.ndarray:
    """0 for every step: on log returns, the random walk of the price."""
    return np.zeros((n, history.shape[1]))


def mean_of(history: np.ndarray, n: int) -> np.ndarray:
    """The mean of the history (on returns: the random walk with drift)."""
    return np.repeat(history.mean(axis=0, keepdims=True), n, axis=0)


def gaussian_bounds(
    mean: np.ndarray, sd: np.ndarray, levels: tuple[float, ...]
) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """Central Gaussian intervals: mean (n, C) +- z sd (n, C) for each level."""
    z = {lvl: NormalDist().inv_cdf(0.5 + lvl / 2) for lvl in levels}
    return {lvl: (mean - z[lvl] * sd, mean + z[lvl] * sd) for lvl in levels}


def with_residual_intervals(
    rule: Baseline, lag: int, widening: Callable[[int], np.ndarray]
) -> Model:
    """``rule`` (a `Baseline`) with Gaussian intervals: sd = the RMS of its in-sample errors
    y_t - y_{t-lag} (lag 0: y_t - its forecast, the history's mean or 0) times ``widening(n)``
    (n,): sqrt(h) for naive, sqrt(floor((h - 1) / m) + 1) for seasonal naive (Hyndman and
    Athanasopoulos, FPP 5.5)."""

    def forecast(history: np.ndarray, n: int, levels: tuple[float, ...]) -> Prediction:
        mean = rule(history, n)
        residuals = history[lag:] - history[:-lag] if lag else history - rule(history, 1)
        sd = np.sqrt(np.mean(residuals**2, axis=0, keepdims=True)) * widening(n)[:, None]
        return Prediction(mean, gaussian_bounds(mean, sd, levels))

    return forecast


def ets(season: int) -> Baseline:
    """statsmodels' Holt-Winters ETS, refitted on each history: additive damped trend;
    seasonality (period ``season``, when two seasons fit) multiplicative for positive series,
    additive otherwise."""
    from statsmodels.tools.sm_exceptions import ConvergenceWarning
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    def fit_one(y: np.ndarray, n: int) -> np.ndarray:
        seasonal = None
        if season > 1 and len(y) >= 2 * season:
            seasonal = "mul" if (y > 0).all() else "add"
        model = ExponentialSmoothing(y, trend="add", damped_trend=True, seasonal=seasonal,
                                     seasonal_periods=season if seasonal else None)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            return model.fit().forecast(n)

    def forecast(history: np.ndarray, n: int) -> np.ndarray:
        return np.stack([fit_one(history[:, c], n) for c in range(history.shape[1])], axis=1)

    return forecast


def point(rule: Baseline) -> Model:
    """A point forecast as a `Model` (no interval)."""
    return lambda history, n, levels: Prediction(rule(history, n))


def statsforecast_model(name: str, season: int) -> Model:
    """Nixtla's statsforecast ``name`` (AutoETS, AutoARIMA, AutoTheta) with season ``season``,
    fitted on each history (each column alone), with its intervals. AutoARIMA approximates the
    likelihood on long or long-season series (n > 150 or m > 12), as R's auto.arima does.

    Raises:
        ImportError: statsforecast is not installed.
    """
    sf = _statsforecast()

    def fit_one(y: np.ndarray, n: int, levels: tuple[float, ...]) -> dict[str, np.ndarray]:
        if name == "AutoARIMA":
            model = sf.AutoARIMA(season_length=season, approximation=len(y) > 150 or season > 12)
        else:
            model = getattr(sf, name)(season_length=season)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.forecast(y=y, h=n, level=[_percent(lvl) for lvl in levels])
        return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}

    def forecast(history: np.ndarray, n: int, levels: tuple[float, ...]) -> Prediction:
        fits = [fit_one(history[:, c], n, levels) for c in range(history.shape[1])]
        column = lambda key: np.stack([f[key] for f in fits], axis=1)  # noqa: E731
        bounds = {
            lvl: (column(f"lo-{_percent(lvl)}"), column(f"hi-{_percent(lvl)}")) for lvl in levels
        }
        return Prediction(column("mean"), bounds)

    return forecast


def _statsforecast() -> Any:
    """``statsforecast.models``, imported leaving the process as it was: the import adds
    warning filters and sets OpenMP variables in ``os.environ`` (through threadpoolctl)."""
    environ = dict(os.environ)
    with warnings.catch_warnings():
        import statsforecast.models as sf
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)
    return sf


def _percent(level: float) -> int | float:
    """A level in percent as statsforecast names it (0.9 -> 90, 0.975 -> 97.5)."""
    value = round(100 * level, 6)
    return int(value) if value.is_integer() else value


def classical_models(
    season: int, returns: bool, freq: str = ""
) -> tuple[dict[str, Model | None], dict[str, str]]:
    """The classical models of the table by name (None: cannot run) and notes on them: naive,
    seasonal naive, ETS (for returns: the random walk, with drift, ETS without season), then
    statsforecast's peers."""
    notes: dict[str, str] = {}
    if returns:
        ones = lambda n: np.ones(n)  # noqa: E731  (independent returns: no widening)
        models: dict[str, Model | None] = {
            "random walk": with_residual_intervals(zero, 0, ones),
            "random walk + drift": with_residual_intervals(mean_of, 0, ones),
            "ETS": point(ets(1)),
        }
        notes["ETS"] = "point forecast: no interval"
        season = 1
    else:
        models, notes = _simple_models(season, freq)
    peer_season = season if season <= MAX_PEER_SEASON else 1
    for name in STATSFORECAST:
        label = f"{name} (statsforecast)"
        try:
            models[label] = statsforecast_model(name, peer_season)
        except ImportError:
            models[label] = None
            notes[label] = ("not run: statsforecast is not installed "
                            "(pip install 'rnnkit[forecast]')")  # fmt: skip
            continue
        if peer_season != season:
            notes[label] = f"non-seasonal: season {season} > {MAX_PEER_SEASON}"
    return models, notes


def _simple_models(season: int, freq: str) -> tuple[dict[str, Model | None], dict[str, str]]:
    """Naive, seasonal naive (None without a season) and statsmodels' ETS, with notes."""
    sqrt_h = lambda n: np.sqrt(np.arange(1, n + 1))  # noqa: E731
    models: dict[str, Model | None] = {"naive": with_residual_intervals(naive, 1, sqrt_h)}
    notes = {"ETS (statsmodels)": "point forecast: no interval"}
    name = f"seasonal naive (m={season})"
    if season > 1:
        widening = lambda n: np.sqrt(np.arange(n) // season + 1.0)  # noqa: E731
        models[name] = with_residual_intervals(seasonal_naive(season), season, widening)
    else:
        models[name] = None
        notes[name] = (f"not run: no season (m = 1 for the frequency {freq or '?'}); "
                       "give --season M")  # fmt: skip
    models["ETS (statsmodels)"] = point(ets(season))
    return models, notes


# --- rolling origin ----------------------------------------------------------------------------


@dataclass
class Backtest:
    """Forecasts of every model at every origin, the actual values, and the metrics table.

    ``forecasts[name]`` and ``actual`` are (B, n, C); ``origins`` (B,) row positions;
    ``bounds[name]`` {level: (lower, upper)}, each (B, n, C), for the models with intervals;
    ``notes[name]`` why a model has no figures or no interval; ``seconds[name]`` its CPU time
    (the RNN's includes training).
    """

    origins: list[int]
    actual: np.ndarray
    forecasts: dict[str, np.ndarray]
    table: pd.DataFrame
    bounds: dict[str, dict[float, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def rolling_origins(series: TimeSeries, start: str, n: int, every: int = 1) -> list[int]:
    """Positions of the first forecast step, from ``start`` every ``every`` steps (see module)."""
    if every < 1:
        raise RnnkitError(f"the step between origins must be >= 1, got {every}")
    first = series.position(start)
    origins = list(range(first, len(series) - n + 1, every))
    if first < 2 or not origins:
        raise RnnkitError(
            f"no rolling origin from {start} with horizon {n}: the series runs "
            f"{series.index[0]:%Y-%m-%d} .. {series.index[-1]:%Y-%m-%d}; choose a start inside it "
            "that leaves room for the horizon"
        )
    return origins


def backtest(
    series: TimeSeries,
    forecaster,
    start: str,
    n: int,
    every: int = 1,
    season: int = 12,
    returns: bool = False,
    level: float = 0.9,
) -> Backtest:
    """Train ``forecaster`` (a `rnnkit.forecasting.forecaster.Forecaster`; None: the classical
    models only) before ``start``, forecast ``n`` steps at every origin beside the classical
    models, and tabulate; see the module docstring."""
    origins = rolling_origins(series, start, n, every)
    levels = interval_levels(level)
    result = Backtest(origins, np.stack([series.values[p : p + n] for p in origins]), {},
                      pd.DataFrame())  # fmt: skip
    if forecaster is not None:
        _run_rnn(result, series, forecaster, n, levels)
    models, notes = classical_models(season, returns, series.freq)
    result.notes.update(notes)
    for name, model in models.items():
        if model is not None:
            _run_model(result, name, model, series.values, n, levels)
        else:
            result.forecasts[name] = np.full_like(result.actual, np.nan)
    train = series.values[: origins[0]]
    scale = float(np.mean(np.abs(train))) if returns else mase_scale(train, season)
    result.table = metrics_table(result.actual, result.forecasts, scale, returns, result.bounds,
                                 level, result.notes)  # fmt: skip
    return result


def _run_rnn(
    result: Backtest, series: TimeSeries, forecaster, n: int, levels: tuple[float, ...]
) -> None:
    """Train the RNN before the first origin, forecast at every origin (see `backtest`)."""
    name = "rnnkit " + forecaster.cfg.cell.upper()
    began = time.process_time()
    forecaster.fit(series[: result.origins[0]])
    bounds = {}
    for lvl in levels:
        out = forecaster.forecast_at(series, result.origins, n, lvl)
        if "lower" in out:
            bounds[lvl] = (out["lower"], out["upper"])
    result.forecasts[name] = out["mean"]
    if bounds:
        result.bounds[name] = bounds
    else:
        result.notes[name] = "point forecast (likelihood none): no interval"
    found = getattr(forecaster, "calibration", None)
    if found:
        result.notes[name] = (f"intervals x{found['interval_scale']:.3g} (conformal: "
                              f"{found['coverage_before']:.0%} covered on {found['values']} "
                              f"values of {found['origins']} origins before)")  # fmt: skip
    result.seconds[name] = time.process_time() - began


def _run_model(
    result: Backtest,
    name: str,
    model: Model,
    values: np.ndarray,
    n: int,
    levels: tuple[float, ...],
) -> None:
    """``model`` refitted at every origin; a failure at any origin leaves its row empty, with
    the first error in its note."""
    began, made, failed = time.process_time(), [], []
    for p in result.origins:
        try:
            made.append(model(values[:p], n, levels))
        except Exception as err:  # a classical model failing to fit is reported, not fatal
            failed.append(f"{type(err).__name__}: {err}")
    result.seconds[name] = time.process_time() - began
    if failed:
        result.forecasts[name] = np.full_like(result.actual, np.nan)
        result.notes[name] = (f"failed at {len(failed)} of {len(result.origins)} origins "
                              f"({failed[0][:120]})")  # fmt: skip
        return
    result.forecasts[name] = np.stack([m.mean for m in made])
    if made[0].bounds:
        result.bounds[name] = {lvl: tuple(np.stack([m.bounds[lvl][i] for m in made])
                                          for i in (0, 1)) for lvl in levels}  # fmt: skip


def coverage_column(level: float) -> str:
    """The table's coverage column at ``level``: "coverage_90" for 0.9."""
    return f"coverage_{100 * level:g}"


def metrics_table(
    actual: np.ndarray,
    forecasts: dict[str, np.ndarray],
    scale: float,
    returns: bool,
    bounds: dict[str, dict[float, tuple[np.ndarray, np.ndarray]]] | None = None,
    level: float = 0.9,
    notes: dict[str, str] | None = None,
) -> pd.DataFrame:
    """One row per model: MAE, RMSE, MAPE, sMAPE, MASE (+ directional accuracy for returns),
    the coverage at ``level``, MSIS and QL for the models in ``bounds``, and a ``note``."""
    bounds, notes, rows = bounds or {}, notes or {}, {}
    cov = coverage_column(level)
    for name, f in forecasts.items():
        if not np.isfinite(f).all():  # a model that did not run: its note says why
            rows[name] = {"note": notes.get(name, "no forecast")}
            continue
        row = {"MAE": mae(actual, f), "RMSE": rmse(actual, f), "MAPE": mape(actual, f),
               "sMAPE": smape(actual, f), "MASE": mase(actual, f, scale)}  # fmt: skip
        if returns:
            row["MAE / random walk"] = mae(actual, f) / mae(actual, np.zeros_like(actual))
            row["directional accuracy"] = directional_accuracy(actual, f) if f.any() else np.nan
        row[cov] = row["MSIS"] = row["QL"] = np.nan
        if name in bounds and level in bounds[name]:
            lower, upper = bounds[name][level]
            row[cov] = coverage(actual, lower, upper)
            row["MSIS"] = msis(actual, lower, upper, scale, level)
            row["QL"] = quantile_loss(actual, quantiles_of(f, bounds[name]), scale)
        row["note"] = notes.get(name, "")
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["note"] = table["note"].fillna("")
    figures = [c for c in next((r for r in rows.values() if len(r) > 1), {}) if c != "note"]
    return table.reindex(columns=[*figures, "note"])
