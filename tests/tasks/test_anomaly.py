"""Anomaly detection: score accumulation, thresholds, refractory flags, the `rnnkit detect` CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.tasks.anomaly import (
    DetectConfig,
    accumulate,
    dynamic_threshold,
    flags_from,
    threshold_scores,
)


def test_accumulate_is_the_rms_over_the_last_rows():
    z = np.array([3.0, 4.0, 0.0, 0.0])
    np.testing.assert_allclose(accumulate(z, 2), [3.0, 5 / np.sqrt(2), 4 / np.sqrt(2), 0.0])
    np.testing.assert_allclose(accumulate(z, 1), np.abs(z))


def test_flags_respect_start_and_refractory():
    scores = np.array([9, 0, 5, 5, 0, 0, 5, 0, 0, 5], float)
    np.testing.assert_array_equal(np.flatnonzero(flags_from(scores, 5, 3, start=1)), [2, 6])
    np.testing.assert_array_equal(np.flatnonzero(flags_from(scores, 5, 0)), [0, 2, 3, 6, 9])


def test_dynamic_threshold_separates_outliers_from_noise():
    rng = np.random.default_rng(0)
    scores = np.abs(rng.normal(size=2000))
    scores[[500, 1500]] = 12.0
    eps = dynamic_threshold(scores)
    assert np.abs(rng.normal(size=2000)).max() < eps < 12.0
    assert set(np.flatnonzero(scores >= eps)) == {500, 1500}


def test_calibrated_threshold_is_a_chi_square_tail_after_rescaling():
    rng = np.random.default_rng(1)
    z = 3.0 * np.abs(rng.normal(size=20000))  # miscalibrated by a factor 3: rescaled away
    cfg = DetectConfig(accumulate=20, refractory=0)
    score, flags, threshold = threshold_scores(z, 1000, cfg)
    assert threshold == pytest.approx(np.sqrt(65.4207 / 20), rel=1e-5)  # chi2.isf(1e-6, 20)
    assert flags.sum() == 0
    z[15000:15010] = 15.0
    _, flags, _ = threshold_scores(z, 1000, cfg)
    assert 15000 <= np.flatnonzero(flags).min() <= 15010


def test_cli_detect_finds_a_spike_and_scores_it(tmp_path):
    t = np.arange(1200)
    values = np.sin(2 * np.pi * t / 24) + 0.05 * np.random.default_rng(0).normal(size=len(t))
    values[900] += 4.0
    index = pd.date_range("2020-01-01", periods=len(t), freq="h")
    csv = tmp_path / "data" / "spike.csv"
    csv.parent.mkdir()
    pd.DataFrame({"timestamp": index, "value": values}).to_csv(csv, index=False)
    windows = tmp_path / "windows.json"
    windows.write_text(json.dumps({"data/spike.csv": [[str(index[880]), str(index[920])]]}))
    args = ["detect", "--csv", str(csv), "--time-col", "timestamp", "--windows", str(windows),
            "--input-chunk-length", "24", "--hidden-size", "16", "--max-steps", "150",
            "--train-fraction", "0.4", "--out", str(tmp_path / "out")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert list(scores.columns) == ["time", "value", "z", "score", "flag"]
    flagged = np.flatnonzero(scores["flag"].to_numpy())
    assert 900 in flagged and len(flagged) <= 3
    assert "windows detected 1, missed 0" in result.output
    assert (tmp_path / "out" / "detections.png").is_file()


def test_cli_detect_too_short(tmp_path):
    csv = tmp_path / "s.csv"
    index = pd.date_range("2020-01-01", periods=50, freq="h")
    pd.DataFrame({"timestamp": index, "value": np.arange(50.0)}).to_csv(csv, index=False)
    args = ["detect", "--csv", str(csv), "--time-col", "timestamp", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "training part" in result.output


@pytest.mark.parametrize("missing", ["windows", "key"])
def test_cli_detect_bad_windows(tmp_path, missing):
    csv = tmp_path / "s.csv"
    index = pd.date_range("2020-01-01", periods=400, freq="h")
    pd.DataFrame({"timestamp": index, "value": np.sin(np.arange(400.0))}).to_csv(csv, index=False)
    windows = tmp_path / "w.json"
    if missing == "key":
        windows.write_text("{}")
    args = ["detect", "--csv", str(csv), "--time-col", "timestamp", "--windows", str(windows),
            "--out", str(tmp_path / "o")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert ("does not exist" if missing == "windows" else "no windows for") in result.output
