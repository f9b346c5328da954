"""Every path a layer can take, per cell, over sequence lengths, batch sizes and ragged or equal
lengths, against the one ``impl="auto"`` takes; prints JSON.

    python -m benchmarks.paths [--quick] [--repeats 3] [--cells lstm gru rnn_tanh]

For each cell (one layer, I=64, H=128, float32) and point (T, B, ragged or not): the median
forward+backward time of each path, as `Recurrent.plan` names it: torch's kernel
(``impl="torch"``: fused, or packed with ``lengths``), the C++ loops (``impl="bptt"``), the
Python engine (``impl="bptt"`` with the loops off) and ``impl="auto"``; then which path auto took,
the fastest, and ``auto_over_fastest``: the median over rounds of auto's time over the fastest
path's in the same round (`round_robin`, `median_ratio` of benchmarks/layers.py; the process
keeps its freed memory, `settle_allocator`). Ragged: lengths uniform in [T/2, T], one equal to T.
A path whose first call takes longer than ``--budget`` seconds (torch's packed kernel at long T)
is timed once, and not at the longer T of that cell, B and raggedness (``<path>_skipped``: its
time grows with T, faster than linearly for the packed kernel). ``--quick``: T in 10, 100, 1000
and B in 8, 64.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

import rnnkit
from benchmarks.layers import median_ratio, settle_allocator
from rnnkit.kernels import build

CELLS = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn_tanh": rnnkit.RNN}
I, H = 64, 128


def variants(cell: str) -> dict:
    """name -> (layer, loops on): the same weights in each."""
    make = CELLS[cell]
    torch.manual_seed(0)
    auto = make(I, H)
    out = {"auto": (auto, True)}
    for name, impl, loops in (("torch", "torch", True), ("cpp_loops", "bptt", True),
                              ("python_engine", "bptt", False)):  # fmt: skip
        layer = make(I, H, impl=impl)
        layer.load_state_dict(auto.state_dict())
        out[name] = (layer, loops)
    return out


def one_call(layer, loops: bool, x: torch.Tensor, lengths) -> float:
    x.grad = None
    start = time.perf_counter()
    with build.fused_enabled(loops):
        layer(x, lengths=lengths)[0].sum().backward()
    return time.perf_counter() - start


def bench_point(
    cell: str, T: int, B: int, ragged: bool, repeats: int, budget: float, skip: set[str]
) -> dict:
    """One point; ``skip``: paths over budget at a shorter T (this adds those over it now)."""
    torch.manual_seed(1)
    lengths = None
    if ragged:
        lengths = torch.randint(max(1, T // 2), T + 1, (B,))
        lengths[0] = T
    x = torch.randn(T, B, I, requires_grad=True)
    paths = {k: v for k, v in variants(cell).items() if k not in skip}
    times: dict[str, list[float]] = {name: [] for name in paths}
    slow = set()
    for name, (layer, loops) in paths.items():  # warm-up round; a slow path is timed once
        seconds = one_call(layer, loops, x, lengths)
        if seconds > budget:
            slow.add(name)
            times[name].append(seconds)
            if name != "auto":
                skip.add(name)
    for _ in range(repeats):
        for name, (layer, loops) in paths.items():
            if name not in slow:
                times[name].append(one_call(layer, loops, x, lengths))
    medians = {name: statistics.median(t) for name, t in times.items()}
    others = [n for n in paths if n != "auto"]
    fastest = min(others, key=medians.__getitem__)
    if fastest in slow or "auto" in slow:
        ratio = medians["auto"] / medians[fastest]
    else:
        ratio = median_ratio(times["auto"], times[fastest])
    with build.fused_enabled(True):
        plan = paths["auto"][0].plan(x, lengths)
    result = {"cell": cell, "T": T, "B": B, "ragged": ragged, "auto_path": plan,
              "fastest": fastest, "auto_over_fastest": round(ratio, 3)}  # fmt: skip
    for name in paths:
        result[f"{name}_ms"] = round(1e3 * medians[name], 2)
        if name in slow:
            result[f"{name}_timed_once"] = True
    for name in variants_names(cell):
        if name not in paths:
            result[f"{name}_skipped"] = "over budget at a shorter T"
    return result


def variants_names(cell: str) -> tuple[str, ...]:
    return ("auto", "torch", "cpp_loops", "python_engine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T in 10, 100, 1000; B in 8, 64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds; see the docstring")
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--steps", nargs="+", type=int, help="sequence lengths T")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes B")
    args = parser.parse_args()
    settled = settle_allocator()
    steps = args.steps or ((10, 100, 1000) if args.quick else (10, 100, 300, 1000, 2000))
    batches = args.batches or ((8, 64) if args.quick else (8, 32, 64))
    results = []
    for cell in args.cells:
        for B in batches:
            for ragged in (False, True):
                skip: set[str] = set()
                for T in sorted(steps):
                    point = bench_point(cell, T, B, ragged, args.repeats, args.budget, skip)
                    results.append(point)
                    print(json.dumps(point), file=sys.stderr, flush=True)
    document = {
        "benchmark": "paths",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "dtype": "float32",
        "input_size": I,
        "hidden_size": H,
        "allocator_settled": settled,
        "worst_auto_over_fastest": max(r["auto_over_fastest"] for r in results),
        "results": results,
    }
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
