"""Forecaster: fit/predict, train-only scaling, save/load, errors, the `rnnkit forecast` CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.data.timeseries import TimeSeries
from rnnkit.errors import RnnkitError
from rnnkit.forecasting.forecaster import ForecastConfig, Forecaster, ForecastTask

FAST = {"max_steps": 40, "warmup_steps": 5, "eval_every": 40}


def sine(n: int = 80, trend: float = 0.0) -> TimeSeries:
    t = np.arange(n, dtype=np.float64)
    values = np.stack([10 + np.sin(2 * np.pi * t / 12) + trend * t, np.cos(t / 5)], axis=1)
    index = pd.date_range("2000-01-01", periods=n, freq="MS")
    return TimeSeries(index, values, ["a", "b"], "MS")


@pytest.mark.parametrize("mode", ["direct", "autoregressive"])
def test_save_load_reproduces_predictions(tmp_path, mode):
    model = Forecaster(FAST, input_chunk_length=12, output_chunk_length=4, mode=mode,
                       hidden_size=8, calendar=["month"])  # fmt: skip
    model.fit(sine(), tmp_path / "run")
    before = model.predict(4)
    assert list(before.columns) == ["a", "a_lower", "a_upper", "b", "b_lower", "b_upper"]
    assert before.index[0] == pd.Timestamp("2006-09-01")
    assert (before["a_lower"] < before["a"]).all() and (before["a"] < before["a_upper"]).all()
    loaded = Forecaster.load(tmp_path / "run")
    pd.testing.assert_frame_equal(loaded.predict(4), before)
    assert (tmp_path / "run" / "scaler.json").is_file()


def test_scaling_uses_training_rows_only():
    series = sine(100, trend=1.0)
    cfg = ForecastConfig(input_chunk_length=12, output_chunk_length=3, val_fraction=0.2,
                         targets=["a", "b"])  # fmt: skip
    task = ForecastTask(cfg, series)
    np.testing.assert_allclose(task.scalers.targets.mean, series.values[:80].mean(axis=0))
    x, y = task.valid
    assert len(x) == 20 - 3 + 1  # every window whose 3 targets lie in the last 20 rows
    np.testing.assert_allclose(x[0, 0, :2], task.scalers.targets.transform(series.values[68]),
                               rtol=1e-6)  # fmt: skip
    last_train_x, _ = task.train
    assert len(last_train_x) == 80 - 12 - 3 + 1


def test_point_forecast_has_no_interval():
    model = Forecaster(FAST, input_chunk_length=12, output_chunk_length=2, likelihood=None,
                       hidden_size=8).fit(sine())  # fmt: skip
    assert list(model.predict(2).columns) == ["a", "b"]


def test_errors():
    model = Forecaster(FAST, input_chunk_length=12, output_chunk_length=3, hidden_size=8)
    with pytest.raises(RnnkitError, match="not trained"):
        model.predict(3)
    model.fit(sine())
    assert len(model.predict(5)) == 5  # past the chunk: forecast chunk by chunk
    with pytest.raises(RnnkitError, match="shorter than one window"):
        Forecaster(FAST, input_chunk_length=60, output_chunk_length=30).fit(sine())
    series = sine()
    series.covariates, series.covariate_names = series.values[:, :1], ["x"]
    with pytest.raises(RnnkitError, match="autoregressive mode needs the covariates"):
        Forecaster(FAST, mode="autoregressive").fit(series)
    with pytest.raises(RnnkitError, match="unknown forecast setting"):
        Forecaster(FAST, hidden=3)


def write_csv(path, values) -> str:
    index = pd.date_range("2000-01-01", periods=len(values), freq="MS")
    pd.DataFrame({"month": index.strftime("%Y-%m"), "y": values}).to_csv(path, index=False)
    return str(path)


def test_cli_forecast_writes_table_and_png(tmp_path):
    csv = write_csv(tmp_path / "s.csv", 10 + np.sin(np.arange(60) / 2))
    args = ["forecast", "--csv", csv, "--time-col", "month", "--target", "y", "--horizon", "3",
            "--input-chunk-length", "12", "--hidden-size", "8", "--max-steps", "30",
            "--backtest-start", "2004-06", "--season", "6",
            "--out", str(tmp_path / "out")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "config.json").read_text())["task_config"]["season"] == 6
    assert "y_lower" in result.output and "ETS (statsmodels)" in result.output
    for name in ("forecast.csv", "forecast.png", "backtest.csv", "backtest.png", "config.json"):
        assert (tmp_path / "out" / name).is_file()
    table = pd.read_csv(tmp_path / "out" / "backtest.csv", index_col="model")
    assert {"MASE", "coverage_90", "MSIS", "QL", "note"} <= set(table.columns)
    assert "AutoARIMA (statsforecast)" in table.index
    assert "seasonal naive (m=6)" in table.index  # --season: the network's and the peers'
    rnn = table.loc["rnnkit LSTM"]
    assert 0 <= rnn["coverage_90"] <= 1 and rnn["MSIS"] > 0 and rnn["QL"] > 0
    assert "(conformal: " in rnn["note"]  # the interval scale the calibration chose
    assert "note: ETS (statsmodels): point forecast: no interval" in result.output


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["1", "2", "x"] + ["3"] * 20, "non-numeric value 'x'"),
        (np.ones(30), "'y' is constant"),
        (np.arange(10.0) + 1, "shorter than one window"),
    ],
)
def test_cli_bad_input_one_line_exit_2(tmp_path, values, message):
    csv = write_csv(tmp_path / "s.csv", values)
    args = ["forecast", "--csv", csv, "--time-col", "month", "--horizon", "3", "--max-steps",
            "5", "--input-chunk-length", "12", "--out", str(tmp_path / "out")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and message in result.output


def test_cli_unparseable_and_duplicated_timestamps(tmp_path):
    bad = {"month,y\n2000-01,1\n2000-13,2\n2000-03,3\n": "cannot parse",
           "month,y\n2000-01,1\n2000-01,2\n2000-03,3\n": "duplicated"}  # fmt: skip
    for text, message in bad.items():
        (tmp_path / "b.csv").write_text(text)
        args = ["forecast", "--csv", str(tmp_path / "b.csv"), "--time-col", "month",
                "--horizon", "1", "--out", str(tmp_path / "o")]  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and message in result.output
