"""Anomaly detection: score accumulation, thresholds, refractory flags, the `rnnkit detect` CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.tasks.anomaly import (
    MAX_SCORE,
    MIN_HISTORY,
    DetectConfig,
    accumulate,
    beyond_range,
    dynamic_threshold,
    flags_from,
    likelihood_scores,
    row_scores,
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
    cfg = DetectConfig(threshold="calibrated", accumulate=20, refractory=0)
    score, flags, threshold = threshold_scores(z, 1000, cfg)
    assert threshold == pytest.approx(np.sqrt(65.4207 / 20), rel=1e-5)  # chi2.isf(1e-6, 20)
    assert flags.sum() == 0
    z[15000:15010] = 15.0
    _, flags, _ = threshold_scores(z, 1000, cfg)
    assert 15000 <= np.flatnonzero(flags).min() <= 15010


def test_likelihood_judges_recent_errors_against_the_series_own():
    rng = np.random.default_rng(2)
    z = np.abs(rng.normal(size=20000))
    z[:32] = 0.0  # no forecast for the first rows
    score = likelihood_scores(z, 32, 10, 8640)
    assert not score[: 32 + MIN_HISTORY].any() and score[32 + MIN_HISTORY :].all()
    np.testing.assert_allclose(likelihood_scores(5.0 * z, 32, 10, 8640), score, atol=1e-9)
    assert score.max() < 6.0  # no 1e-6 tail event in noise
    z[15000:15010] = 6.0  # a burst: its mean over 10 rows is far out of the past means
    burst = likelihood_scores(z, 32, 10, 8640)
    assert burst[15000:15010].max() > 20.0 and burst.max() <= MAX_SCORE
    np.testing.assert_array_equal(burst[:15000], score[:15000])  # causal
    noisier = z.copy()
    noisier[10000:] *= 3.0  # a new, noisier regime: an alarm, then it becomes the norm
    after = likelihood_scores(noisier, 32, 10, 1000)
    assert after[10000:10010].max() > 6.0 and after[12000:15000].max() < 6.0


def test_beyond_range_flags_values_outside_the_past_range_by_five_percent():
    values = np.array([0.0, 1.0, 0.5, 1.04, 1.2, -0.1, 0.3])
    np.testing.assert_array_equal(np.flatnonzero(beyond_range(values)), [4, 5])
    assert not beyond_range(values, first=5)[4]
    assert not beyond_range(np.array([2.0, 2.0, 2.0, 5.0])).any()  # no range yet
    two = np.stack([np.zeros(7), values], axis=1)
    np.testing.assert_array_equal(np.flatnonzero(beyond_range(two)), [4, 5])


def test_likelihood_threshold_flags_a_burst_and_a_new_extreme():
    rng = np.random.default_rng(3)
    z = np.abs(rng.normal(size=5000))
    values = np.sin(np.arange(5000) / 10.0)[:, None]
    values[4000] = 1.5  # beyond [-1, 1] by more than 5%
    z[2500:2510] = 6.0
    score, flags, threshold = threshold_scores(z, 750, DetectConfig(), values, first=0)
    assert threshold == pytest.approx(6.0) and score[4000] == MAX_SCORE
    (burst, extreme) = np.flatnonzero(flags)  # one alarm for the burst (refractory 200)
    assert 2500 <= burst <= 2503 and extreme == 4000
    _, flags, _ = threshold_scores(z, 750, DetectConfig(spatial=False), values)
    assert np.flatnonzero(flags).tolist() == [burst]


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


def test_likelihood_scores_nothing_before_its_history():
    values = 1.1 ** np.arange(1000.0)[:, None]  # beyond the range so far on every row
    z = np.ones(1000)
    score = row_scores(z, DetectConfig(), values=values, first=12)
    assert not score[: 12 + MIN_HISTORY].any() and (score[12 + MIN_HISTORY :] == MAX_SCORE).all()
    plain = row_scores(z, DetectConfig(spatial=False), values=values, first=12)
    assert plain.max() == pytest.approx(np.log10(2.0))  # constant errors: the median
