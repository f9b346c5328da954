"""What calling rnnkit's kernels as torch operators costs; prints JSON.

    python -m benchmarks.dispatch [--calls 20000] [--rounds 7]

A GRU loop of one step on a (1, 1, 8) input, about the smallest work a kernel does, called the
two ways in turn, round after round: through the dispatcher (``torch.ops.rnnkit.gru_forward``,
as the layers call it) and straight through the extension's Python binding (``pybind11``, as
they called it before the kernels became operators). The difference of the medians is what an
operator call adds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rnnkit.kernels import build


def per_call(fn, args, calls: int) -> float:
    """Seconds per call of fn(*args), over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    module = build.extension()
    if module is None:
        raise SystemExit("rnnkit's C++ extension is not built here: run `rnnkit kernels build`")
    H = 8
    weights = (torch.randn(3 * H, H), torch.randn(3 * H))
    no_mask = torch.empty(0, dtype=torch.bool)
    gx, h0, b_ih = torch.randn(1, 1, 3 * H), torch.randn(1, H), torch.randn(3 * H)
    inputs = (gx, *weights, h0, no_mask, [], b_ih)
    ways = {"operator": torch.ops.rnnkit.gru_forward.default, "binding": module.gru_forward}
    times: dict[str, list[float]] = {name: [] for name in ways}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, fn in ways.items():
                times[name].append(per_call(fn, inputs, args.calls))
    medians = {name: statistics.median(t) * 1e6 for name, t in times.items()}
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "us_per_call": {name: round(m, 3) for name, m in medians.items()},
        "operator_adds_us": round(medians["operator"] - medians["binding"], 3),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
