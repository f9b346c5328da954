"""ONNX Runtime beside PyTorch on exported runs; prints JSON.

    python -m benchmarks.export_speed [--charlm RUN] [--sentiment RUN] [--repeats 30]

Runs of the docs' architectures (`benchmarks.serve.make_runs`, or the runs given) exported with
`rnnkit.export.export_run`, then timed on the same inputs: the sentiment classifier on a batch of
32 sentences of 5-40 words (ids, lengths -> probabilities, attention), and the language model's
step function reading one token for 1 and for 32 streams with the state carried. Median
milliseconds of each, and PyTorch's time over ONNX Runtime's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def median_ms(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(1e3 * statistics.median(times), 3)


def compare(graph, report, inputs: dict, repeats: int) -> dict:
    """Median ms of the graph's module in PyTorch and of the exported file in ONNX Runtime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
    feed = {name: t.numpy() for name, t in inputs.items()}
    with torch.inference_mode():
        ours = median_ms(lambda: graph.module(*inputs.values()), repeats)
    theirs = median_ms(lambda: session.run(None, feed), repeats)
    return {
        "pytorch_ms": ours,
        "onnxruntime_ms": theirs,
        "pytorch_over_ort": round(ours / theirs, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charlm")
    parser.add_argument("--sentiment")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    import rnnkit
    from benchmarks.serve import make_runs
    from rnnkit.export import export_run

    with tempfile.TemporaryDirectory() as folder:
        made = make_runs(Path(folder)) if not (args.charlm and args.sentiment) else {}
        results = {}
        sentiment = rnnkit.load(args.sentiment or made["sentiment"])
        graph = sentiment.graph()
        report = export_run(sentiment, "onnx", Path(folder) / "sentiment")
        columns = graph.samples(40)["ids"]  # (40, 3) ids of the run's texts
        items = [columns[: 5 + k % 36, k % 3] for k in range(32)]  # 5 to 40 words
        ids = torch.nn.utils.rnn.pad_sequence(items)
        lengths = torch.tensor([len(x) for x in items])
        inputs = {"ids": ids, "lengths": lengths}
        results["sentiment_batch_32"] = compare(graph, report, inputs, args.repeats)
        lm = rnnkit.load(args.charlm or made["charlm"])
        graph = lm.graph()
        report = export_run(lm, "onnx", Path(folder) / "charlm")
        for streams in (1, 32):
            sample = graph.samples(1)
            inputs = {
                k: v[:, :1].repeat(1, streams, *[1] * (v.dim() - 2)) for k, v in sample.items()
            }
            results[f"charlm_step_{streams}_streams"] = compare(graph, report, inputs, args.repeats)
    print(json.dumps({"torch_threads": torch.get_num_threads(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
