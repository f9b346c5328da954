"""ONNX Runtime beside PyTorch on exported runs; prints JSON.

    python -m benchmarks.export_speed [--charlm RUN] [--sentiment RUN] [--translate RUN]
        [--music RUN] [--repeats 30] [--threads N]

Runs of the docs' architectures (`benchmarks.serve.make_runs`, `make_generative_runs`, or the
runs given) exported with `rnnkit.export.export_run`, then timed on the same inputs: the
sentiment classifier on a batch of 32 sentences of 5-40 words (ids, lengths -> probabilities,
attention), the language model's step function reading one token for 1 and for 32 streams with
the state carried, the translation decoder's step (one target token against a source of 16
pieces, the state carried) for 1 sentence and for 32 (a batch, or a beam of 5 over 6 or 7
sentences), and the music step (the next frame drawn after one frame) for 1 and 32 pieces.
Median milliseconds of each, and PyTorch's time over ONNX Runtime's. ``--threads N``: N
intra-op threads for both (default: torch's and ONNX Runtime's own, one per core); one thread
is what to measure on a machine others load, where a parallel region waits for a thread the
scheduler has not run (milliseconds). The translate and music
runs are made from the data sets multi30k and jsb-chorales (`rnnkit data fetch`), one step each
at the docs' settings (docs/translation.md, docs/music.md's NADE run).
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


#: intra-op threads of ONNX Runtime's sessions (None: its default); --threads sets it
THREADS: dict[str, int | None] = {"ort": None}


def compare(graph, report, inputs: dict, repeats: int) -> dict:
    """Median ms of the graph's module in PyTorch and of the exported file in ONNX Runtime."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if THREADS["ort"] is not None:
        options.intra_op_num_threads = THREADS["ort"]
    session = onnxruntime.InferenceSession(report["path"], options,
                                           providers=["CPUExecutionProvider"])  # fmt: skip
    feed = {name: t.numpy() for name, t in inputs.items()}
    with torch.inference_mode():
        ours = median_ms(lambda: graph.module(*inputs.values()), repeats)
    theirs = median_ms(lambda: session.run(None, feed), repeats)
    return {
        "pytorch_ms": ours,
        "onnxruntime_ms": theirs,
        "pytorch_over_ort": round(ours / theirs, 2),
    }


def make_generative_runs(root: Path) -> dict[str, Path]:
    """One-step runs at the docs' settings: translate on Multi30k (the defaults; 58 pairs held
    out, which the untrained model's final beam search translates), music on the JSB chorales
    (an LSTM of 256 and a NADE head of 128)."""
    from rnnkit.data import registry
    from rnnkit.tasks import music, translate

    loop = {"max_steps": 1, "eval_every": 1, "progress": "none"}
    translate.train({"src": registry.resolve("multi30k/train.en.gz"),
                     "tgt": registry.resolve("multi30k/train.de.gz"), "eval_sentences": 8,
                     "valid_fraction": 0.002, **loop}, out=str(root / "translate"))  # fmt: skip
    music.train({"data": registry.resolve("jsb-chorales"), "head": "nade", "weight_dropout": 0.3,
                 **loop}, out=str(root / "music"))  # fmt: skip
    return {"translate": root / "translate", "music": root / "music"}


def generative(translate_run, music_run, folder: Path, repeats: int) -> dict:
    """The translation decoder's step and the music step, for 1 and 32 rows."""
    import rnnkit
    from rnnkit.export import export_run

    results = {}
    translator = rnnkit.load(translate_run)
    chain = translator.graph()
    report = export_run(translator, "onnx", folder / "translate")
    graph = chain.parts["decoder"]
    report = {"path": report["paths"]["decoder"]}
    sample = graph.samples(16)  # three sources of 16, 13 and 8 pieces, 2 target pieces read
    for rows in (1, 32):
        pick = torch.arange(rows) % 3
        inputs = {k: v.index_select(1 if k in ("h", "c") else 0, pick) for k, v in sample.items()}
        results[f"translate_decoder_step_{rows}"] = compare(graph, report, inputs, repeats)
    composer = rnnkit.load(music_run)
    graph = composer.graph()
    report = export_run(composer, "onnx", folder / "music")
    sample = graph.samples(1)  # one frame read, the next drawn
    for rows in (1, 32):
        pick = torch.arange(rows) % 3
        inputs = {k: v.index_select(1 if k in ("x", "h", "c") else 0, pick)
                  for k, v in sample.items()}  # fmt: skip
        results[f"music_step_{rows}"] = compare(graph, report, inputs, repeats)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charlm")
    parser.add_argument("--sentiment")
    parser.add_argument("--translate")
    parser.add_argument("--music")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        THREADS["ort"] = args.threads
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
        if not (args.translate and args.music):
            made.update(make_generative_runs(Path(folder)))
        translate, music = args.translate or made["translate"], args.music or made["music"]
        results.update(generative(translate, music, Path(folder), args.repeats))
    threads = {"torch_threads": torch.get_num_threads(), "ort_threads": THREADS["ort"] or "default"}
    print(json.dumps({**threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
