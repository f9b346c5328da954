"""Speed of rnnkit's layers against torch.nn and a plain Python loop over the cell; prints JSON.

    python benchmarks/layers.py [--repeats 5] [--shapes 32,100,128,256 ...] [--cells lstm gru]

For each cell and shape (B, T, I, H), one layer, float32, all in one process: the median time of
forward and of forward+backward for rnnkit with each ``impl``, ``torch.nn`` and a Python loop of
``rnnkit`` cell steps under autograd, their ratio to ``torch.nn``, and GFLOP/s of the matrix
products (forward 2*T*B*G*H*(I+H) flops, forward+backward three times that). The variants of a
shape are timed in turn, round after round (`round_robin`). For issue 8's bar, rnnkit's layer
against ``nn.LSTM``: their GFLOP/s ratio and the page faults of a call of each. Unless
``--allocator as-is``, the process keeps its freed memory (`settle_allocator`), so every variant
is timed at its arithmetic's speed, not at its allocator's.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import time

import torch

import rnnkit
from rnnkit.kernels import build, loops

SHAPES = [(32, 100, 128, 256), (64, 200, 256, 512), (16, 512, 64, 128), (1, 1000, 64, 256)]
CELLS = {
    "lstm": (rnnkit.LSTM, torch.nn.LSTM, rnnkit.LSTMCell, 4),
    "gru": (rnnkit.GRU, torch.nn.GRU, rnnkit.GRUCell, 3),
    "rnn_tanh": (rnnkit.RNN, torch.nn.RNN, rnnkit.ElmanCell, 1),
}


def cell_loop(cell: rnnkit.Cell):
    """The plain loop a layer stands for: one autograd step per time step."""

    def run(x: torch.Tensor):
        state = cell.initial_state(x.shape[1], x.dtype, x.device)
        outputs = []
        for x_t in x:
            new = cell(x_t, state if cell.num_states > 1 else state[0])
            state = new if isinstance(new, tuple) else (new,)
            outputs.append(state[0])
        return torch.stack(outputs), state

    return run


def engine_path(layer: torch.nn.Module, x: torch.Tensor) -> str:
    """Which code computes an rnnkit layer: torch's kernel, the C++ loops or Python."""
    if layer.uses_torch_kernel(x):
        return "torch"
    cell = layer._cells[0]
    return "cpp" if build.handles(x) and loops.supports(cell) else "python"


def one_call(fn, x: torch.Tensor, backward: bool) -> float:
    """Seconds of one forward (no autograd) or forward+backward call."""
    x.grad = None
    start = time.perf_counter()
    if backward:
        fn(x)[0].sum().backward()
    else:
        with torch.no_grad():
            fn(x)
    return time.perf_counter() - start


def round_robin(fns: dict, x: torch.Tensor, backward: bool, repeats: int) -> dict[str, list]:
    """Seconds of each of ``fns`` called in turn, ``repeats`` rounds after a warm-up round
    (allocator, oneDNN primitives). This machine's speed drifts by up to 2x over tens of seconds
    (a shared virtual machine), so variants timed one after the other are not comparable; timed
    in turn, each round's variants share one stretch of it (see `median_ratio`)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            seconds = one_call(fn, x, backward)
            if round_:
                times[name].append(seconds)
    return times


def page_faults_per_call(fn, x: torch.Tensor, calls: int = 3) -> int | None:
    """Minor page faults of one forward+backward call, averaged over ``calls`` (None where the
    platform does not count them). A reference that faults in fresh pages every call (at
    (32, 100, 128, 256) here: ``nn.LSTM``'s buffer of about 32 MB in a fresh process, none once
    the process's heap has room for it) runs 25-30% slower than it can (docs/performance.md)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        one_call(fn, x, True)
    return round((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls)


def settle_allocator() -> bool:
    """Keep every buffer of this process on glibc's heap and freed memory there for the next
    call: no variant then faults in fresh pages on a call. Without it, ``nn.LSTM`` at these
    shapes faults in 32-450 MB a call or none, depending on what ran before it in the process
    (docs/performance.md), which moved the bar's ratio by up to 30%. Returns whether the
    allocator took the settings (False off glibc)."""
    build.extension()  # first: its own malloc settings (`build._configure`) would replace these
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no C library by that call, or no mallopt
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h; a threshold of -1: never trim
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, -1) == 1


def median_ratio(times: list[float], reference: list[float]) -> float:
    """The median over rounds of one variant's time over the reference's in the same round."""
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))


def bench_shape(cell: str, shape: tuple[int, int, int, int], repeats: int) -> dict:
    """One cell at one shape: every variant's times, GFLOP/s and ratios to torch.nn; for GRU and
    Elman also torch.nn.LSTM of the same shape, timed in the same rounds. Issue 8's bar, the
    GFLOP/s of nn.LSTM (``gflops_ratio_to_torch_lstm``), is measured again in rounds of its two
    layers alone, three times as many: next to each other in time (the Python loop takes
    longer than both together) and over more rounds, a burst of this machine's noise moves
    the median less (the ratio of ``rnnkit_torch`` comes from the rounds of all variants)."""
    layer_cls, torch_cls, cell_cls, gates = CELLS[cell]
    B, T, I, H = shape
    reference = torch_cls(I, H)
    cell_module = cell_cls(I, H)
    variants = {"torch.nn": reference, "python_loop": cell_loop(cell_module)}
    for impl in ("bptt", "torch"):
        layer = layer_cls(I, H, impl=impl)
        layer.load_state_dict(reference.state_dict())
        variants[f"rnnkit_{impl}"] = layer
    if cell != "lstm":
        variants["torch.nn.LSTM"] = torch.nn.LSTM(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    fwd = round_robin(variants, x, False, repeats)
    both = round_robin(variants, x, True, repeats)
    result = {"cell": cell, "B": B, "T": T, "I": I, "H": H}
    for name, fn in variants.items():
        flops = 2 * T * B * (4 if name == "torch.nn.LSTM" else gates) * H * (I + H)
        seconds = statistics.median(both[name])
        result[name] = {
            "forward_ms": round(1e3 * statistics.median(fwd[name]), 2),
            "forward_backward_ms": round(1e3 * seconds, 2),
            "forward_backward_gflops": round(3 * flops / seconds / 1e9, 1),
        }
        if name.startswith("rnnkit_"):
            result[name]["path"] = engine_path(fn, x)
        if name != "torch.nn":
            result[name]["forward_ratio_to_torch"] = round(
                median_ratio(fwd[name], fwd["torch.nn"]), 2
            )
            result[name]["forward_backward_ratio_to_torch"] = round(
                median_ratio(both[name], both["torch.nn"]), 2
            )
    lstm = "torch.nn.LSTM" if "torch.nn.LSTM" in variants else "torch.nn"
    pair = {name: variants[name] for name in ("rnnkit_bptt", lstm)}
    paired = round_robin(pair, x, True, 3 * repeats)
    for name, times in (("rnnkit_bptt", paired), ("rnnkit_torch", both)):
        ratio = median_ratio(times[lstm], times[name]) * gates / 4  # GFLOP/s: time x work ratio
        result[name]["gflops_ratio_to_torch_lstm"] = round(ratio, 2)
    for name, fn in pair.items():
        result[name]["page_faults_per_call"] = page_faults_per_call(fn, x)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument(
        "--shapes", nargs="+", default=[",".join(map(str, s)) for s in SHAPES], help="B,T,I,H"
    )
    parser.add_argument(
        "--allocator",
        choices=["settled", "as-is"],
        default="settled",
        help="settled: freed memory stays in the process (see settle_allocator)",
    )
    args = parser.parse_args()
    settled = args.allocator == "settled" and settle_allocator()
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    results = [bench_shape(c, s, args.repeats) for c in args.cells for s in shapes]
    document = {
        "benchmark": "layers",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "dtype": "float32",
        "allocator_settled": settled,
        "results": results,
    }
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
