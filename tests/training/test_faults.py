"""Fault tolerance: SIGKILL at random moments and inside checkpoint writes, SIGTERM, NaN batches.

Training runs in forked child processes (torch is already imported, so a fork costs
milliseconds); the parent kills them and checks that the run always resumes, loses at most the
steps since its last checkpoint, and ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
import traceback
from collections.abc import Callable

import pytest
import torch
from test_trainer import SumTask, quiet, train_records, weights

from rnnkit.errors import RnnkitError
from rnnkit.training import Trainer
from rnnkit.training import checkpoint as ckpt

# 33 kills: 11 in the second save of a life (about 6 steps each) and 22 random ones (1-4 steps
# after the last logged one, plus whatever the child runs before the signal lands): about 150
# steps, more on a loaded machine, so the run is long enough that no kill finds it finished.
STEPS, EVERY = 300, 3


def fork(child: Callable[[], None]) -> int:
    """Run ``child`` in a forked process; its pid. The child exits 0, or 1 on an exception."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            child()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def wait(pid: int) -> int:
    """The child's exit status, or minus the signal that killed it."""
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# --- ways to die inside the second checkpoint save of a process -----------------------------


def torn_write(k: int) -> Callable[[], None]:
    """Die with half of the k-th file of the save written."""

    def patch() -> None:
        real, calls = ckpt._write_synced, [0]

        def write(path, data):
            if calls[0] == k:
                real(path, data[: len(data) // 2])
                die()
            calls[0] += 1
            real(path, data)

        ckpt._write_synced = write

    return patch


def at_commit(after: bool) -> Callable[[], None]:
    """Die just before, or just after, the rename that commits the checkpoint."""

    def patch() -> None:
        real = os.rename

        def rename(src, dst):
            if ".tmp-step" in str(src) and not after:
                die()
            real(src, dst)
            if ".tmp-step" in str(src):
                die()

        os.rename = rename

    return patch


def in_mirror(i: int) -> Callable[[], None]:
    """Die while linking the i-th top-level file, its temporary link made."""

    def patch() -> None:
        real, calls = ckpt._link, [0]

        def link(source, target):
            if calls[0] == i:
                os.link(source, target.with_name(target.name + ".tmp"))
                die()
            calls[0] += 1
            real(source, target)

        ckpt._link = link

    return patch


def in_prune() -> None:
    """Die after deleting one file of the checkpoint being pruned."""

    def prune(root, keep):
        for old in ckpt._steps(root)[keep:]:
            (old / ckpt.MODEL).unlink()
        die()

    ckpt._prune = prune


def on_second_save(patch: Callable[[], None]) -> None:
    real, saves = ckpt.save_checkpoint, [0]

    def save(*args, **kwargs):
        saves[0] += 1
        if saves[0] == 2:
            patch()
        return real(*args, **kwargs)

    ckpt.save_checkpoint = save


DEATHS = [torn_write(k) for k in range(5)] + [at_commit(False), at_commit(True)]
DEATHS += [in_mirror(i) for i in (0, 2, 4)] + [in_prune]


def config():
    return quiet(max_steps=STEPS, eval_every=10_000, checkpoint_every=EVERY)


def last_logged(run) -> int:
    """The last training step in the run's log, read while a process may be appending to it: a
    line not yet ended by its newline is not read."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    text = path.read_text()
    records = map(json.loads, text[: text.rfind("\n") + 1].splitlines())
    return max((r["step"] for r in records if r["split"] == "train"), default=0)


def kill_when(run, pid: int, step: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` a random instant after the run has logged ``step``."""
    deadline = time.monotonic() + 60
    while last_logged(run) < step and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(random.uniform(0, 0.004))
    os.kill(pid, sig)


def test_sigkill_anywhere_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    Trainer(SumTask(), config(), tmp_path / "straight").fit()
    run, rng = tmp_path / "run", random.Random(0)
    plan = [d for death in DEATHS for d in (death, None, None)]  # 11 in saves, 22 at random
    for n, death in enumerate(plan):

        def child(death=death, resume=n > 0):
            if death is not None:
                on_second_save(death)
            Trainer(SumTask(), None if resume else config(), run, resume=resume).fit()

        before = last_logged(run)
        pid = fork(child)
        if death is None:
            kill_when(run, pid, before + rng.randint(1, 4))
        assert wait(pid) == -signal.SIGKILL, f"kill {n} ({death}) did not happen"
        logged = last_logged(run)
        resumed = Trainer(SumTask(), None, run, resume=True).counters.step  # always resumes
        assert logged - EVERY <= resumed <= logged, (n, logged, resumed)
        assert resumed < STEPS
    assert Trainer(SumTask(), None, run, resume=True).fit().step == STEPS
    straight, resumed = weights(tmp_path / "straight"), weights(run)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    losses = [r["loss"] for r in train_records(tmp_path / "straight")]
    assert [r["loss"] for r in train_records(run)] == losses  # each step logged once, same loss


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    pid = fork(lambda: Trainer(SumTask(), config(), run).fit())
    kill_when(run, pid, 5, signal.SIGTERM)
    assert wait(pid) == 0
    state = json.loads((run / ckpt.TRAINER_STATE).read_text())
    assert state["step"] == last_logged(run) >= 5  # nothing lost
    assert Trainer(SumTask(), None, run, resume=True).counters.step == state["step"]


class NanAt(SumTask):
    """SumTask whose batch of step ``bad`` holds a NaN."""

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def train_batch(self, step, rng):
        x, y = super().train_batch(step, rng)
        if step == self.bad:
            x[3, 2, 0] = math.nan
        return x, y


def test_a_nan_in_a_batch_raises_stops_or_is_skipped(tmp_path):
    with pytest.raises(RnnkitError, match="diverged at step 5.*NaN/inf in the data"):
        Trainer(NanAt(5), quiet(max_steps=10), tmp_path / "raise").fit()
    stop = Trainer(NanAt(5), quiet(max_steps=10, checkpoint_every=2, on_nonfinite="stop"),
                   tmp_path / "stop").fit()  # fmt: skip
    assert stop.stop_reason == "diverged" and stop.step == 5
    assert json.loads((tmp_path / "stop" / ckpt.TRAINER_STATE).read_text())["step"] == 4
    with pytest.warns(UserWarning, match="step 5 skipped: not finite"):
        skip = Trainer(NanAt(5), quiet(max_steps=10, on_nonfinite="skip"), tmp_path / "skip").fit()
    assert skip.step == 10 and skip.stop_reason == "budget" and math.isfinite(skip.final["loss"])
    assert all(torch.isfinite(w).all() for w in weights(tmp_path / "skip").values())
    records = train_records(tmp_path / "skip")
    assert [r["step"] for r in records if r.get("skipped")] == [6]
    assert all(math.isfinite(r["loss"]) for r in records if not r.get("skipped"))


def test_skipping_gives_up_after_too_many_bad_steps_in_a_row(tmp_path):
    class AlwaysNan(NanAt):
        def train_batch(self, step, rng):
            x, y = SumTask.train_batch(self, step, rng)
            return x * math.nan, y

    with pytest.warns(UserWarning), pytest.raises(RnnkitError, match="20 steps in a row"):
        Trainer(AlwaysNan(0), quiet(max_steps=50, on_nonfinite="skip"), tmp_path / "r").fit()
