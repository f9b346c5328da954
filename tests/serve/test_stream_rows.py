"""`StreamScheduler` without HTTP: streams with different prompts and settings, joining while
others run (within a block of draws made ahead and across blocks), finishing at different steps
or cancelled, each draw what they draw alone."""

from __future__ import annotations

import threading
import time

import pytest

import rnnkit
from rnnkit.serve import streams
from rnnkit.serve.streams import Stream, StreamScheduler

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 6  # fmt: skip
#: (prompt, max_tokens, temperature, top_k, top_p, seed)
FIRST = [("First", 150, 0.8, 40, None, 1), ("A", 0, 0.8, 40, None, 2),
         ("You are all resolved", 1, 1.0, None, None, 3), ("Sp", 25, 0.0, None, None, 4),
         ("All:\n", 2000, 0.8, 40, None, 5), ("hear", 33, 1.3, 5, 0.9, 6)]  # fmt: skip
LATER = [("Before we", 130, 0.7, None, 0.8, 7), ("F", 12, 1.0, 3, None, 8),
         ("speak", 50, 0.0, 10, 0.5, 9), ("First", 40, 0.8, 40, None, 1)]  # fmt: skip


@pytest.fixture(scope="module", params=["lstm", "gru"])
def lm(request, tmp_path_factory):
    from rnnkit.tasks import charlm

    root = tmp_path_factory.mktemp(request.param)
    (root / "text.txt").write_text(TEXT)
    flags = {"text": str(root / "text.txt"), "cell": request.param, "hidden": 16, "layers": 2,
             "embed": 8, "batch": 4, "seq_len": 16, "max_steps": 4, "eval_every": 2,
             "warmup": 1, "progress": "none"}  # fmt: skip
    run = charlm.train(flags, out=str(root / "run")).run_dir
    return rnnkit.load(run, checkpoint="last")


class Collected:
    """A stream's events, gathered on the scheduler's thread."""

    def __init__(self, lm, settings) -> None:
        self.settings, self.events, self.done = settings, [], threading.Event()
        prompt, max_tokens, temperature, top_k, top_p, seed = settings
        self.stream = Stream(lm.encode(prompt), max_tokens, temperature, top_k, top_p, seed,
                             self.emit)  # fmt: skip

    def emit(self, event: dict) -> None:
        self.events.append(event)
        if event.get("done"):
            self.done.set()

    def tokens(self) -> list[dict]:
        return [e for e in list(self.events) if "token" in e]


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


@pytest.mark.parametrize("block", [None, 3])
def test_streams_joining_and_leaving_draw_what_they_draw_alone(lm, block, monkeypatch):
    if block:  # draws made ahead for 3 steps at a time (64 by default): blocks end often
        monkeypatch.setattr(streams, "_block", lambda classes: block)
    scheduler = StreamScheduler(lm)
    try:
        first = [Collected(lm, s) for s in FIRST]
        for c in first:
            scheduler.submit(c.stream)
        long = first[4]
        wait_for(lambda: len(long.tokens()) >= 5)
        later = [Collected(lm, s) for s in LATER]  # join while the first ones run
        for c in later:
            scheduler.submit(c.stream)
        wait_for(lambda: all(len(c.tokens()) >= 1 for c in later))
        long.stream.cancel()  # its client left
        for c in first + later:
            if c is not long:
                assert c.done.wait(60)
    finally:
        scheduler.close()
    for c in first + later:
        prompt, max_tokens, temperature, top_k, top_p, seed = c.settings
        alone = list(lm.stream(prompt, min(max_tokens, 200), temperature, top_k, top_p, seed))
        got = c.tokens()
        assert [e["step"] for e in got] == list(range(len(got)))
        assert [e["token"] for e in got] == [t.text for t in alone[: len(got)]], c.settings
        want = [t.probability for t in alone[: len(got)]]
        assert [e["probability"] for e in got] == pytest.approx(want, abs=1e-5)
        if c is long:
            assert 5 <= len(got) < 200 and not c.done.is_set()
        else:
            assert len(got) == max_tokens
            assert c.events[-1] == {"done": True, "text": "".join(e["token"] for e in got),
                                    "tokens": max_tokens}  # fmt: skip
    # stepped together: far fewer steps than tokens
    assert scheduler.steps < sum(len(c.tokens()) for c in first + later) / 2
    assert scheduler.active == [] and scheduler.state is None
