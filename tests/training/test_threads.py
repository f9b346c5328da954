"""Training backs off when the cores are busy (`rnnkit.training.threads`): the tuner's choices
on given step times, and a trainer that changes torch's threads only where asked."""

from __future__ import annotations

import pytest
import torch

from rnnkit.training import threads
from rnnkit.training.threads import ThreadTuner


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def feed(tuner: ThreadTuner, seconds_at: dict[int, float], steps: int) -> list[int]:
    """Record ``steps`` steps, each taking the time its thread count takes; the counts used."""
    used = []
    for _ in range(steps):
        count = torch.get_num_threads()
        used.append(count)
        tuner.record(seconds_at[count])
    return used


def test_a_loaded_machine_moves_to_one_thread_and_back_when_quiet(two_threads):
    tuner = ThreadTuner(every=10, trial=3, warmup=0)
    feed(tuner, {2: 0.5, 1: 0.2}, 18)  # neighbours: two threads wait on each other
    assert tuner.threads == 1 and torch.get_num_threads() == 1
    feed(tuner, {2: 0.1, 1: 0.2}, 20)  # quiet again
    assert tuner.threads == 2 and torch.get_num_threads() == 2


def test_a_quiet_machine_keeps_its_threads_and_tries_less_often(two_threads):
    tuner = ThreadTuner(every=10, trial=3, warmup=0, longest=40)
    used = feed(tuner, {2: 0.1, 1: 0.16}, 200)
    assert tuner.threads == 2 and torch.get_num_threads() == 2
    assert 0 < used.count(1) <= 3 * 6  # trials at 10, 20, 40, then every 40 steps
    tuner.restore()
    assert torch.get_num_threads() == 2


def test_nothing_changes_unless_the_application_asks(monkeypatch):
    monkeypatch.delenv("RNNKIT_THREADS", raising=False)
    assert not threads.adapting()
    threads.adapt_threads()
    try:
        assert threads.adapting()
    finally:
        threads.adapt_threads(False)
    monkeypatch.setenv("RNNKIT_THREADS", "adapt")
    assert threads.adapting()


def test_one_thread_has_nothing_to_choose():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tuner = ThreadTuner(every=2, trial=1, warmup=0)
        feed(tuner, {1: 0.1}, 10)
        assert not tuner.active and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
