"""Time-series data: CSV reading, frequency, gaps and fill, scaling, windows, calendar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rnnkit.data.timeseries import (
    Scaler,
    calendar_features,
    detect_frequency,
    make_windows,
    read_csv,
    season_of,
)
from rnnkit.errors import RnnkitError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "series.csv"
    path.write_text(text)
    return path


def test_reads_sorts_and_reports(tmp_path):
    path = write(tmp_path, "t,y,x\n2024-03-01,3,0.5\n2024-01-01,1,0.1\n2024-02-01,2,0.2\n")
    s = read_csv(path, "t", ["y"], covariates=["x"])
    assert s.freq == "MS"
    assert list(s.index.month) == [1, 2, 3]
    np.testing.assert_array_equal(s.values[:, 0], [1, 2, 3])
    np.testing.assert_array_equal(s.covariates[:, 0], [0.1, 0.2, 0.5])
    assert s.report["gaps"] == 0 and s.report["missing"] == {}


@pytest.mark.parametrize(
    ("index", "freq"),
    [
        (pd.date_range("2020-01-01", periods=10, freq="h"), "h"),
        (pd.date_range("2020-01-31", periods=10, freq="ME"), "ME"),
        (pd.date_range("2020-01-01", periods=10, freq="5min").delete(4), "5min"),
        (pd.date_range("2020-01-01", periods=10, freq="MS").delete([3, 6]), "MS"),
    ],
)
def test_detect_frequency_with_and_without_gaps(index, freq):
    assert detect_frequency(index) == freq


@pytest.mark.parametrize(
    ("index", "freq", "season"),
    [
        (pd.date_range("2024-01-01", periods=40, freq="D").delete([3, 10, 11]), "D", 7),
        (pd.date_range("2024-01-01", periods=40, freq="B").delete([4, 20]), "B", 5),
        (pd.date_range("2024-01-07", periods=30, freq="W").delete(3), "W-SUN", 52),
        (pd.date_range("2024-01-01", periods=60, freq="h").delete([5, 6, 30]), "h", 24),
        (pd.date_range("2020-01-31", periods=20, freq="ME").delete([4, 9]), "ME", 12),
        (pd.date_range("2020-02-01", periods=20, freq="QS-FEB").delete(3), "QS-FEB", 4),
        (pd.date_range("2020-03-31", periods=20, freq="QE").delete([3, 4]), "QE-DEC", 4),
        (pd.date_range("2000-01-01", periods=10, freq="YS").delete(3), "YS-JAN", 1),
        (pd.date_range("2024-01-01", periods=40, freq="2D").delete(5), "2D", 1),
    ],
)
def test_gaps_keep_the_frequency_and_its_season(index, freq, season):
    found = detect_frequency(index)
    assert found == freq and season_of(found) == season
    grid = pd.date_range(index[0], index[-1], freq=found)
    assert index.difference(grid).empty and len(grid) > len(index)  # on the grid, gaps missing


def test_a_daily_csv_with_missing_days_is_daily(tmp_path):
    days = pd.date_range("2024-01-01", periods=30, freq="D").delete([2, 9, 10, 17])
    values = np.arange(30.0)[np.isin(pd.date_range("2024-01-01", periods=30), days)]
    lines = [f"{d:%Y-%m-%d},{v}" for d, v in zip(days, values)]
    s = read_csv(write(tmp_path, "day,y\n" + "\n".join(lines) + "\n"), "day", fill="interpolate")
    assert s.freq == "D" and season_of(s.freq) == 7 and len(s) == 30
    assert s.report["gaps"] == 4
    np.testing.assert_allclose(s.values[:, 0], np.arange(30.0))  # a line interpolates exactly


def gappy(tmp_path: Path) -> Path:
    return write(tmp_path, "t,y\n2024-01-01,1\n2024-01-02,\n2024-01-03,3\n2024-01-05,7\n")


def test_gaps_refused_by_default_with_a_way_out(tmp_path):
    with pytest.raises(RnnkitError, match=r"1 gap\(s\).*missing values \(y: 2\).*--fill"):
        read_csv(gappy(tmp_path), "t")


def test_fill_policies(tmp_path):
    interp = read_csv(gappy(tmp_path), "t", fill="interpolate")
    np.testing.assert_allclose(interp.values[:, 0], [1, 2, 3, 5, 7])
    assert interp.report["gaps"] == 1 and interp.report["first_gaps"] == ["2024-01-04 00:00:00"]
    ffill = read_csv(gappy(tmp_path), "t", fill="ffill")
    np.testing.assert_allclose(ffill.values[:, 0], [1, 1, 3, 3, 7])


def test_leading_missing_value_cannot_be_filled(tmp_path):
    path = write(tmp_path, "t,y\n2024-01-01,\n2024-01-02,2\n2024-01-03,3\n")
    with pytest.raises(RnnkitError, match="start or end"):
        read_csv(path, "t", fill="ffill")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t,y\n2024-01-01,1\nnot a date,2\n2024-01-03,3\n", r"cannot parse 'not a date'.*row 2"),
        ("t,y\n2024-01-01,1\n2024-01-01,2\n2024-01-02,3\n", r"1 duplicated timestamp"),
        ("t,y\n2024-01-01,1\n2024-01-02,abc\n2024-01-03,3\n", r"non-numeric value 'abc'"),
        ("t,y\n2024-01-01,1\n2024-01-02,2\n", r"at least 3"),
        (
            "t,y\n2024-01-01 00:00,1\n2024-01-01 01:00,2\n2024-01-01 02:00,2\n2024-01-01 02:30,2\n",
            r"do not fall on the h grid",
        ),  # fmt: skip
    ],
)
def test_malformed_csv_errors(tmp_path, text, message):
    with pytest.raises(RnnkitError, match=message):
        read_csv(write(tmp_path, text), "t")


def test_missing_column_and_file(tmp_path):
    path = write(tmp_path, "t,y\n2024-01-01,1\n2024-01-02,2\n2024-01-03,3\n")
    with pytest.raises(RnnkitError, match="no column 'z'; its columns are t, y"):
        read_csv(path, "t", ["z"])
    with pytest.raises(RnnkitError, match="does not exist"):
        read_csv(tmp_path / "nope.csv", "t")


def test_rows_as_steps_keeps_file_order_and_duplicates(tmp_path):
    path = write(tmp_path, "t,y\n2024-01-01 00:05,1\n2024-01-01 00:05,2\n2024-01-01 00:00,3\n")
    s = read_csv(path, "t", regular=False)
    np.testing.assert_array_equal(s.values[:, 0], [1, 2, 3])
    assert s.report["regular"] is False


def test_scaler_uses_training_rows_only():
    values = np.arange(20.0)[:, None]
    scaler = Scaler.fit(values[:10], ["y"])
    assert scaler.mean == [4.5] and scaler.std == [pytest.approx(np.std(np.arange(10.0)))]
    scaled = scaler.transform(values)
    assert scaled[:10].mean() == pytest.approx(0.0) and scaled[10:].mean() > 2  # future unseen
    np.testing.assert_allclose(scaler.inverse(scaled), values)
    log = Scaler.fit(values[1:10], ["y"], log=True)
    np.testing.assert_allclose(Scaler.from_dict(log.to_dict()).inverse(log.transform(values[1:])),
                               values[1:])  # fmt: skip


def test_scaler_refuses_constant_and_nonpositive_log():
    with pytest.raises(RnnkitError, match="'y' is constant"):
        Scaler.fit(np.ones((10, 1)), ["y"])
    with pytest.raises(RnnkitError, match="positive values"):
        Scaler.fit(np.zeros((10, 1)), ["y"], log=True)


def test_windows_never_show_the_targets():
    t = np.arange(10.0)[:, None]
    x, y = make_windows(np.hstack([t, -t]), t, 4, 2)
    assert x.shape == (5, 4, 2) and y.shape == (5, 2, 1)
    np.testing.assert_array_equal(x[2, :, 0], [2, 3, 4, 5])
    np.testing.assert_array_equal(y[2, :, 0], [6, 7])
    assert (x[:, -1, 0] < y[:, 0, 0]).all()  # every target comes after every input
    with pytest.raises(RnnkitError, match="shorter than one window"):
        make_windows(t[:5], t[:5], 4, 2)


def test_calendar_features():
    index = pd.date_range("2024-01-01", periods=3, freq="MS")
    f = calendar_features(index, ["month"])
    assert f.shape == (3, 2)
    np.testing.assert_allclose(f[0], [0.0, 1.0], atol=1e-12)  # January: angle 0
    np.testing.assert_allclose(f[1], [np.sin(2 * np.pi / 12), np.cos(2 * np.pi / 12)])
    with pytest.raises(RnnkitError, match="unknown calendar"):
        calendar_features(index, ["week"])


def test_reads_the_real_series(dataset):
    airline = read_csv(dataset("airline-passengers") / "airline-passengers.csv", "Month",
                       ["Passengers"])  # fmt: skip
    assert len(airline) == 144 and airline.freq == "MS" and airline.values[0, 0] == 112
    nab = dataset("nab") / "realKnownCause"
    with pytest.raises(RnnkitError, match="621 gap"):
        read_csv(nab / "ambient_temperature_system_failure.csv", "timestamp")
    with pytest.raises(RnnkitError, match="12 duplicated"):
        read_csv(nab / "machine_temperature_system_failure.csv", "timestamp")
    as_rows = read_csv(nab / "machine_temperature_system_failure.csv", "timestamp", regular=False)
    assert len(as_rows) == 22695
