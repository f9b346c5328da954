"""minGRU/minLSTM against rnnkit's GRU (engine) and torch.nn.GRU; prints JSON.

    python benchmarks/scan.py [--steps 4096 --batch 16 --hidden 256 --repeats 3 --log-scan]

Forward+backward time of one layer of width H on (T, B, H) float32 input, in one process (timed
in turn, round after round: `benchmarks.layers.round_robin`), with the median per-round ratio of
rnnkit's own GRU (impl="bptt") to each. The "floor" rows time the input projection
alone (nn.Linear(H, 2H) for minGRU, (H, 3H) for minLSTM), which bounds what a min-RNN can cost:
its gates and scan (fused in C++) come on top. ``--log-scan`` adds the layers in
``mode="log_scan"`` (Heinsen's log-space scan; slow on the CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import rnnkit
from benchmarks.layers import median_ratio, round_robin, settle_allocator
from rnnkit.kernels import products


class _Projection(torch.nn.Linear):
    """A layer's input projection alone, through the product the min-RNNs use
    (`rnnkit.kernels.products.linear`), called like the layers: (output,)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (products.linear(x, self.weight, self.bias),)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log-scan", action="store_true", help="also time mode='log_scan'")
    args = parser.parse_args()
    settled = settle_allocator()  # no variant faults in fresh pages on a call (benchmarks.layers)
    H = args.hidden
    x = torch.randn(args.steps, args.batch, H, requires_grad=True)
    layers = {
        "rnnkit.GRU(impl=bptt)": rnnkit.GRU(H, H, impl="bptt"),
        "torch.nn.GRU": torch.nn.GRU(H, H),
        "rnnkit.MinGRU": rnnkit.MinGRU(H, H),
        "rnnkit.MinLSTM": rnnkit.MinLSTM(H, H),
        "floor: nn.Linear(H, 2H)": _Projection(H, 2 * H),
        "floor: nn.Linear(H, 3H)": _Projection(H, 3 * H),
    }
    if args.log_scan:
        layers["rnnkit.MinGRU(mode=log_scan)"] = rnnkit.MinGRU(H, H, mode="log_scan")
        layers["rnnkit.MinLSTM(mode=log_scan)"] = rnnkit.MinLSTM(H, H, mode="log_scan")
    rounds = round_robin(layers, x, True, args.repeats)
    times = {name: 1e3 * statistics.median(t) for name, t in rounds.items()}
    gru = rounds["rnnkit.GRU(impl=bptt)"]
    document = {
        "benchmark": "scan",
        "T": args.steps,
        "B": args.batch,
        "H": H,
        "threads": torch.get_num_threads(),
        "allocator_settled": settled,
        "forward_backward_ms": {k: round(v, 1) for k, v in times.items()},
        "speedup_over_rnnkit_gru": {k: round(median_ratio(gru, v), 2) for k, v in rounds.items()},
    }
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
