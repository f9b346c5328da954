"""benchmarks/nab.py on a tiny NAB-shaped folder: strict JSON, unlabelled series and categories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def write_series(path: Path, spike: int | None, seed: int) -> pd.DatetimeIndex:
    t = pd.date_range("2020-01-01", periods=600, freq="h")
    rng = np.random.default_rng(seed)
    values = np.sin(2 * np.pi * np.arange(600) / 24) + 0.05 * rng.normal(size=600)
    if spike is not None:
        values[spike] += 5.0
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"timestamp": t, "value": values}).to_csv(path, index=False)
    return t


def benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.nab", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_benchmark_reports_strict_json_and_unlabelled_series(tmp_path):
    data = tmp_path / "nab"
    t = write_series(data / "realKnownCause" / "a.csv", 400, 0)
    write_series(data / "realKnownCause" / "quiet.csv", None, 1)
    write_series(data / "realTweets" / "b.csv", 450, 2)
    write_series(data / "artificialNoAnomaly" / "c.csv", None, 3)
    windows = {"realKnownCause/a.csv": [[str(t[390]), str(t[420])]],
               "realKnownCause/quiet.csv": [],
               "realTweets/b.csv": [[str(t[440]), str(t[470])]],
               "artificialNoAnomaly/c.csv": []}  # fmt: skip
    (data / "labels").mkdir()
    (data / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    out = tmp_path / "out"
    done = benchmark("--data", str(data), "--out", str(out), "--max-steps", "30", "--jobs", "2")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout, parse_constant=lambda c: 1 / 0)  # NaN would raise
    assert report["categories"] == ["realKnownCause", "realTweets"]  # c has no window
    assert set(report["overall"]) >= {"label_free", "random_best", "best_threshold"}
    assert report["held_out"]["windows"] == 1 and set(report["per_category"]) == {
        "realKnownCause", "realTweets"}  # fmt: skip
    rows = {r["series"]: r for r in report["series"]}
    quiet = rows["realKnownCause/quiet.csv"]
    assert quiet["windows"] == 0 and quiet["score"] is None and "no labelled window" in (
        quiet["reason"])  # fmt: skip
    assert rows["realKnownCause/a.csv"]["tp"] == 1  # the spike is found
    again = benchmark("--data", str(data), "--out", str(out), "--reuse",
                      "--categories", "realTweets,artificialNoAnomaly")  # fmt: skip
    assert again.returncode == 0, again.stderr
    reused = json.loads(again.stdout, parse_constant=lambda c: 1 / 0)
    assert reused["per_category"]["artificialNoAnomaly"]["score"] is None
    b = next(r for r in reused["series"] if r["series"] == "realTweets/b.csv")
    assert b == rows["realTweets/b.csv"]  # read back, not trained again
    missing = benchmark("--data", str(data), "--categories", "realTraffic")
    assert missing.returncode == 2 and "has no category realTraffic" in missing.stderr
