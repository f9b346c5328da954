"""benchmarks/forecast.py on one series of the suite: strict JSON, every model, null + reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def refuse_nan(value: str):
    raise ValueError(f"not strict JSON: {value}")


def test_suite_on_airline_prints_strict_json(dataset):
    dataset("airline-passengers")  # in the session's data folder (or skipped, saying why)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.forecast", "--series", "airline",
                           "--origins", "2"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout, parse_constant=refuse_nan)
    (series,) = report["series"]
    assert series["frequency"] == "MS" and series["horizon"] == 18 and series["origins"] == 2
    models = series["models"]
    assert {"rnnkit LSTM", "seasonal naive", "AutoARIMA (statsforecast)"} <= set(models)
    assert 0 <= models["rnnkit LSTM"]["coverage_90"] <= 1
    ets = models["ETS (statsmodels)"]
    assert ets["MASE"] > 0 and ets["coverage_90"] is None
    assert ets["null_because"]["coverage_90"] == "point forecast: no interval"
    against = report["overall"]["rnnkit_against_classical"]
    assert against["series"] == 1 and against["suite_best_classical"] in models
    best = min((m["MASE"], n) for n, m in models.items() if n != "rnnkit LSTM")
    assert against["per_series"]["airline"]["best_classical"] == best[1]
    assert against["ahead_of_each_series_best"] == int(models["rnnkit LSTM"]["MASE"] < best[0])
    assert report["cpu_seconds"] > 0


def test_unknown_series_is_refused():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "benchmarks.forecast", "--series", "nope"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "unknown series ['nope']" in done.stderr
