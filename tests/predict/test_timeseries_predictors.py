"""`rnnkit.load` for forecast and anomaly runs: structured answers equal to the Forecaster's and
the detector's own, batches equal to single inputs, strict JSON, resumable `train`, bad input."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import rnnkit
from rnnkit.cli import main
from rnnkit.errors import RnnkitError
from rnnkit.forecasting.forecaster import Forecaster
from rnnkit.io import read_json
from rnnkit.tasks import anomaly, forecast
from rnnkit.tasks.anomaly import Anomalies, AnomalyPredictor
from rnnkit.tasks.forecast import Forecast, ForecastPredictor

MODEL = ["--input-chunk-length", "12", "--hidden-size", "8", "--max-steps", "20"]
LOOP = {"max_steps": 4, "eval_every": 2, "log_every": 2, "warmup": 1, "progress": "none"}


def monthly_csv(path: Path, rows: int = 60) -> Path:
    t = np.arange(rows)
    noise = np.random.default_rng(0).normal(scale=0.1, size=(rows, 2))
    index = pd.date_range("2000-01-01", periods=rows, freq="MS")
    pd.DataFrame({"month": index.strftime("%Y-%m"), "y": 10 + np.sin(t / 2) + noise[:, 0],
                  "x": np.cos(t / 3) + noise[:, 1]}).to_csv(path, index=False)  # fmt: skip
    return path


def walk_csv(path: Path, rows: int = 240) -> Path:
    """A monthly random walk: a forecast's uncertainty grows with the horizon."""
    values = 100 + np.cumsum(np.random.default_rng(3).normal(size=rows))
    index = pd.date_range("2000-01-01", periods=rows, freq="MS")
    pd.DataFrame({"month": index.strftime("%Y-%m"), "y": values}).to_csv(path, index=False)
    return path


def hourly_csv(path: Path, rows: int = 300, spike: int = 250) -> Path:
    t = np.arange(rows)
    values = np.sin(2 * np.pi * t / 24) + 0.05 * np.random.default_rng(1).normal(size=rows)
    values[spike] += 4.0
    index = pd.date_range("2020-01-01", periods=rows, freq="h")
    pd.DataFrame({"timestamp": index, "value": values}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("series")
    monthly_csv(folder / "monthly.csv")
    walk_csv(folder / "walk.csv")
    hourly_csv(folder / "hourly.csv")
    return folder


@pytest.fixture(scope="module")
def forecast_run(data, tmp_path_factory) -> Path:
    """`rnnkit forecast`'s run: direct, Gaussian, horizon 3, target y."""
    out = tmp_path_factory.mktemp("runs") / "direct"
    args = ["forecast", "--csv", str(data / "monthly.csv"), "--time-col", "month", "--target",
            "y", "--horizon", "3", *MODEL, "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def default_run(data, tmp_path_factory) -> Path:
    """`rnnkit train forecast`'s run of the random walk with every default (direct,
    output_chunk_length 6, Gaussian, the input length, log, ensemble and conformal interval
    scale chosen from the data, 80 epochs): issue 29's check."""
    out = tmp_path_factory.mktemp("runs") / "default"
    args = ["train", "forecast", "--csv", str(data / "walk.csv"), "--time-col", "month",
            "--target", "y", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "config.json").read_text())["task_config"]
    assert settings["members"] == 5 and settings["input_chunk_length"] > 0
    assert settings["interval_scale"] > 0 and settings["interval_scale"] != 1.0  # calibrated
    return out


@pytest.fixture(scope="module")
def autoregressive_run(data, tmp_path_factory) -> Path:
    """`forecast.train`'s run: autoregressive with the month, targets y and x."""
    out = tmp_path_factory.mktemp("runs") / "ar"
    flags = {"csv": str(data / "monthly.csv"), "time_col": "month", "mode": "autoregressive",
             "input_chunk_length": 12, "output_chunk_length": 2, "hidden_size": 8,
             "calendar": ["month"], **LOOP}  # fmt: skip
    result = forecast.train(flags, out=str(out))
    assert result.step == 4 and result.stop_reason == "budget"
    return out


@pytest.fixture(scope="module")
def detect_out(data, tmp_path_factory) -> Path:
    """`rnnkit detect`'s output folder; its detector's run is OUT/model."""
    out = tmp_path_factory.mktemp("runs") / "detect"
    args = ["detect", "--csv", str(data / "hourly.csv"), "--time-col", "timestamp",
            "--train-fraction", "0.5", "--accumulate", "1", "--input-chunk-length", "12",
            "--hidden-size", "8", "--lr", "0.01", "--max-steps", "100",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def assert_same_forecast(got: Forecast, want: Forecast, tol: float = 1e-5) -> None:
    assert got.times == want.times and got.level == want.level
    for key in ("mean", "lower", "upper"):
        mine, theirs = getattr(got, key), getattr(want, key)
        assert mine.keys() == theirs.keys()
        for column in mine:
            assert mine[column] == pytest.approx(theirs[column], abs=tol, rel=tol)


def assert_strict_json(result) -> None:
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert "NaN" not in text
    for row in result.rows():
        json.dumps(row, allow_nan=False)


# --- forecasts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", ["best", "last"])
def test_own_history_forecast_equals_the_forecasters(forecast_run, checkpoint):
    predictor = rnnkit.load(forecast_run, checkpoint)
    assert isinstance(predictor, ForecastPredictor) and predictor.task == "forecast"
    assert predictor.horizon == 3
    result = predictor.forecast()
    frame = Forecaster.load(forecast_run, checkpoint).predict(3)
    assert result.times == [t.isoformat() for t in frame.index]
    assert result.times == ["2005-01-01T00:00:00", "2005-02-01T00:00:00", "2005-03-01T00:00:00"]
    assert result.level == 0.9 and list(result.mean) == ["y"]
    for key, column in (("mean", "y"), ("lower", "y_lower"), ("upper", "y_upper")):
        assert getattr(result, key)["y"] == pytest.approx(frame[column].tolist(), abs=1e-6)
    assert all(lo < m < hi for lo, m, hi in zip(result.lower["y"], result.mean["y"],
                                                result.upper["y"]))  # fmt: skip
    wider = predictor.forecast(level=0.99)
    assert wider.level == 0.99 and wider.mean == result.mean
    assert all(w < lo for w, lo in zip(wider.lower["y"], result.lower["y"]))
    assert len(predictor.forecast(horizon=2).times) == 2
    assert_strict_json(result)
    lines = result.summary().splitlines()
    assert lines[0].split() == ["time", "y", "y_lower", "y_upper"] and len(lines) == 5
    assert lines[1].split()[0] == "2005-01-01T00:00:00" and lines[-1] == "3 steps (90% intervals)"


def test_a_history_as_csv_or_frame_forecasts_like_the_run(forecast_run, data):
    predictor = rnnkit.load(forecast_run)
    own = predictor.forecast()
    csv = data / "monthly.csv"
    frame = pd.read_csv(csv)
    indexed = frame.assign(month=pd.to_datetime(frame["month"])).set_index("month")
    for history in (str(csv), csv, frame, indexed, predictor.forecaster.history):
        assert_same_forecast(predictor.forecast(history=history), own, tol=1e-6)
    (answer,) = predictor.predict(predictor.parse([str(csv)]))
    assert_same_forecast(answer, own, tol=1e-6)


def test_a_batch_answers_what_each_history_answers_alone(forecast_run, data):
    predictor = rnnkit.load(forecast_run)
    frame = pd.read_csv(data / "monthly.csv")
    histories = [str(data / "monthly.csv"), frame[:-7], frame[5:30], frame[:12]]
    together = predictor.predict(histories)
    assert len(together) == 4 and all(isinstance(r, Forecast) for r in together)
    assert together[1].times[0] == "2004-06-01T00:00:00"  # the month after row 52
    assert together[3].times[0] == "2001-01-01T00:00:00"
    for history, batched in zip(histories, together):
        assert len(batched.times) == 3 and len(batched.mean["y"]) == 3
        assert_same_forecast(batched, predictor.predict([history])[0])
        assert_strict_json(batched)
    assert together[1].mean != together[2].mean


def test_autoregressive_intervals_do_not_depend_on_the_batch(autoregressive_run, data):
    predictor = rnnkit.load(autoregressive_run, "last")
    assert predictor.cfg.targets == ["y", "x"] and predictor.cfg.calendar == ["month"]
    frame = pd.read_csv(data / "monthly.csv")
    histories = [frame, frame[:40], frame[10:25]]
    together = predictor.predict(histories)
    for history, batched in zip(histories, together):
        assert set(batched.mean) == {"y", "x"} and len(batched.upper["x"]) == 2
        assert_same_forecast(batched, predictor.predict([history])[0])
    longer = predictor.forecast(horizon=5)  # autoregressive: beyond output_chunk_length
    frame = Forecaster.load(autoregressive_run).predict(5)
    for column in ("y", "x"):
        assert longer.mean[column] == pytest.approx(frame[column].tolist(), abs=1e-6)
        assert longer.lower[column] == pytest.approx(frame[f"{column}_lower"].tolist(), abs=1e-6)


def test_one_forecast_predictor_serves_threads(forecast_run, data):
    predictor = rnnkit.load(forecast_run)
    histories = [str(data / "monthly.csv"), pd.read_csv(data / "monthly.csv")[:30]]
    expected = [r.to_dict() for r in predictor.predict(histories)]
    threads_before = torch.get_num_threads()
    answers: list = []

    def ask() -> None:
        for _ in range(3):
            answers.append([r.to_dict() for r in predictor.predict(histories)])

    workers = [threading.Thread(target=ask) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(answers) == 9 and torch.get_num_threads() == threads_before
    for answer in answers:
        for got, want in zip(answer, expected):
            assert got["mean"]["y"] == pytest.approx(want["mean"]["y"], abs=1e-6)


def test_forecast_bad_input_is_one_rnnkit_error(forecast_run, data, tmp_path):
    predictor = rnnkit.load(forecast_run)
    frame = pd.read_csv(data / "monthly.csv")
    daily = frame.assign(month=pd.date_range("2000-01-01", periods=len(frame), freq="D"))
    frame.rename(columns={"y": "z"}).to_csv(tmp_path / "other.csv", index=False)
    cases = {
        "has no column 'y'": lambda: predictor.predict([str(tmp_path / "other.csv")]),
        "horizon must be at least 1": lambda: predictor.forecast(horizon=0),
        "horizon is a number of steps": lambda: predictor.forecast(horizon=2.5),
        "level must be in": lambda: predictor.forecast(level=1.5),
        "a CSV path, a DataFrame or a TimeSeries, got int": lambda: predictor.predict([5]),
        "at least one input": lambda: predictor.predict([]),
        "wrap one input in a list": lambda: predictor.predict(str(data / "monthly.csv")),
        "does not exist": lambda: predictor.predict([str(tmp_path / "missing.csv")]),
        "needs 12 steps of history": lambda: predictor.predict([frame[:6]]),
        "the run's are MS": lambda: predictor.predict([daily]),
    }
    for message, call in cases.items():
        with pytest.raises(RnnkitError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_forecast_train_resumes_where_it_stopped(data, tmp_path):
    flags = {"csv": str(data / "monthly.csv"), "time_col": "month", "columns": ["y"],
             "covariates": ["x"], "input_chunk_length": 12, "hidden_size": 8, **LOOP}  # fmt: skip
    run = tmp_path / "run"
    assert forecast.train(flags, out=str(run)).step == 4
    saved = read_json(run / "config.json")["task_config"]
    assert saved["csv"] == str((data / "monthly.csv").resolve())
    assert (saved["targets"], saved["covariates"], saved["freq"]) == (["y"], ["x"], "MS")
    resumed = forecast.train({"max_steps": 7, "progress": "none"}, resume=str(run))
    assert resumed.step == 7 and resumed.stop_reason == "budget"
    with pytest.raises(RnnkitError, match="cannot change --hidden-size"):
        forecast.train({"hidden_size": 4, "max_steps": 9}, resume=str(run))
    answer = rnnkit.load(run).forecast()
    assert list(answer.mean) == ["y"] and len(answer.times) == 6  # output_chunk_length's default
    with pytest.raises(RnnkitError, match="horizon 7 is longer.*future values of the covariates"):
        rnnkit.load(run).forecast(horizon=7)  # chunks after the first would need x's future
    with pytest.raises(RnnkitError, match="no data to train on"):
        forecast.train({"time_col": "month", **LOOP}, out=str(tmp_path / "none"))


def test_a_returns_run_reads_prices_as_it_trained(data, tmp_path):
    flags = {"csv": str(data / "monthly.csv"), "time_col": "month", "columns": ["y"],
             "returns": True, "input_chunk_length": 12, "hidden_size": 8, **LOOP}  # fmt: skip
    forecast.train(flags, out=str(tmp_path / "run"))
    predictor = rnnkit.load(tmp_path / "run")
    assert predictor.cfg.targets == ["y log return"]
    own = predictor.forecast()
    assert list(own.mean) == ["y log return"]
    assert_same_forecast(predictor.forecast(history=str(data / "monthly.csv")), own, tol=1e-6)


# --- anomalies ---------------------------------------------------------------------------------


def test_detector_scores_the_training_csv_as_detect_did(detect_out, data):
    run = detect_out / "model"
    predictor = rnnkit.load(run, "last")
    assert isinstance(predictor, AnomalyPredictor) and predictor.task == "anomaly"
    (result,) = predictor.predict([str(data / "hourly.csv")])
    assert isinstance(result, Anomalies)
    table = pd.read_csv(detect_out / "scores.csv")
    assert result.times == [pd.Timestamp(t).isoformat() for t in table["time"]]
    assert result.values == {"value": pytest.approx(table["value"].tolist())}
    assert result.scores == pytest.approx(table["score"].tolist(), abs=1e-5)
    assert result.scores[:12] == [0.0] * 12  # no forecast for the first input_chunk_length rows
    saved = read_json(run / "detector.json")
    assert result.threshold == saved["last"]["threshold"] and saved["last"]["train_end"] == 150
    assert set(result.flags) <= {0, 1} and len(result.flags) == 300
    flagged = [i for i, f in enumerate(result.flags) if f]
    assert 250 in flagged and all(result.scores[i] >= result.threshold for i in flagged)
    after = [i for i in np.flatnonzero(table["flag"]) if i >= 150]
    assert after == [i for i in flagged if i >= 150]
    assert_strict_json(result)
    assert result.summary().startswith(f"{len(flagged)} anomal")


def test_a_batch_of_series_answers_what_each_answers_alone(detect_out, data):
    predictor = rnnkit.load(detect_out / "model")
    frame = pd.read_csv(data / "hourly.csv")
    indexed = frame.assign(timestamp=pd.to_datetime(frame["timestamp"])).set_index("timestamp")
    series = [str(data / "hourly.csv"), frame[100:160], indexed[:40]]
    together = predictor.predict(series)
    assert [len(r.times) for r in together] == [300, 60, 40]
    for item, batched in zip(series, together):
        (alone,) = predictor.predict([item])
        assert batched.scores == pytest.approx(alone.scores, abs=1e-5)
        assert batched.flags == alone.flags and batched.threshold == alone.threshold
        assert_strict_json(batched)


def test_anomaly_bad_input_is_one_rnnkit_error(detect_out, data, tmp_path):
    predictor = rnnkit.load(detect_out / "model")
    frame = pd.read_csv(data / "hourly.csv")
    frame.rename(columns={"value": "v"}).to_csv(tmp_path / "other.csv", index=False)
    cases = {
        "has no column 'value'": lambda: predictor.predict([str(tmp_path / "other.csv")]),
        "has none to score": lambda: predictor.predict([frame[:12]]),
        "got list": lambda: predictor.predict([[1.0, 2.0]]),
        "at least one input": lambda: predictor.predict(()),
        "does not exist": lambda: predictor.predict([str(tmp_path / "missing.csv")]),
    }
    for message, call in cases.items():
        with pytest.raises(RnnkitError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_anomaly_train_resumes_and_calibrates(data, tmp_path):
    flags = {"csv": str(data / "hourly.csv"), "time_col": "timestamp", "train_fraction": 0.5,
             "input_chunk_length": 12, "hidden_size": 8, "threshold": "quantile",
             **LOOP}  # fmt: skip
    run = tmp_path / "run"
    assert anomaly.train(flags, out=str(run)).step == 4
    saved = read_json(run / "config.json")["task_config"]
    assert saved["columns"] == ["value"] and saved["calendar_features"] == ["hour"]
    first = read_json(run / "detector.json")
    assert first["last"]["z_scale"] == 1.0 and first["last"]["rows"] == 300
    resumed = anomaly.train({"max_steps": 6, "progress": "none"}, resume=str(run))
    assert resumed.step == 6
    again = read_json(run / "detector.json")
    assert again["last"]["threshold"] != first["last"]["threshold"]  # calibrated anew
    (answer,) = rnnkit.load(run, "last").predict([str(data / "hourly.csv")])
    assert answer.threshold == again["last"]["threshold"]
    (run / "detector.json").unlink()
    with pytest.raises(RnnkitError, match="has no detector.json"):
        rnnkit.load(run)


def test_rnnkit_predict_forecasts_the_run_own_series_with_a_horizon(forecast_run):
    from click.testing import CliRunner

    from rnnkit.cli import main

    result = CliRunner().invoke(main, ["predict", str(forecast_run), "--horizon", "3", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    expected = rnnkit.load(forecast_run).forecast(horizon=3).to_dict()
    assert [r["time"] for r in rows] == expected["times"] and len(rows) == 3
    assert {r["column"] for r in rows} == {"y"} and {r["level"] for r in rows} == {0.9}
    for key in ("mean", "lower", "upper"):
        assert [r[key] for r in rows] == pytest.approx(expected[key]["y"], abs=1e-6)


# --- direct mode beyond output_chunk_length ----------------------------------------------------


def bounded(answer: Forecast, column: str = "y") -> bool:
    rows = zip(answer.lower[column], answer.mean[column], answer.upper[column])
    return all(lo <= m <= hi for lo, m, hi in rows)


def test_a_direct_run_forecasts_beyond_its_chunk_by_sampling(default_run, data):
    predictor = rnnkit.load(default_run)
    chunk = predictor.horizon
    assert (chunk, predictor.cfg.mode, predictor.cfg.likelihood) == (6, "direct", "gaussian")
    plain, long = predictor.forecast(), predictor.forecast(horizon=15)  # 2.5 chunks
    assert long.times[:chunk] == plain.times and len(long.times) == 15
    assert long.times[-1] == "2021-03-01T00:00:00" and bounded(long)
    assert long.mean["y"][:chunk] == pytest.approx(plain.mean["y"], abs=1e-5, rel=1e-5)
    width = np.subtract(long.upper["y"], long.lower["y"])
    assert np.mean(width[chunk:] - width[:-chunk]) > 0  # a step vs the step a chunk before
    per_chunk = [width[i : i + 3].mean() for i in range(0, 15, chunk)]  # positions all share
    assert np.all(np.diff(per_chunk) >= 0), per_chunk
    assert predictor.forecast(horizon=15).to_dict() == long.to_dict()  # seeded
    frame = Forecaster.load(default_run, "best").predict(15)
    assert long.mean["y"] == pytest.approx(frame["y"].tolist(), abs=1e-6)
    assert long.upper["y"] == pytest.approx(frame["y_upper"].tolist(), abs=1e-6)
    within = predictor.forecast(horizon=4)  # within the chunk: one pass, as before
    assert within.mean["y"] == plain.mean["y"][:4] and within.lower["y"] == plain.lower["y"][:4]
    histories = [str(data / "walk.csv"), pd.read_csv(data / "walk.csv")[:40]]
    together = predictor.predict(histories, horizon=15)
    for history, batched in zip(histories, together):
        assert bounded(batched)
        assert_same_forecast(batched, predictor.predict([history], horizon=15)[0])


def test_rnnkit_predict_a_default_direct_run_12_steps(default_run):
    result = CliRunner().invoke(main, ["predict", str(default_run), "--horizon", "12", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 12 and rows[0]["time"] == "2020-01-01T00:00:00"
    assert sum(r["lower"] <= r["mean"] <= r["upper"] for r in rows) == 12


def test_point_forecasts_are_chained_on_the_forecast(data, tmp_path):
    flags = {"csv": str(data / "monthly.csv"), "time_col": "month", "columns": ["y"],
             "likelihood": "none", "input_chunk_length": 12, "output_chunk_length": 3,
             "hidden_size": 8, "calendar": ["month"], **LOOP}  # fmt: skip
    forecast.train(flags, out=str(tmp_path / "run"))
    predictor = rnnkit.load(tmp_path / "run")
    long = predictor.forecast(horizon=7)
    assert long.lower is None and long.level is None and len(long.mean["y"]) == 7
    frame = pd.read_csv(data / "monthly.csv")[["month", "y"]]
    for chunk in range(3):  # the run's own forecast of the history extended by its forecast
        months = pd.to_datetime(long.times[: 3 * chunk]).strftime("%Y-%m")
        extended = pd.concat(
            [frame, pd.DataFrame({"month": months, "y": long.mean["y"][: 3 * chunk]})]
        )
        step = predictor.forecast(history=extended).mean["y"]
        want = long.mean["y"][3 * chunk : 3 * chunk + 3]
        assert step[: len(want)] == pytest.approx(want, abs=1e-5, rel=1e-5)


@pytest.mark.parametrize("fixture", ["default_run", "autoregressive_run"])
def test_forecast_runs_export_windows_to_onnx(request, fixture, tmp_path):
    """issue 29: `rnnkit export` of a forecast run reads its input and gives finite outputs in
    ONNX Runtime, equal to PyTorch's on the run's own windows."""
    ort = pytest.importorskip("onnxruntime", reason="the export extra: pip install onnxruntime")
    run = request.getfixturevalue(fixture)
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "model.json").read_text())
    assert [d["name"] for d in described["inputs"]] == ["window"]
    assert described["inputs"][0]["shape"][:2] == ["B", "T"]
    assert [d["name"] for d in described["outputs"]] == ["mean", "scale"]
    assert described["scalers"] and described["targets"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    window = rnnkit.load(run).graph().samples(12)["window"]
    mean, scale = session.run(None, {"window": window.numpy()})
    assert np.isfinite(mean).all() and (scale > 0).all()


def test_anomaly_runs_export_with_their_threshold(detect_out, tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra: pip install onnxruntime")
    result = CliRunner().invoke(main, ["export", str(detect_out / "model"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "model.json").read_text())
    assert described["task"] == "anomaly" and described["detector"]["threshold"] > 0
