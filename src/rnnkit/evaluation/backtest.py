"""Backtesting: rolling-origin evaluation of the RNN beside classical baselines, in one table.

Shape legend: T time steps, C targets, n horizon, B origins.

Protocol: origins are the positions ``p`` (the first forecast step) from ``start`` every
``every`` steps while ``p + n`` fits in the series. The RNN is trained once on the rows before
the first origin (no retraining; at each origin it reads the real history before it). The
baselines see the same history at each origin and the classical model (ETS, statsmodels) is
refitted at every origin. Every metric averages over all origins, steps and targets.

Metrics (y actual, f forecast, e = y - f):
    MAE   mean |e|                 RMSE  sqrt(mean e^2)
    MAPE  100 mean |e| / |y|       (undefined, NaN, if some y is 0)
    sMAPE 200 mean |e| / (|y| + |f|)   (0..200, as in M4 and Darts)
    MASE  MAE / mean |y_t - y_{t-m}| over the training rows (m the season; 1: naive)
For returns (``returns=True``: a price turned into log returns) the scale of MASE is the
in-sample error of the random walk, mean |r_t| (its forecast of a return is 0), and the table
adds the directional accuracy: the share of steps whose forecast has the sign of the return.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rnnkit.data.timeseries import TimeSeries
from rnnkit.errors import RnnkitError

Baseline = Callable[[np.ndarray, int], np.ndarray]  # history (T, C), n -> forecast (n, C)


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


# --- baselines -------------------------------------------------------------------------------


def naive(history: np.ndarray, n: int) -> np.ndarray:
    """The last value, repeated: (T, C) -> (n, C)."""
    return np.repeat(history[-1:], n, axis=0)


def seasonal_naive(season: int) -> Baseline:
    """The value one season earlier: step h forecasts y[T - m + (h mod m)]."""

    def forecast(history: np.ndarray, n: int) -> np.ndarray:
        return history[len(history) - season + np.arange(n) % season]

    return forecast


def zero(history: np.ndarray, n: int) -> np.ndarray:
    """0 for every step: on log returns, the random walk of the price."""
    return np.zeros((n, history.shape[1]))


def mean_of(history: np.ndarray, n: int) -> np.ndarray:
    """The mean of the history (on returns: the random walk with drift)."""
    return np.repeat(history.mean(axis=0, keepdims=True), n, axis=0)


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


def baselines(season: int, returns: bool) -> dict[str, Baseline]:
    """The baselines of the table: naive, seasonal naive, ETS; for returns the random walk
    (zero return), the random walk with drift and ETS without season."""
    if returns:
        return {"random walk": zero, "random walk + drift": mean_of, "ETS": ets(1)}
    found = {"naive": naive}
    if season > 1:
        found[f"seasonal naive (m={season})"] = seasonal_naive(season)
    found["ETS (statsmodels)"] = ets(season)
    return found


# --- rolling origin ----------------------------------------------------------------------------


@dataclass
class Backtest:
    """Forecasts of every model at every origin, the actual values, and the metrics table.

    ``forecasts[name]`` and ``actual`` are (B, n, C); ``origins`` (B,) row positions.
    """

    origins: list[int]
    actual: np.ndarray
    forecasts: dict[str, np.ndarray]
    table: pd.DataFrame
    intervals: dict[str, np.ndarray] | None = None


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
    """Train ``forecaster`` (a `rnnkit.forecasting.forecaster.Forecaster`) before ``start``,
    forecast ``n`` steps at every origin beside the baselines, and tabulate; see the module
    docstring."""
    origins = rolling_origins(series, start, n, every)
    forecaster.fit(series[: origins[0]])
    rnn = forecaster.forecast_at(series, origins, n, level)
    forecasts = {"rnnkit " + forecaster.cfg.cell.upper(): rnn["mean"]}
    for name, baseline in baselines(season, returns).items():
        forecasts[name] = np.stack([baseline(series.values[:p], n) for p in origins])
    actual = np.stack([series.values[p : p + n] for p in origins])
    train = series.values[: origins[0]]
    scale = float(np.mean(np.abs(train))) if returns else mase_scale(train, season)
    table = metrics_table(actual, forecasts, scale, returns)
    intervals = {k: rnn[k] for k in ("lower", "upper") if k in rnn} or None
    if intervals:
        inside = (actual >= intervals["lower"]) & (actual <= intervals["upper"])
        table[f"{level:.0%} coverage"] = [float(inside.mean())] + [np.nan] * (len(table) - 1)
    return Backtest(origins, actual, forecasts, table, intervals)


def metrics_table(
    actual: np.ndarray, forecasts: dict[str, np.ndarray], scale: float, returns: bool
) -> pd.DataFrame:
    """One row per model: MAE, RMSE, MAPE, sMAPE, MASE (+ directional accuracy for returns)."""
    rows = {}
    for name, f in forecasts.items():
        row = {"MAE": mae(actual, f), "RMSE": rmse(actual, f), "MAPE": mape(actual, f),
               "sMAPE": smape(actual, f), "MASE": mase(actual, f, scale)}  # fmt: skip
        if returns:
            row["MAE / random walk"] = mae(actual, f) / mae(actual, np.zeros_like(actual))
            row["directional accuracy"] = directional_accuracy(actual, f) if f.any() else np.nan
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")
