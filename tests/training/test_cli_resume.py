"""`rnnkit train --resume RUN` after a SIGKILL of a real `rnnkit train` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import torch
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.training import checkpoint as ckpt

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 4
SMALL = ["--hidden-size", "16", "--num-layers", "1", "--embed", "8", "--seq-len", "16",
         "--batch", "4", "--max-steps", "60", "--eval-every", "1000",
         "--checkpoint-every", "5"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def rnnkit(*args: str, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "rnnkit.cli", *map(str, args)]
    return subprocess.Popen(command, text=True, env=ENV, **kwargs)


def test_a_killed_training_resumes_from_the_command_line_to_the_same_weights(tmp_path):
    text, run, straight = tmp_path / "hamlet.txt", tmp_path / "run", tmp_path / "straight"
    text.write_text(TEXT)
    args = ["train", "charlm", "--text", text, *SMALL]
    result = CliRunner().invoke(main, [*map(str, args), "--progress", "none", "--out", straight])
    assert result.exit_code == 0, result.output
    proc = rnnkit(*args, "--progress", "log", "--log-every", "1", "--out", run,
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    for line in proc.stdout:
        if line.startswith("step 23 "):
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=60) == -signal.SIGKILL
    resumed = subprocess.run([sys.executable, "-m", "rnnkit.cli", "train", "--resume", str(run)],
                             capture_output=True, text=True, env=ENV, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    first = int(resumed.stdout.split()[1])  # "step N loss ...": resumed from a checkpoint
    assert 21 <= first <= 26 and "budget: 60 steps" in resumed.stdout
    a, _ = ckpt.read_tensors(straight / ckpt.MODEL)
    b, _ = ckpt.read_tensors(run / ckpt.MODEL)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_needs_a_run_of_a_trainable_task(tmp_path):
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(main, ["train", "--resume", "x", "charlm"])
    assert result.exit_code == 2 and "rnnkit train TASK --resume RUN" in result.output
