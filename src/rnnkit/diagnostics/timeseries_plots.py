"""Pictures of forecasts, backtests and anomaly detections: PNG files drawn on matplotlib
`Figure` objects (its Agg canvas; no pyplot, so the host's backend is left alone), matplotlib
imported when a picture is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rnnkit.data.timeseries import TimeSeries


def _figure(**options: Any):
    """A new matplotlib `Figure` (``figsize`` etc.)."""
    from matplotlib.figure import Figure

    return Figure(**options)


def _colors() -> list[str]:
    """matplotlib's colour cycle."""
    from matplotlib import rcParams

    return rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_forecast(
    series: TimeSeries, forecast: pd.DataFrame, path: Path, history: int = 120, title: str = ""
) -> None:
    """The last ``history`` steps of each target, the forecast and its interval band."""
    fig = _figure(figsize=(9, 3.2 * len(series.columns)))
    axes = fig.subplots(len(series.columns), 1, squeeze=False)
    tail = series[max(0, len(series) - history) :]
    for ax, (i, name) in zip(axes[:, 0], enumerate(series.columns)):
        ax.plot(tail.index, tail.values[:, i], color="black", lw=1.2, label="history")
        ax.plot(forecast.index, forecast[name], color="tab:blue", lw=1.6, label="forecast")
        if f"{name}_lower" in forecast:
            ax.fill_between(forecast.index, forecast[f"{name}_lower"], forecast[f"{name}_upper"],
                            color="tab:blue", alpha=0.25, label="prediction interval")  # fmt: skip
        ax.set_ylabel(name)
        ax.legend(loc="upper left", fontsize=8)
    axes[0, 0].set_title(title)
    _save(fig, path)


def plot_backtest(series: TimeSeries, result, path: Path, title: str = "") -> None:
    """Actual values over the backtest and each model's forecasts from non-overlapping origins
    (every n-th origin; n = 1: every origin), for the first target."""
    n = result.actual.shape[1]
    start = max(0, result.origins[0] - 2 * n)
    fig = _figure(figsize=(9, 3.6))
    ax = fig.subplots()
    ax.plot(series.index[start:], series.values[start:, 0], color="black", lw=1.2, label="actual")
    colors = _colors()
    for k, (name, f) in enumerate(result.forecasts.items()):
        style = {"color": colors[k % len(colors)], "lw": 1.1, "alpha": 0.85}
        if n == 1:  # one step ahead: the forecasts of all origins as one line
            ax.plot(series.index[result.origins], f[:, 0, 0], label=name, **style)
            continue
        for j in range(0, len(result.origins), n):
            p = result.origins[j]
            ax.plot(series.index[p : p + n], f[j, :, 0], label=None if j else name, **style)
    ax.axvline(series.index[result.origins[0]], color="grey", ls=":", lw=1)
    ax.set_ylabel(series.columns[0])
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def plot_anomalies(
    series: TimeSeries,
    scores: np.ndarray,
    flags: np.ndarray,
    threshold: float,
    path: Path,
    windows: list[tuple[pd.Timestamp, pd.Timestamp]] = (),
    train_end: int | None = None,
    title: str = "",
) -> None:
    """The series with detections (red marks) and true windows (shaded), and the score with
    its threshold below."""
    fig = _figure(figsize=(11, 5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    t = series.index
    top.plot(t, series.values[:, 0], color="black", lw=0.6)
    for k, (a, b) in enumerate(windows):
        top.axvspan(a, b, color="tab:orange", alpha=0.25, label=None if k else "labelled window")
        bottom.axvspan(a, b, color="tab:orange", alpha=0.25)
    hits = np.flatnonzero(flags)
    top.scatter(t[hits], series.values[hits, 0], color="red", s=30, zorder=3, label="detection")
    if train_end is not None:
        top.axvline(t[train_end - 1], color="grey", ls=":", lw=1, label="end of training part")
    top.set_ylabel(series.columns[0])
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title)
    bottom.plot(t, scores, color="tab:blue", lw=0.6)
    bottom.axhline(threshold, color="red", ls="--", lw=1)
    bottom.set_ylabel("anomaly score")
    _save(fig, path)
