"""Backtest metrics against hand computation, baselines, rolling origins."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rnnkit.data.timeseries import TimeSeries
from rnnkit.errors import RnnkitError
from rnnkit.evaluation.backtest import (
    directional_accuracy,
    ets,
    mae,
    mape,
    mase,
    mase_scale,
    metrics_table,
    rmse,
    rolling_origins,
    seasonal_naive,
    smape,
)

Y = np.array([10.0, 20.0, 40.0])
F = np.array([12.0, 15.0, 40.0])  # errors -2, 5, 0


def test_metrics_equal_hand_computed_values():
    assert mae(Y, F) == pytest.approx(7 / 3)
    assert rmse(Y, F) == pytest.approx(np.sqrt(29 / 3))
    assert mape(Y, F) == pytest.approx(100 * (0.2 + 0.25 + 0) / 3)
    assert smape(Y, F) == pytest.approx(200 * (2 / 22 + 5 / 35 + 0) / 3)
    train = np.array([[1.0], [3.0], [2.0], [6.0]])  # seasonal (m=2) diffs: 1, 3 -> scale 2
    assert mase_scale(train, 2) == pytest.approx(2.0)
    assert mase_scale(train, 1) == pytest.approx((2 + 1 + 4) / 3)
    assert mase(Y, F, 2.0) == pytest.approx(7 / 6)


def test_metric_edge_cases():
    assert np.isnan(mape(np.array([0.0, 1.0]), np.array([1.0, 1.0])))
    assert smape(np.array([0.0]), np.array([0.0])) == 0.0
    assert directional_accuracy(np.array([1.0, -2.0, 0.0, 3.0]), np.array([0.5, 1.0, 9, 2])) == (
        pytest.approx(2 / 3)
    )
    with pytest.raises(RnnkitError, match="constant"):
        mase_scale(np.ones((5, 1)), 1)


def test_seasonal_naive_repeats_the_last_season():
    history = np.arange(1.0, 9.0)[:, None]  # 1..8, season 4: last season 5, 6, 7, 8
    np.testing.assert_array_equal(seasonal_naive(4)(history, 6)[:, 0], [5, 6, 7, 8, 5, 6])


def test_ets_follows_a_seasonal_series():
    t = np.arange(48.0)
    y = (100 + t + 10 * np.sin(2 * np.pi * t / 12))[:, None]
    forecast = ets(12)(y[:36], 12)
    assert forecast.shape == (12, 1)
    assert mape(y[36:], forecast) < 0.5 * mape(y[36:], seasonal_naive(12)(y[:36], 12))


def test_table_has_one_row_per_model_and_returns_columns():
    actual = np.array([[[0.01], [-0.02]]])
    table = metrics_table(actual, {"up": np.full_like(actual, 0.005), "rw": 0 * actual}, 0.01, True)
    assert list(table.index) == ["up", "rw"]
    assert table.loc["rw", "MAE / random walk"] == pytest.approx(1.0)
    assert table.loc["up", "directional accuracy"] == pytest.approx(0.5)
    assert np.isnan(table.loc["rw", "directional accuracy"])  # a zero forecast has no direction


def test_rolling_origins():
    index = pd.date_range("2000-01-01", periods=24, freq="MS")
    series = TimeSeries(index, np.arange(24.0)[:, None], ["y"], "MS")
    assert rolling_origins(series, "2001-06", 3) == list(range(17, 22))
    assert rolling_origins(series, "2001-06", 3, every=2) == [17, 19, 21]
    with pytest.raises(RnnkitError, match="no rolling origin"):
        rolling_origins(series, "2003-01", 3)
    with pytest.raises(RnnkitError, match="step between origins"):
        rolling_origins(series, "2001-06", 3, every=0)
