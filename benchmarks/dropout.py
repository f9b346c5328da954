"""rnnkit's dropout kernel against torch's, alone and in the character model's training step;
prints JSON.

    python -m benchmarks.dropout [--rounds 6]

1. One (128, 64, 512) tensor, the size of a dropout in `rnnkit train charlm` (T, B, H), in
   float32 and bfloat16: `rnnkit.dropout` against `nn.functional.dropout`.
2. One training step of the default charlm model (3 x 512 LSTM, batch 64 x 128, bfloat16
   autocast where the CPU has it, AdamW) with rnnkit's dropout, and with torch's
   (`rnnkit.dropout.torch_masks`). Timed in turn, round after
   round; each ratio is the median over rounds of the two times of the same round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from rnnkit.dropout import dropout, torch_masks
from rnnkit.tasks.charlm import CharLMConfig, build_model
from rnnkit.training.trainer import native_bf16


def seconds(fn, calls: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def in_turn(fns: dict, rounds: int, calls: int) -> tuple[dict[str, float], float]:
    """Median seconds per call of each of ``fns`` timed in turn, round after round (after a
    warm-up round), and the median per round of torch's time over rnnkit's."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(rounds + 1):
        for name, fn in fns.items():
            took = seconds(fn, calls)
            if round_:
                times[name].append(took)
    ratio = statistics.median(t / r for t, r in zip(times["torch"], times["rnnkit"]))
    return {name: statistics.median(t) for name, t in times.items()}, ratio


def kernel_times(rounds: int) -> dict:
    """Milliseconds per call of both dropouts on a (128, 64, 512) tensor, per dtype."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(128, 64, 512).to(dtype)
        fns = {
            "rnnkit": lambda x=x: dropout(x, 0.3),
            "torch": lambda x=x: nn.functional.dropout(x, 0.3),
        }
        medians, ratio = in_turn(fns, rounds, calls=5)
        out[str(dtype).removeprefix("torch.")] = {
            **{f"{name}_ms": round(1e3 * t, 2) for name, t in medians.items()},
            "speedup": round(ratio, 1),
        }
    return out


def training_step_times(rounds: int) -> dict:
    """Milliseconds per charlm training step with rnnkit's dropout and with torch's."""
    torch.manual_seed(0)
    model = build_model(CharLMConfig(), 65)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 65, (129, 64))
    bf16 = native_bf16(torch.device("cpu"))  # as `--precision auto` decides

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, _ = model(ids[:-1])
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def torch_step() -> None:
        with torch_masks():
            step()

    medians, ratio = in_turn({"rnnkit": step, "torch": torch_step}, rounds, calls=1)
    return {
        "precision": "bfloat16" if bf16 else "float32",
        **{f"{name}_ms": round(1e3 * t) for name, t in medians.items()},
        "speedup": round(ratio, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    result = {
        "threads": torch.get_num_threads(),
        "tensor_128x64x512": kernel_times(args.rounds),
        "charlm_training_step": training_step_times(args.rounds),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
