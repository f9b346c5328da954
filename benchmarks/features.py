"""Feature cells and regularisers on the engine against plain torch.nn.LSTM; prints JSON.

    python benchmarks/features.py [--shape 32,100,128,256 --repeats 7]

Forward+backward time of one layer in training mode, float32, all in one process (the variants
timed in turn, round after round: `benchmarks.layers.round_robin`), and the median over rounds
of the ratio to torch.nn.LSTM of the same width (the goal: within 1.5x). The proj_size rows
(P = H/2, e.g. 128 at H=256) are also measured against torch.nn.LSTM(proj_size=P), which oneDNN
does not run.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import rnnkit
from benchmarks.layers import median_ratio, round_robin, settle_allocator

FEATURES = {
    "torch.nn.LSTM": lambda i, h: torch.nn.LSTM(i, h),
    "layer_norm LSTM": lambda i, h: rnnkit.LSTM(i, h, layer_norm=True),
    "layer_norm GRU": lambda i, h: rnnkit.GRU(i, h, layer_norm=True),
    "peephole LSTM": lambda i, h: rnnkit.LSTM(i, h, peephole=True),
    "recurrent_dropout 0.25 LSTM": lambda i, h: rnnkit.LSTM(i, h, recurrent_dropout=0.25),
    "zoneout 0.1 LSTM": lambda i, h: rnnkit.LSTM(i, h, zoneout=0.1),
    "weight_dropout 0.5 LSTM (DropConnect)": lambda i, h: rnnkit.LSTM(i, h, weight_dropout=0.5),
    "plain LSTM, rnnkit engine": lambda i, h: rnnkit.LSTM(i, h, impl="bptt"),
    "torch.nn.LSTM proj_size H/2": lambda i, h: torch.nn.LSTM(i, h, proj_size=h // 2),
    "proj_size H/2 LSTM, torch kernel": lambda i, h: rnnkit.LSTM(i, h, proj_size=h // 2),
    "proj_size H/2 LSTM, rnnkit engine": lambda i, h: rnnkit.LSTM(
        i, h, proj_size=h // 2, impl="bptt"
    ),
    "plain GRU, rnnkit engine": lambda i, h: rnnkit.GRU(i, h, impl="bptt"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="32,100,128,256", help="B,T,I,H")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    settled = settle_allocator()  # no variant faults in fresh pages on a call (benchmarks.layers)
    B, T, I, H = (int(v) for v in args.shape.split(","))
    x = torch.randn(T, B, I, requires_grad=True)
    layers = {name: make(I, H).train() for name, make in FEATURES.items()}
    rounds = round_robin(layers, x, True, args.repeats)
    times = {name: statistics.median(t) for name, t in rounds.items()}
    document = {
        "benchmark": "features",
        "B": B,
        "T": T,
        "I": I,
        "H": H,
        "threads": torch.get_num_threads(),
        "allocator_settled": settled,
        "forward_backward_ms": {k: round(1e3 * v, 1) for k, v in times.items()},
        "ratio_to_torch_lstm": {
            k: round(median_ratio(v, rounds["torch.nn.LSTM"]), 2) for k, v in rounds.items()
        },
        "proj_ratio_to_torch_lstm_proj": {
            k: round(median_ratio(v, rounds["torch.nn.LSTM proj_size H/2"]), 2)
            for k, v in rounds.items()
            if "proj_size" in k
        },
    }
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
