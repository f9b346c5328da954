"""Ctrl-C and SIGTERM during `Trainer.fit` under the CLI's group: inside a step, the step ends,
a checkpoint is saved and the command exits; anywhere else (an evaluation, the first step, which
may wait for the C++ kernels' build lock) the command ends at once with one line, "interrupted",
and status 143 (SIGTERM) or 130 (SIGINT), no traceback.

The trainer runs in a subprocess (`CHILD`) whose task sleeps where the signal is to land."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnkit.training import checkpoint as ckpt

CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
import click
from test_trainer import SumTask, quiet
from rnnkit.cli import _Group
from rnnkit.training import Trainer


class Sleepy(SumTask):
    def __init__(self, where, seconds):
        self.where, self.seconds = where, seconds

    def nap(self):
        print("sleeping", flush=True)
        time.sleep(self.seconds)

    def train_batch(self, step, rng):
        if (self.where, step) in (("first", 0), ("step", 3)):
            self.nap()
        return super().train_batch(step, rng)

    def evaluate(self, model, full):
        if self.where == "eval":
            self.nap()
        return super().evaluate(model, full)


@click.group(cls=_Group)
def main():
    pass


@main.command()
@click.argument("where")
@click.argument("seconds", type=float)
@click.argument("run")
def fit(where, seconds, run):
    config = quiet(max_steps=100, eval_every=2 if where == "eval" else 1000, checkpoint_every=50)
    result = Trainer(Sleepy(where, seconds), config, run).fit()
    print(result.stop_reason, result.step, flush=True)


main()
"""


def start(tmp_path: Path, where: str, seconds: float) -> subprocess.Popen:
    """The child, once its task has started to sleep ``where``."""
    code = CHILD.format(tests=str(Path(__file__).parent))
    command = [sys.executable, "-c", code, "fit", where, str(seconds), str(tmp_path / "run")]
    proc = subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line == "sleeping\n":
            return proc
    raise AssertionError(proc.stderr.read())


def signal_and_wait(proc: subprocess.Popen, sig: int) -> tuple[int, float, str, str]:
    """Send ``sig``; (exit status, seconds until the first line on stderr, or its end, rest of
    stdout, stderr). Timed to stderr's first line: the interpreter's exit after it (torch's
    teardown) takes up to a second, more on a loaded machine."""
    time.sleep(0.2)  # well inside the nap
    begin = time.monotonic()
    proc.send_signal(sig)
    first = proc.stderr.readline()
    while first.startswith("warning: rnnkit: waiting for"):  # another test process builds
        first = proc.stderr.readline()
    took = time.monotonic() - begin
    out, err = proc.communicate(timeout=30)
    return proc.returncode, took, out, first + err


@pytest.mark.parametrize(("where", "sig"), [("eval", signal.SIGTERM), ("eval", signal.SIGINT),
                                            ("first", signal.SIGTERM)])  # fmt: skip
def test_a_signal_outside_a_step_ends_the_command_at_once(tmp_path, where, sig):
    proc = start(tmp_path, where, 60)
    code, took, out, err = signal_and_wait(proc, sig)
    assert code == (143 if sig == signal.SIGTERM else 130)
    assert err == "interrupted\n"  # one line, no traceback
    assert out == ""  # fit did not return
    assert took < 10  # the nap lasts 60 s


def test_sigterm_in_a_step_finishes_it_and_saves_a_checkpoint(tmp_path):
    proc = start(tmp_path, "step", 1.0)
    code, _, out, err = signal_and_wait(proc, signal.SIGTERM)
    assert code == 0 and out.splitlines()[-1] == "interrupted 4"
    assert "Traceback" not in err
    assert json.loads((tmp_path / "run" / ckpt.TRAINER_STATE).read_text())["step"] == 4


def test_a_second_sigterm_in_a_step_aborts(tmp_path):
    proc = start(tmp_path, "step", 60)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # asks to stop after the step
    code, took, out, err = signal_and_wait(proc, signal.SIGTERM)
    assert code == 143 and err == "interrupted\n" and out == ""
    assert took < 10  # the step's nap lasts 60 s
