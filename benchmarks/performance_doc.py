"""Regenerate docs/performance.md from the benchmarks, run here and now.

    python -m benchmarks.performance_doc [--repeats 5] [--out docs/performance.md]

Runs benchmarks/layers.py, features.py, scan.py and streaming.py (each in its own process, each
printing JSON), and writes their tables between the generated markers of the page; the prose
around them is kept.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BEGIN, END = "<!-- generated: begin -->", "<!-- generated: end -->"
IMPLS = ("torch.nn", "rnnkit_torch", "rnnkit_bptt", "python_loop")


def run(module: str, *args: str) -> dict:
    command = [sys.executable, "-m", f"benchmarks.{module}", *args]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def layers_table(document: dict) -> list[str]:
    lines = [
        "| cell | B, T, I, H | " + " | ".join(IMPLS) + " | rnnkit_bptt GF/s / nn.LSTM's |",
        "|---|---|" + "---|" * (len(IMPLS) + 1),
    ]
    for r in document["results"]:
        cells = []
        for impl in IMPLS:
            v = r[impl]
            ratio = v.get("forward_backward_ratio_to_torch")
            extra = f", x{ratio}" if ratio is not None else ""
            extra += f" ({v['path']})" if "path" in v else ""
            cells.append(
                f"{v['forward_backward_ms']} ms, {v['forward_backward_gflops']} GF/s{extra}"
            )
        shape = f"{r['B']}, {r['T']}, {r['I']}, {r['H']}"
        cells.append(str(r["rnnkit_bptt"]["gflops_ratio_to_torch_lstm"]))
        lines.append(f"| {r['cell']} | {shape} | " + " | ".join(cells) + " |")
    return lines


def ratio_table(times: dict, ratios: dict, header: str) -> list[str]:
    lines = [f"| {header} | forward+backward | ratio |", "|---|---|---|"]
    lines += [f"| {name} | {times[name]} ms | {ratios[name]} |" for name in times]
    return lines


def streaming_table(document: dict) -> list[str]:
    lines = [
        "| cell | `step` | forward on one step | the 2L mat-vecs | step / mat-vecs |",
        "|---|---|---|---|---|",
    ]
    for r in document["results"]:
        lines.append(
            f"| {r['cell']} | {r['step_us']} us | {r['forward_on_one_step_us']} us | "
            f"{r['matvecs_us']} us | {r['step_ratio_to_matvecs']} |"
        )
    return lines


def generated(repeats: int) -> list[str]:
    layers = run("layers", "--repeats", str(repeats))
    features = run("features", "--repeats", str(repeats + 2))
    scan = run("scan", "--repeats", str(max(1, repeats - 1)))
    streaming = run("streaming")
    out = [f"Measured with torch {layers['torch']}, {layers['threads']} threads, float32.", ""]
    out += ["### Layers: forward+backward, one layer (`benchmarks/layers.py`)", ""]
    out += layers_table(layers) + [""]
    out += [
        f"### Feature cells at {features['B']}, {features['T']}, {features['I']}, "
        f"{features['H']}, training mode (`benchmarks/features.py`)",
        "",
    ]
    out += ratio_table(
        features["forward_backward_ms"],
        features["ratio_to_torch_lstm"],
        "layer (ratio to torch.nn.LSTM)",
    ) + [""]
    out += [
        f"### Parallel scans at T={scan['T']}, B={scan['B']}, H={scan['H']} (`benchmarks/scan.py`)",
        "",
    ]
    out += ratio_table(
        scan["forward_backward_ms"],
        scan["speedup_over_rnnkit_gru"],
        "layer (speed-up over rnnkit's GRU)",
    ) + [""]
    out += [
        f"### Streaming at B=1, H={streaming['H']}, {streaming['layers']} layers "
        "(`benchmarks/streaming.py`)",
        "",
    ]
    out += streaming_table(streaming)
    return out


def around(page: str) -> tuple[str, str]:
    """The page before the generated part's BEGIN marker and after its END marker."""
    head, rest = page.split(BEGIN)
    _, tail = rest.split(END)
    return head, tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/performance.md"))
    args = parser.parse_args()
    around(args.out.read_text())  # the markers are there, before minutes of benchmarks
    body = "\n".join(generated(args.repeats))
    head, tail = around(args.out.read_text())  # read again: edits made meanwhile are kept
    args.out.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
