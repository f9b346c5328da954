"""The forecaster's defaults from the data, its ensemble, seasonal base and conformal scale,
and a run stored before those settings existed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rnnkit.data.timeseries import TimeSeries
from rnnkit.errors import RnnkitError
from rnnkit.forecasting.forecaster import (
    ForecastConfig,
    Forecaster,
    auto_input_length,
    calibration_origins,
    fitted_config,
)
from rnnkit.models.forecaster import ForecastNet

FAST = {"max_steps": 30, "warmup_steps": 5, "eval_every": 30}


def monthly(n: int = 120, offset: float = 10.0) -> TimeSeries:
    t = np.arange(n, dtype=np.float64)
    values = (offset + 3 * np.sin(2 * np.pi * t / 12) + 0.05 * t)[:, None]
    return TimeSeries(pd.date_range("2000-01-01", periods=n, freq="MS"), values, ["y"], "MS")


def test_defaults_from_the_data():
    cfg = fitted_config(ForecastConfig(output_chunk_length=6), monthly(120))
    assert (cfg.season, cfg.log, cfg.members) == (12, True, 5)
    assert cfg.input_chunk_length == auto_input_length(120, 12, 6) == 36  # three seasons
    short = fitted_config(ForecastConfig(output_chunk_length=6), monthly(60))
    assert short.input_chunk_length == (60 - 6) // 3 == 18  # at most a third of the series
    negative = fitted_config(ForecastConfig(), monthly(120, offset=0.0))
    assert negative.log is False  # the series crosses 0
    given = ForecastConfig(log=False, season=4, input_chunk_length=20, mode="autoregressive")
    kept = fitted_config(given, monthly(120))
    assert (kept.log, kept.season, kept.input_chunk_length, kept.members) == (False, 4, 20, 1)


def test_ensemble_median_and_mixture_scale():
    torch.manual_seed(0)
    net = ForecastNet(3, 1, 4, hidden_size=8, members=3, interval_scale=2.0).eval()
    x = torch.randn(5, 10, 3)
    outs = net.member_outputs(x)
    means = torch.stack([m for m, _ in outs])
    assert not torch.allclose(means[0], means[1])  # members start from different weights
    mean, scale = net(x)
    torch.testing.assert_close(mean, means.median(0).values)
    var = torch.stack([s for _, s in outs]).square().mean(0) + means.var(0, unbiased=False)
    torch.testing.assert_close(scale, 2.0 * var.sqrt())
    single = ForecastNet(3, 1, 4, hidden_size=8)
    assert not any(k.startswith("extra") for k in single.state_dict())  # old runs' names
    with pytest.raises(RnnkitError, match="direct mode"):
        ForecastNet(3, 1, 4, members=2, mode="autoregressive")


def test_seasonal_base_is_seasonal_naive_on_a_periodic_series():
    net = ForecastNet(1, 1, 6, season=4, detrend=True)
    pattern = torch.tensor([1.0, 5.0, 2.0, -3.0])
    x = pattern.repeat(3)[None, :, None] + 7.0  # (1, 12, 1): three seasons
    base = net.base(x, net.level(x))
    torch.testing.assert_close(base[0, :, 0], pattern[torch.arange(6) % 4] + 7.0)
    short = x[:, :3]  # less than a season read: the mean level
    torch.testing.assert_close(net.base(short, net.level(short)), net.level(short))


def test_calibration_scales_intervals_and_is_stored(tmp_path):
    series = monthly(120)
    series.values[-30:] += np.random.default_rng(0).normal(0, 3, (30, 1))  # a noisier end
    model = Forecaster(FAST, output_chunk_length=6, hidden_size=8, members=2, log=False)
    model.fit(series, tmp_path / "run")
    found = model.calibration
    assert found["origins"] == 4 and found["values"] == 24
    assert model.cfg.interval_scale == found["interval_scale"] == max(1.0, found["quantile"])
    loaded = Forecaster.load(tmp_path / "run")
    assert loaded.cfg.interval_scale == model.cfg.interval_scale
    pd.testing.assert_frame_equal(loaded.predict(6), model.predict(6))
    plain = Forecaster(FAST, output_chunk_length=6, hidden_size=8, members=2, log=False,
                       calibrate=False)  # fmt: skip
    plain.fit(series)
    width = lambda f: (f["y_upper"] - f["y_lower"]).to_numpy()  # noqa: E731
    assert plain.calibration is None and plain.cfg.interval_scale == 1.0
    ratio = width(model.predict(6)) / width(plain.predict(6))
    np.testing.assert_allclose(ratio, found["interval_scale"], rtol=1e-4)  # the same networks
    assert found["interval_scale"] > 1  # the calm start taught too narrow an interval


def test_calibration_origins_and_too_short():
    assert calibration_origins(100, 12, 6) == [85, 88, 91, 94]  # the last h steps before the end
    assert calibration_origins(40, 12, 6) == [25, 28, 31, 34]  # 8 windows before the first
    assert calibration_origins(36, 12, 6) == [27, 30]
    with pytest.raises(RnnkitError, match="too short to calibrate"):
        calibration_origins(30, 12, 6)


def test_run_stored_before_the_new_settings_loads(tmp_path):
    series = monthly(80)
    old = {"input_chunk_length": 12, "output_chunk_length": 3, "hidden_size": 8, "log": False,
           "members": 1, "seasonal_base": False, "calibrate": False}  # fmt: skip
    model = Forecaster(FAST, **old).fit(series, tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    config = json.loads(path.read_text())
    for key in ("season", "members", "calibrate", "seasonal_base", "interval_scale"):
        del config["task_config"][key]  # as written before these settings
    path.write_text(json.dumps(config))
    loaded = Forecaster.load(tmp_path / "run")
    assert loaded.cfg.members == 0 and loaded.model.extra.__len__() == 0
    pd.testing.assert_frame_equal(loaded.predict(3), model.predict(3))
