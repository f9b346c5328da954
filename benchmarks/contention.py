"""A training step with and without busy neighbours on the cores, rnnkit beside plain torch;
prints JSON.

    python -m benchmarks.contention [--neighbours 3] [--seconds 6] [--cells lstm gru]

The step is a small character language model's (embedding 128 -> one recurrent layer of 128 ->
dropout -> a 65-way head, B=64, T=128, AdamW), once as rnnkit builds it (`SequenceModel`:
its layers, its dropout kernel) and once in plain ``torch.nn``. Each is timed quiet, then with
``--neighbours`` processes spinning on the CPU (a load average above the core count, as a
shared machine has), the variants in turn within each phase. ``rnnkit_*_adaptive`` is rnnkit's
step as ``rnnkit train`` runs it, its thread count tuned to the load (`ThreadTuner`). Reported
per variant: the median step time quiet and loaded and their ratio (the slowdown); rnnkit
should slow down no more than torch does under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from rnnkit.models.sequence import SequenceModel
from rnnkit.training.threads import ThreadTuner

VOCAB, EMBED, HIDDEN, BATCH, STEPS = 65, 128, 128, 64, 128
TORCH_LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU}


class PlainModel(nn.Module):
    """The same language model in plain torch.nn."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, EMBED)
        self.rnn = TORCH_LAYERS[cell](EMBED, HIDDEN)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, x: torch.Tensor):
        h, state = self.rnn(self.embedding(x))
        return self.head(self.drop(h)), state


def make_step(model: nn.Module):
    """One training step of ``model`` on random tokens: forward, loss, backward, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, VOCAB, (STEPS + 1, BATCH))

    def step() -> None:
        logits, _ = model(tokens[:-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step, seconds: float, tuner: ThreadTuner | None = None) -> list[float]:
    """Step times (s) over about ``seconds`` (at least 3 steps), after one warm-up step; with a
    ``tuner``, as the trainer runs steps where the command line adapts threads (restored at
    the end)."""
    step()
    times: list[float] = []
    end = time.monotonic() + seconds
    while len(times) < 3 or time.monotonic() < end:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        if tuner is not None:
            tuner.record(times[-1])
    if tuner is not None:
        tuner.restore()
    return times


def start_neighbours(count: int) -> list[subprocess.Popen]:
    """``count`` processes that spin on the CPU until killed."""
    spin = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]


def phase(steps: dict, seconds: float, rounds: int) -> dict[str, float]:
    """Median step time (ms) of each variant, the variants in turn, ``rounds`` times; a variant
    named ``*_adaptive`` runs under a `ThreadTuner`."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            tuner = ThreadTuner(every=10, trial=3) if name.endswith("_adaptive") else None
            times[name] += timed(step, seconds / rounds, tuner)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neighbours", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="per variant and phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=TORCH_LAYERS)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = {}
    for cell in args.cells:
        model = SequenceModel(cell, VOCAB, HIDDEN, VOCAB, dropout=0.3, embedding_size=EMBED)
        steps[f"rnnkit_{cell}"] = make_step(model)
        steps[f"rnnkit_{cell}_adaptive"] = steps[f"rnnkit_{cell}"]
        steps[f"torch_{cell}"] = make_step(PlainModel(cell))
    quiet = phase(steps, args.seconds, args.rounds)
    neighbours = start_neighbours(args.neighbours)
    try:
        time.sleep(1.0)
        loaded = phase(steps, args.seconds, args.rounds)
        load_average = os.getloadavg()[0]
    finally:
        for process in neighbours:
            process.kill()
    result = {
        name: {"quiet_ms": round(quiet[name], 2), "loaded_ms": round(loaded[name], 2),
               "slowdown": round(loaded[name] / quiet[name], 2)}
        for name in steps
    }  # fmt: skip
    print(json.dumps({
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "neighbours": args.neighbours,
        "load_average_1min": round(load_average, 2),
        "steps": result,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
