"""``rnnkit export RUN --format onnx|pt2``: a trained run's model as a file another runtime
loads, checked against PyTorch before it is kept.

A task's predictor describes what to record (`Graph`: the module, named example inputs, their
dynamic axes, the outputs, and what a client needs beside the numbers: the vocabulary, the
classes, the scalers). ONNX export (TorchScript-based, which keeps the time and batch axes
dynamic through torch's recurrent kernels) goes to ``DIR/model.onnx``; ``pt2`` is
``torch.export`` (``DIR/model.pt2``, rnnkit's operators in it: load it where rnnkit is
imported). Either is checked on the run's own inputs at two sequence lengths (`Graph.samples`)
against the model in PyTorch: the largest absolute difference is printed and stored, and one
above `TOLERANCE` is an error that leaves nothing behind. ``DIR/model.json`` names the inputs,
outputs (in the order the model takes and gives them), their axes and the metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.errors import RnnkitError
from rnnkit.io import atomic_write_bytes, atomic_write_json

TOLERANCE = 1e-4
FORMATS = ("onnx", "pt2")
CHECK_LENGTHS = (12, 30)


@dataclasses.dataclass
class Graph:
    """What to export of a run.

    module: takes the inputs in `inputs`' order, returns the outputs in `outputs`' order.
    inputs: name -> an example tensor (the recording's shapes; axes in `axes` stay free).
    outputs: the output names.
    axes: input or output name -> {axis: name} of its dynamic axes ("T", "B").
    metadata: JSON a client needs beside the model (vocabulary, classes, scalers, ...).
    samples: steps -> inputs by name at that sequence length, from the run's own data.
    source: where `samples` come from, in words (for the report).
    lengths: the two sequence lengths the export is checked at.
    """

    module: nn.Module
    inputs: dict[str, Tensor]
    outputs: list[str]
    axes: dict[str, dict[int, str]]
    metadata: dict[str, Any]
    samples: Callable[[int], dict[str, Tensor]]
    source: str
    lengths: tuple[int, int] = CHECK_LENGTHS


def ragged_batch(examples: list[Tensor], steps: int) -> tuple[Tensor, Tensor]:
    """A check batch from a run's own encoded inputs (each (T_i,) or (T_i, F)): three of them,
    repeated or cut to ``steps``, ``steps - 3`` and ``steps // 2`` steps, padded ->
    (x (steps, 3, ...), lengths (3,))."""
    lengths = [steps, max(1, steps - 3), max(1, steps // 2)]
    items = []
    for k, n in enumerate(lengths):
        x = examples[k % len(examples)]
        items.append(x.repeat(-(-n // len(x)), *[1] * (x.dim() - 1))[:n])
    return nn.utils.rnn.pad_sequence(items), torch.tensor(lengths)


def export_run(
    predictor: Any, fmt: str = "onnx", out: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Export ``predictor``'s run (`rnnkit.load`) as ``fmt`` into ``out`` (default
    RUN/export), check it, and return the report written to ``out/model.json`` with the paths
    written (``path``, ``described``)."""
    if fmt not in FORMATS:
        raise RnnkitError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    graph = predictor.graph()
    folder = Path(out) if out is not None else predictor.run_dir / "export"
    folder.mkdir(parents=True, exist_ok=True)
    graph.module.eval()
    started = time.perf_counter()
    data, run = (_onnx if fmt == "onnx" else _pt2)(graph)
    checks = [_check(graph, run, steps) for steps in graph.lengths]
    worst = max(c["max_abs_diff"] for c in checks)
    if not worst <= TOLERANCE:
        raise RnnkitError(f"the {fmt} export differs from PyTorch by {worst:.3g} (more than "
                          f"{TOLERANCE:g}); nothing was written")  # fmt: skip
    model_file = folder / f"model.{fmt}"
    atomic_write_bytes(model_file, data)
    report = {
        "task": predictor.task, "format": fmt, "file": model_file.name,
        "run": str(predictor.run_dir), "checkpoint": predictor.checkpoint,
        "inputs": [_describe(n, t, graph.axes.get(n, {})) for n, t in graph.inputs.items()],
        "outputs": [{"name": n, "axes": graph.axes.get(n, {})} for n in graph.outputs],
        "check": {"data": graph.source, "tolerance": TOLERANCE, "lengths": checks},
        "seconds": round(time.perf_counter() - started, 2),
        "torch": torch.__version__, **graph.metadata,
    }  # fmt: skip
    atomic_write_json(folder / "model.json", report)
    return {**report, "path": str(model_file), "described": str(folder / "model.json")}


def _describe(name: str, example: Tensor, axes: dict[int, str]) -> dict[str, Any]:
    """An input's name, dtype and shape, its dynamic axes named."""
    shape = [axes.get(i, size) for i, size in enumerate(example.shape)]
    return {"name": name, "dtype": str(example.dtype).removeprefix("torch."), "shape": shape}


def _onnx(graph: Graph) -> tuple[bytes, Callable[[dict[str, Tensor]], list]]:
    """The ONNX bytes of ``graph`` and a function running them in ONNX Runtime."""
    ort = _onnxruntime()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _quiet_native_stderr():
        warnings.simplefilter("ignore")  # the exporter's notes on shape inference
        torch.onnx.export(graph.module, tuple(graph.inputs.values()), buffer, dynamo=False,
                          input_names=list(graph.inputs), output_names=graph.outputs,
                          dynamic_axes=graph.axes)  # fmt: skip
    data = buffer.getvalue()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if names != list(graph.inputs):
        raise RnnkitError(f"the ONNX graph takes {names}, not {list(graph.inputs)}: it would not "
                          "follow its input; please report this")  # fmt: skip

    def run(inputs: dict[str, Tensor]) -> list:
        return session.run(graph.outputs, {n: t.numpy() for n, t in inputs.items()})

    return data, run


def _pt2(graph: Graph) -> tuple[bytes, Callable[[dict[str, Tensor]], list]]:
    """``torch.export`` of ``graph`` (time and batch dynamic) as bytes, and a function running
    the saved program."""
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for name in graph.inputs:
        axes = graph.axes.get(name, {})
        shapes.append({i: dims.setdefault(a, torch.export.Dim(a, min=2)) for i, a in axes.items()})
    with torch.no_grad():
        program = torch.export.export(graph.module, tuple(graph.inputs.values()),
                                      dynamic_shapes=tuple(shapes))  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt2"
        torch.export.save(program, path)
        data = path.read_bytes()
        loaded = torch.export.load(path).module()

    def run(inputs: dict[str, Tensor]) -> list:
        with torch.no_grad():
            return [t.numpy() for t in _as_list(loaded(*inputs.values()))]

    return data, run


def _check(graph: Graph, run: Callable, steps: int) -> dict[str, Any]:
    """The largest difference between the export and PyTorch on the run's inputs of ``steps``
    steps."""
    inputs = graph.samples(steps)
    with torch.no_grad():
        expected = [t.numpy() for t in _as_list(graph.module(*inputs.values()))]
    got = run(inputs)
    diff = max(float(abs(g - e).max()) if e.size else 0.0 for g, e in zip(got, expected))
    shape = {n: list(t.shape) for n, t in inputs.items()}
    return {"steps": steps, "shapes": shape, "max_abs_diff": diff}


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Hold back what C++ code writes to stderr in the block (the ONNX exporter's notes on
    shape inference, which the check after export makes moot); shown if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode("utf-8", "replace"))


def _as_list(outputs: Any) -> list[Tensor]:
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise RnnkitError("ONNX export needs onnx and onnxruntime: pip install "
                          "'rnnkit[export]'") from None  # fmt: skip
    return onnxruntime
