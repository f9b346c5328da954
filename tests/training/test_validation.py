"""User errors in settings and on the command line: RnnkitError, one stderr line, exit 2;
internal errors keep their traceback and exit 1."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_trainer import SumTask, quiet

from rnnkit.cli import main
from rnnkit.errors import RnnkitError
from rnnkit.training import TrainConfig, Trainer


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"clip": -1.0}, "clip must be 0 or more, got -1.0"),
        ({"warmup_steps": -1}, "warmup_steps must be 0 or more"),
        ({"patience": 0}, "patience must be positive, got 0"),
        ({"lr": math.nan}, "lr must be positive, got nan"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio must be within \\[0, 1\\]"),
        ({"betas": (0.9, 2.0)}, "beta2 must be within \\[0, 1\\]"),
        ({"keep_checkpoints": 1}, "keep_checkpoints must be at least 2"),
        ({"on_nonfinite": "ignore"}, "on_nonfinite must be 'raise', 'stop' or 'skip'"),
        ({"checkpoint_every": 0}, "checkpoint_every must be positive"),
    ],
)
def test_settings_that_cannot_work_are_refused(tmp_path, setting, message):
    with pytest.raises(RnnkitError, match=message):
        Trainer(SumTask(), quiet(**setting), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lr": "fast"}, "training setting lr = 'fast' is not of type float"),
        ({"max_steps": 2.5}, "max_steps = 2.5 is not of type int \\| None"),
        ({"tensorboard": 1}, "tensorboard = 1 is not of type bool"),
        ({"betas": [0.9]}, "betas = \\[0.9\\] is not of type tuple"),
    ],
)
def test_settings_of_the_wrong_type_are_refused(values, message):
    with pytest.raises(RnnkitError, match=message):
        TrainConfig.from_dict(values)


def test_a_toml_value_of_the_wrong_type_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "t.txt").write_text("some text to learn from, long enough\n" * 20)
    (tmp_path / "s.toml").write_text('hidden = "big"\nmax-steps = 2\n')
    args = ["train", "charlm", "--text", tmp_path / "t.txt", "--config", tmp_path / "s.toml"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2
    assert result.output.strip() == "error: charlm setting hidden = 'big' is not of type int"


def test_user_errors_exit_2_in_one_line_and_bugs_exit_1_with_a_traceback(tmp_path):
    def rnnkit(code: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", f"import rnnkit.cli as cli\n{code}"]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    user = rnnkit(f"cli.main(['sample', {str(tmp_path / 'missing')!r}])")
    assert user.returncode == 2 and user.stderr.count("\n") == 1
    assert user.stderr.startswith("error: run directory") and "Traceback" not in user.stderr
    bug = rnnkit("cli.use._task_of = lambda *args: 1 / 0\ncli.main(['sample', 'run'])")
    assert bug.returncode == 1
    assert "Traceback" in bug.stderr and "ZeroDivisionError" in bug.stderr


def test_resuming_a_run_that_is_not_one_is_a_user_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"format": "rnnkit-run", "format_version": 2}')
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "format version 2, this rnnkit reads version 1; use the rnnkit release" in result.output
