"""Backtest metrics against hand computation, baselines and peers, rolling origins, notes."""

from __future__ import annotations

import sys
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from rnnkit.data.timeseries import TimeSeries, read_csv, season_of
from rnnkit.errors import RnnkitError
from rnnkit.evaluation import backtest as bt
from rnnkit.evaluation.backtest import (
    backtest,
    classical_models,
    coverage,
    directional_accuracy,
    ets,
    interval_levels,
    mae,
    mape,
    mase,
    mase_scale,
    metrics_table,
    msis,
    naive,
    pinball,
    quantile_loss,
    quantiles_of,
    rmse,
    rolling_origins,
    seasonal_naive,
    smape,
    with_residual_intervals,
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
    assert list(table.index) == ["up", "rw"] and list(table.columns)[-1] == "note"
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


LOWER = np.array([9.0, 21.0, 30.0])
UPPER = np.array([11.0, 25.0, 45.0])  # Y inside, below (by 1), inside


def test_interval_metrics_equal_hand_computed_values():
    assert coverage(Y, LOWER, UPPER) == pytest.approx(2 / 3)
    # alpha 0.2: widths 2 + 4 + 15, penalty 2 / 0.2 * (21 - 20); scale 2
    assert msis(Y, LOWER, UPPER, 2.0, 0.8) == pytest.approx((21 + 10) / 3 / 2)
    assert pinball(Y, F, 0.9) == pytest.approx((0.2 + 4.5 + 0) / 3)  # u = -2, 5, 0
    assert quantile_loss(Y, {0.5: F}, 2.0) == pytest.approx(mase(Y, F, 2.0))  # median: MASE
    q = {0.1: LOWER, 0.5: F, 0.9: UPPER}
    by_hand = 2 * (pinball(Y, LOWER, 0.1) + pinball(Y, F, 0.5) + pinball(Y, UPPER, 0.9)) / 3
    assert quantile_loss(Y, q, 2.0) == pytest.approx(by_hand / 2)
    assert pinball(Y, LOWER, 0.1) == pytest.approx((0.1 * 1 + 0.9 * 1 + 0.1 * 10) / 3)


def m4_msis(y, lower, upper, train, m, alpha):
    """MSIS as the M4 competition's R code computes it, one series, one step at a time."""
    scale = sum(abs(train[t] - train[t - m]) for t in range(m, len(train))) / (len(train) - m)
    total = 0.0
    for yt, lt, ut in zip(y, lower, upper):
        total += (
            (ut - lt) + (2 / alpha) * (lt - yt) * (yt < lt) + (2 / alpha) * (yt - ut) * (yt > ut)
        )
    return total / len(y) / scale


def test_msis_matches_the_m4_formula():
    rng = np.random.default_rng(0)
    train = rng.normal(100, 10, 40)
    y, mid = rng.normal(100, 10, 8), rng.normal(100, 3, 8)
    lower, upper = mid - 12, mid + 12
    scale = mase_scale(train[:, None], 4)
    expected = m4_msis(y, lower, upper, train, 4, 0.05)
    assert msis(y, lower, upper, scale, 0.95) == pytest.approx(expected)


def test_quantiles_of_intervals_and_levels():
    q = quantiles_of(F, {0.8: (LOWER, UPPER)})
    assert list(q) == pytest.approx([0.1, 0.5, 0.9]) and q[0.5] is F and q[0.1] is LOWER
    assert interval_levels(0.9) == (0.5, 0.8, 0.9) and interval_levels(0.5) == (0.5, 0.8)
    with pytest.raises(RnnkitError, match="level"):
        interval_levels(1.0)


def test_naive_intervals_from_in_sample_residuals():
    history = np.array([[1.0], [3.0], [2.0], [6.0]])  # naive errors 2, -1, 4: RMS sqrt(7)
    model = with_residual_intervals(naive, 1, lambda n: np.sqrt(np.arange(1, n + 1)))
    p = model(history, 3, (0.9,))
    z = NormalDist().inv_cdf(0.95)
    np.testing.assert_allclose(p.mean[:, 0], [6, 6, 6])
    np.testing.assert_allclose(p.bounds[0.9][1][:, 0], 6 + z * np.sqrt(7 * np.arange(1, 4)))
    # seasonal naive, m = 2: errors 1, 3, 2, -1 (RMS sqrt(3.75)); widening 1, 1, sqrt 2, sqrt 2
    history = np.array([1.0, 3, 2, 6, 4, 5])[:, None]
    models, _ = classical_models(2, False)
    p = models["seasonal naive (m=2)"](history, 4, (0.5,))
    np.testing.assert_allclose(p.mean[:, 0], [4, 5, 4, 5])
    sd = np.sqrt(3.75) * np.sqrt([1, 1, 2, 2])
    np.testing.assert_allclose(
        p.bounds[0.5][0][:, 0], p.mean[:, 0] - NormalDist().inv_cdf(0.75) * sd
    )


def seasonal_series(n: int = 72, freq: str = "MS", period: int = 12, seed: int = 0) -> TimeSeries:
    t = np.arange(n, dtype=np.float64)
    noise = np.random.default_rng(seed).normal(0, 1, n)
    values = 50 + 0.3 * t + 8 * np.sin(2 * np.pi * t / period) + noise
    index = pd.date_range("2000-01-01", periods=n, freq=freq)
    return TimeSeries(index, values[:, None], ["y"], freq)


def test_backtest_rows_for_every_peer_with_interval_metrics():
    series = seasonal_series()
    result = backtest(series, None, "2004-07", 6, every=3, season=12)
    table = result.table
    peers = [f"{name} (statsforecast)" for name in bt.STATSFORECAST]
    assert list(table.index) == ["naive", "seasonal naive (m=12)", "ETS (statsmodels)", *peers]
    assert {"MASE", "sMAPE", "coverage_90", "MSIS", "QL", "note"} <= set(table.columns)
    for name in ["naive", "seasonal naive (m=12)", *peers]:
        assert 0 <= table.loc[name, "coverage_90"] <= 1 and table.loc[name, "MSIS"] > 0
        lo50, hi50 = result.bounds[name][0.5]
        lo90, hi90 = result.bounds[name][0.9]
        assert (lo90 <= lo50).all() and (lo50 <= hi50).all() and (hi50 <= hi90).all()
    assert np.isnan(table.loc["ETS (statsmodels)", "coverage_90"])
    assert "no interval" in table.loc["ETS (statsmodels)", "note"]
    for name in peers:  # trend + season: every peer well ahead of naive
        assert table.loc[name, "MASE"] < 0.6 * table.loc["naive", "MASE"]
        assert table.loc[name, "note"] == "" and result.seconds[name] > 0


def test_missing_season_and_failed_or_absent_models_are_noted(monkeypatch):
    series = seasonal_series(40, "YS")
    table = backtest(series, None, "2030", 4, season=season_of(series.freq)).table
    assert (
        "not run: no season (m = 1 for the frequency YS)"
        in table.loc["seasonal naive (m=1)", "note"]
    )
    assert np.isnan(table.loc["seasonal naive (m=1)", "MASE"])

    def broken(season):
        def fit(history, n):
            raise np.linalg.LinAlgError("singular matrix")

        return fit

    monkeypatch.setattr(bt, "ets", broken)
    monkeypatch.setitem(sys.modules, "statsforecast.models", None)  # as if not installed
    table = backtest(seasonal_series(), None, "2005-01", 6, every=6, season=12).table
    note = table.loc["ETS (statsmodels)", "note"]
    assert note == "failed at 2 of 2 origins (LinAlgError: singular matrix)"
    assert np.isnan(table.loc["ETS (statsmodels)", "MASE"])
    for name in bt.STATSFORECAST:
        assert "statsforecast is not installed" in table.loc[f"{name} (statsforecast)", "note"]
    assert table.loc["seasonal naive (m=12)", "MASE"] > 0  # the others still run


def test_a_daily_csv_with_gaps_keeps_its_seasonal_baseline(tmp_path):
    days = pd.date_range("2024-01-01", periods=70, freq="D")
    values = 20 + 5 * (days.dayofweek >= 5) + np.random.default_rng(1).normal(0, 0.5, 70)
    keep = np.ones(70, bool)
    keep[[5, 19, 33]] = False
    lines = [f"{d:%Y-%m-%d},{v:.3f}" for d, v in zip(days[keep], values[keep])]
    (tmp_path / "d.csv").write_text("day,y\n" + "\n".join(lines) + "\n")
    series = read_csv(tmp_path / "d.csv", "day", fill="interpolate")
    season = season_of(series.freq)
    table = backtest(series, None, "2024-02-26", 7, season=season).table
    assert series.freq == "D" and season == 7
    snaive = table.loc["seasonal naive (m=7)"]
    assert snaive["note"] == "" and snaive["MASE"] < 0.5 * table.loc["naive", "MASE"]
