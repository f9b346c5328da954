"""Training steps that back off when the cores are busy: `ThreadTuner`.

On a shared machine a step's threads wait for each other: torch's parallel regions and rnnkit's
thread teams end in barriers, and a thread whose core is taken by a neighbour process holds up
the others for a scheduler slice. With three busy neighbours on two cores a small language
model's step ran 9-11x slower on two threads and 2x slower on one (`benchmarks.contention`,
docs/performance.md). The tuner therefore tries the other thread count now and then, for a few
steps, and keeps whichever ran the steps faster, so a run follows the machine's load both ways.

Changing torch's thread count changes the process, which a library must not do on its own: the
trainer tunes only where the application asked (`adapt_threads`; the ``rnnkit`` command line
does), and puts the count back when training ends.
"""

from __future__ import annotations

import os
import statistics

import torch

_switch = {"adapt": False}


def adapt_threads(enabled: bool = True) -> None:
    """Opt in (or out) to trainers tuning torch's thread count to the machine's load."""
    _switch["adapt"] = enabled


def adapting() -> bool:
    """True if the application opted in: `adapt_threads`, or ``RNNKIT_THREADS=adapt`` (what the
    command line sets)."""
    return _switch["adapt"] or os.environ.get("RNNKIT_THREADS") == "adapt"


class ThreadTuner:
    """After ``every`` steps, run ``trial`` steps on the other thread count (1, or the count
    training started with) and keep it if their median step was faster by ``margin``. A trial
    that loses doubles the wait before the next (up to ``longest`` steps), so a quiet machine
    pays a trial's slower steps rarely; one that wins resets it.

    Call `record` with each step's seconds; `threads` is the count in use. The first
    ``warmup`` steps (kernel loading, allocator growth) are not compared.
    """

    def __init__(self, every: int = 50, trial: int = 5, margin: float = 0.1, warmup: int = 3,
                 longest: int = 800) -> None:  # fmt: skip
        self.start = torch.get_num_threads()
        self.threads = self.start
        self.every, self.trial, self.margin, self.warmup = every, trial, margin, warmup
        self.base, self.longest = every, longest
        self.recent: list[float] = []  # step seconds at `threads` since the last trial
        self.trying: int | None = None
        self.tried: list[float] = []
        self.seen = 0

    @property
    def active(self) -> bool:
        """False where there is nothing to choose (torch runs one thread)."""
        return self.start > 1

    def record(self, seconds: float) -> None:
        """Account one step of ``seconds``; may start or end a trial (changing torch's count)."""
        self.seen += 1
        if not self.active or self.seen <= self.warmup:
            return
        if self.trying is not None:
            self.tried.append(seconds)
            if len(self.tried) >= self.trial:
                self._decide()
            return
        self.recent.append(seconds)
        if len(self.recent) >= self.every:
            self.trying, self.tried = self._other(), []
            torch.set_num_threads(self.trying)

    def restore(self) -> None:
        """Put torch's thread count back to what it was when training started."""
        torch.set_num_threads(self.start)
        self.threads, self.trying = self.start, None

    def _other(self) -> int:
        return 1 if self.threads != 1 else self.start

    def _decide(self) -> None:
        current = statistics.median(self.recent[-2 * self.trial :])
        if statistics.median(self.tried) < (1 - self.margin) * current:
            self.threads, self.recent, self.every = self.trying, list(self.tried), self.base
        else:
            torch.set_num_threads(self.threads)
            self.recent, self.every = [], min(2 * self.every, self.longest)
        self.trying, self.tried = None, []
