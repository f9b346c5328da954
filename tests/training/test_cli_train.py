"""`rnnkit train TASK` as generated from the task specs: every task, the time-series tasks trained
and resumed from the command line (with new budgets after ``--resume RUN``), bad flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.tasks import TASKS

LOOP = ["--max-steps", "4", "--eval-every", "2", "--log-every", "2", "--warmup", "1",
        "--progress", "none"]  # fmt: skip


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def steps_of(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["train"]["max_steps"]


def test_train_lists_every_task():
    text = invoke("train", "--help").output
    assert all(f"  {name} " in text for name in TASKS)


def test_forecast_trains_resumes_with_a_new_budget_and_forecasts(tmp_path):
    t = np.arange(60)
    months = pd.date_range("2000-01-01", periods=60, freq="MS").strftime("%Y-%m")
    pd.DataFrame({"month": months, "y": 10 + np.sin(t / 2)}).to_csv(tmp_path / "m.csv", index=False)
    run = tmp_path / "run"
    result = invoke("train", "forecast", "--csv", tmp_path / "m.csv", "--time-col", "month",
                    "--target", "y", "--input-chunk-length", "12", "--output-chunk-length", "3",
                    "--hidden-size", "8", *LOOP, "--out", run)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "budget: 4 steps" in result.output
    result = invoke("train", "--resume", run, "--max-steps", "6")
    assert result.exit_code == 0, result.output
    assert "budget: 6 steps" in result.output and steps_of(run) == 6
    result = invoke("predict", run, "--horizon", "3", "--json")
    assert result.exit_code == 0, result.output
    result = invoke("train", "--resume", run, "--hidden-size", "4")
    assert result.exit_code == 2 and "cannot change --hidden-size" in result.output


def test_anomaly_trains_from_the_command_line(tmp_path):
    values = np.sin(2 * np.pi * np.arange(200) / 24)
    times = pd.date_range("2020-01-01", periods=200, freq="h")
    pd.DataFrame({"timestamp": times, "value": values}).to_csv(tmp_path / "h.csv", index=False)
    result = invoke("train", "anomaly", "--csv", tmp_path / "h.csv", "--time-col", "timestamp",
                    "--train-fraction", "0.5", "--input-chunk-length", "12", "--rows-as-steps",
                    *LOOP, "--out", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "run" / "config.json").read_text())["task_config"]
    assert settings["regular"] is False and settings["columns"] == ["value"]


def test_bad_flags_are_one_line_and_exit_2(tmp_path):
    result = invoke("train", "charlm", "--cell", "transformer")
    assert result.exit_code == 2 and "transformer" in result.output
    result = invoke("train", "charlm", "--hidden", "8")
    assert result.exit_code == 2 and "--hidden-size" in result.output  # click's "did you mean"
    result = invoke("train", "--resume", tmp_path, "charlm")
    assert result.exit_code == 2 and "rnnkit train TASK --resume RUN" in result.output
