"""Per-step cost of streaming inference (`layer.step`) against the matrix-vector products it
must do; prints JSON.

    python benchmarks/streaming.py [--hidden 512 --layers 2 --steps 2000]

At B=1, a step of an L-layer cell costs at least the L * 2 matrix-vector products
W_ih x_t and W_hh h_{t-1}; the ratio says how much the rest (gates, Python) adds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import rnnkit

ROUNDS = 10  # the variants timed in turn, round after round; the ratio is the median per round
CELLS = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn_tanh": rnnkit.RNN}


def per_step_us(fn, steps: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return 1e6 * (time.perf_counter() - start) / steps


@torch.no_grad()
def measure(cell: str, hidden: int, layers: int, steps: int) -> dict:
    layer = CELLS[cell](hidden, hidden, num_layers=layers).eval()
    x = torch.randn(1, hidden)
    state = layer.step(x)[1]
    weights = [
        (getattr(layer, f"weight_ih_l{k}"), getattr(layer, f"weight_hh_l{k}"))
        for k in range(layers)
    ]
    v = torch.randn(hidden)

    def matvecs():
        for w_ih, w_hh in weights:
            torch.mv(w_ih, v)
            torch.mv(w_hh, v)

    variants = {
        "step": lambda: layer.step(x, state),
        "forward": lambda: layer(x[None], state),
        "matvecs": matvecs,
    }
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):  # in turn: this machine's speed drifts (benchmarks/layers.py)
        for name, fn in variants.items():
            rounds[name].append(per_step_us(fn, max(1, steps // ROUNDS)))
    median = {name: statistics.median(v) for name, v in rounds.items()}
    ratio = statistics.median(s / m for s, m in zip(rounds["step"], rounds["matvecs"]))
    return {
        "cell": cell,
        "step_us": round(median["step"], 1),
        "forward_on_one_step_us": round(median["forward"], 1),
        "matvecs_us": round(median["matvecs"], 1),
        "step_ratio_to_matvecs": round(ratio, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    results = [measure(c, args.hidden, args.layers, args.steps) for c in CELLS]
    document = {
        "benchmark": "streaming",
        "B": 1,
        "H": args.hidden,
        "layers": args.layers,
        "threads": torch.get_num_threads(),
        "results": results,
    }
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
