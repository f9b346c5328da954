"""`rnnkit train TASK --help` shows the training defaults the task really uses."""

from __future__ import annotations

import importlib
import re

import pytest
from click.testing import CliRunner

from rnnkit.cli import main

FLAGS = {"lr": "lr", "warmup": "warmup_steps", "max-steps": "max_steps",
         "max-epochs": "max_epochs", "max-time": "max_time", "eval-every": "eval_every",
         "log-every": "log_every", "patience": "patience"}  # fmt: skip
TASKS = {"music": "music", "sentiment": "sentiment", "speech-digits": "speech",
         "speech-ctc": "speech_ctc", "translate": "translate", "caption": "caption"}  # fmt: skip


@pytest.mark.parametrize("command", sorted(TASKS))
def test_help_shows_the_task_defaults(command):
    text = CliRunner().invoke(main, ["train", command, "--help"], terminal_width=400).output
    defaults = importlib.import_module(f"rnnkit.tasks.{TASKS[command]}").DEFAULT_TRAIN
    for flag, field in FLAGS.items():
        shown = re.search(rf"--{flag}\b[^\n]*?\[default: ([^\]]+)\]", text)
        assert shown is not None, f"--{flag} shows no default"
        value = getattr(defaults, field)
        expected = "none" if value is None else str(value)
        assert shown.group(1) in (expected, str(float(value)) if value is not None else "none"), (
            f"{command} --{flag}: help says {shown.group(1)}, the task uses {expected}"
        )
