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

A run a client drives as several graphs (an encoder-decoder: the encoder once, then the decoder
step once per output token) is a `Chain`: each part is written as ``DIR/NAME.onnx`` (or .pt2)
and checked as a lone graph is, then the parts are checked together (`Chain.check`: greedy
decoding through the exported graphs against PyTorch's), and one ``DIR/model.json`` describes
them all (``graphs``: each part's file, inputs, outputs and check) and how to chain them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.errors import RnnkitError
from rnnkit.io import atomic_write_bytes, atomic_write_json

TOLERANCE = 1e-4
FORMATS = ("onnx", "pt2")
CHECK_LENGTHS = (12, 30)

#: an exported graph run in its runtime: inputs by name -> the outputs in order
Runner = Callable[[dict[str, Tensor]], list[np.ndarray]]


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
    axis: what `lengths` set, for the report ("T"; "S" source positions, "B" a batch, ...).
    reference: what the export is checked against, taking and giving what `module` does
        [default: `module`]; e.g. the run's own model where `module` is a copy of it made for
        the exporter.
    """

    module: nn.Module
    inputs: dict[str, Tensor]
    outputs: list[str]
    axes: dict[str, dict[int, str]]
    metadata: dict[str, Any]
    samples: Callable[[int], dict[str, Tensor]]
    source: str
    lengths: tuple[int, int] = CHECK_LENGTHS
    axis: str = "T"
    reference: nn.Module | None = None


@dataclasses.dataclass
class Chain:
    """A run exported as several graphs that a client runs one after another.

    parts: name -> `Graph`, written as ``DIR/NAME.FORMAT``, each checked as a lone graph is.
    metadata: JSON a client needs beside them (vocabularies, special ids, how to chain them).
    check: the parts checked together: given each part's `Runner` (the exported file in its
        runtime), a JSON report with the largest difference from PyTorch (``max_abs_diff``);
        raises RnnkitError where the chained graphs answer otherwise than the model does.
    files: name -> bytes written beside the graphs (e.g. a tokenizer's model).
    """

    parts: dict[str, Graph]
    metadata: dict[str, Any]
    check: Callable[[dict[str, Runner]], dict[str, Any]]
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)


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


def check_format(fmt: str) -> None:
    """RnnkitError unless ``fmt`` is one of `FORMATS`."""
    if fmt not in FORMATS:
        raise RnnkitError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def first_rows(
    inputs: dict[str, Tensor], axes: dict[str, dict[int, str]], rows: int
) -> dict[str, Tensor]:
    """``inputs`` cut to their first ``rows`` along their "B" axis (an example recorded at
    another batch size than the checks read)."""
    cut = {}
    for name, tensor in inputs.items():
        batch = [i for i, a in axes.get(name, {}).items() if a == "B"]
        cut[name] = tensor.narrow(batch[0], 0, rows).contiguous() if batch else tensor
    return cut


def export_run(
    predictor: Any, fmt: str = "onnx", out: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Export ``predictor``'s run (`rnnkit.load`) as ``fmt`` into ``out`` (default
    RUN/export), check it, and return the report written to ``out/model.json`` with the paths
    written (``path``: the model file, or the folder of a `Chain`'s; ``paths``: each graph's by
    name; ``described``: model.json)."""
    check_format(fmt)
    graph = predictor.graph()
    folder = Path(out) if out is not None else predictor.run_dir / "export"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    chain = graph if isinstance(graph, Chain) else None
    parts = chain.parts if chain is not None else {"model": graph}
    exported = {name: _export(part, fmt) for name, part in parts.items()}
    worst = max(max(c["max_abs_diff"] for c in e[2]["check"]["lengths"]) for e in exported.values())
    chained = chain.check({n: e[1] for n, e in exported.items()}) if chain is not None else None
    worst = max(worst, chained["max_abs_diff"]) if chained is not None else worst
    if not worst <= TOLERANCE:
        raise RnnkitError(f"the {fmt} export differs from PyTorch by {worst:.3g} (more than "
                          f"{TOLERANCE:g}); nothing was written")  # fmt: skip
    paths = {name: folder / f"{name}.{fmt}" for name in parts}
    for name, (data, _, _) in exported.items():
        atomic_write_bytes(paths[name], data)
    for name, data in (chain.files if chain is not None else {}).items():
        atomic_write_bytes(folder / name, data)
    described = {name: {"file": paths[name].name, **e[2]} for name, e in exported.items()}
    if chain is None:
        body, metadata = described["model"], graph.metadata
    else:
        body = {"graphs": described, "files": list(chain.files), "check": {"chained": chained}}
        metadata = chain.metadata
    seconds = round(time.perf_counter() - started, 2)
    report = {"task": predictor.task, "format": fmt, **body, "run": str(predictor.run_dir),
              "checkpoint": predictor.checkpoint, "seconds": seconds, "torch": torch.__version__,
              **metadata}  # fmt: skip
    atomic_write_json(folder / "model.json", report)
    path = paths["model"] if chain is None else folder
    return {**report, "path": str(path), "paths": {n: str(p) for n, p in paths.items()},
            "described": str(folder / "model.json")}  # fmt: skip


def _export(graph: Graph, fmt: str) -> tuple[bytes, Runner, dict[str, Any]]:
    """One graph exported as ``fmt`` and checked: its bytes, its `Runner`, and its description
    (``inputs``, ``outputs``, ``check``)."""
    graph.module.eval()
    if graph.reference is not None:
        graph.reference.eval()
    data, run = (_onnx if fmt == "onnx" else _pt2)(graph)
    checks = [_check(graph, run, steps) for steps in graph.lengths]
    return data, run, {
        "inputs": [_describe(n, t, graph.axes.get(n, {})) for n, t in graph.inputs.items()],
        "outputs": [{"name": n, "axes": graph.axes.get(n, {})} for n in graph.outputs],
        "check": {"data": graph.source, "tolerance": TOLERANCE, "axis": graph.axis,
                  "lengths": checks},
    }  # fmt: skip


def _describe(name: str, example: Tensor, axes: dict[int, str]) -> dict[str, Any]:
    """An input's name, dtype and shape, its dynamic axes named."""
    shape = [axes.get(i, size) for i, size in enumerate(example.shape)]
    return {"name": name, "dtype": str(example.dtype).removeprefix("torch."), "shape": shape}


def _onnx(graph: Graph) -> tuple[bytes, Runner]:
    """The ONNX bytes of ``graph`` and a function running them in ONNX Runtime."""
    ort = _onnxruntime()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _quiet_native_stderr():
        warnings.simplefilter("ignore")  # the exporter's notes on shape inference
        torch.onnx.export(graph.module, tuple(graph.inputs.values()), buffer, dynamo=False,
                          input_names=list(graph.inputs), output_names=graph.outputs,
                          dynamic_axes=graph.axes)  # fmt: skip
    data = buffer.getvalue()
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as err:  # a node ONNX Runtime does not implement: its one-line message
        raise RnnkitError(f"ONNX Runtime cannot run the exported graph ({_first_line(err)}); "
                          "please report this") from None  # fmt: skip
    names = [i.name for i in session.get_inputs()]
    if names != list(graph.inputs):
        raise RnnkitError(f"the ONNX graph takes {names}, not {list(graph.inputs)}: it would not "
                          "follow its input; please report this")  # fmt: skip

    def run(inputs: dict[str, Tensor]) -> list:
        return session.run(graph.outputs, {n: t.numpy() for n, t in inputs.items()})

    return data, run


def _pt2(graph: Graph) -> tuple[bytes, Runner]:
    """``torch.export`` of ``graph`` (its named axes dynamic) as bytes, and a function running
    the saved program; RnnkitError where torch.export cannot record the model."""
    try:
        with torch.no_grad():
            program = torch.export.export(graph.module, tuple(graph.inputs.values()),
                                          dynamic_shapes=_dynamic_shapes(graph))  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.pt2"
            torch.export.save(program, path)
            data = path.read_bytes()
            loaded = torch.export.load(path).module()
    except RnnkitError:
        raise
    except Exception as err:  # torch's own refusal, many lines long: its first line
        raise RnnkitError(f"torch.export cannot record this model ({_first_line(err)}); export "
                          "it with --format onnx") from None  # fmt: skip

    def run(inputs: dict[str, Tensor]) -> list:
        with torch.no_grad():
            return [t.numpy() for t in _as_list(loaded(*inputs.values()))]

    return data, run


def _dynamic_shapes(graph: Graph) -> tuple:
    """torch.export's dynamic shapes of ``graph``'s inputs: a dict {axis: Dim} per input, one
    Dim per axis name, grouped as ``module.forward`` takes them (a ``*state`` parameter takes
    the rest as a tuple)."""
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for name in graph.inputs:
        axes = graph.axes.get(name, {}).items()
        shapes.append({i: dims.setdefault(a, torch.export.Dim(a, min=2)) for i, a in axes})
    grouped: list = []
    for parameter in inspect.signature(graph.module.forward).parameters.values():
        if not shapes:
            break
        if parameter.kind is parameter.VAR_POSITIONAL:
            grouped.append(tuple(shapes))
            shapes = []
        else:
            grouped.append(shapes.pop(0))
    return tuple(grouped)


def _check(graph: Graph, run: Callable, steps: int) -> dict[str, Any]:
    """The largest difference between the export and PyTorch on the run's inputs of ``steps``
    steps."""
    inputs = graph.samples(steps)
    reference = graph.module if graph.reference is None else graph.reference
    with torch.no_grad():
        expected = [t.numpy() for t in _as_list(reference(*inputs.values()))]
    got = run(inputs)
    diff = max(_difference(g, e) for g, e in zip(got, expected))
    shape = {n: list(t.shape) for n, t in inputs.items()}
    return {"steps": steps, "shapes": shape, "max_abs_diff": diff}


def _difference(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest absolute difference of two outputs (booleans as 0/1); inf where their shapes
    differ."""
    if got.shape != expected.shape:
        return float("inf")
    if not expected.size:
        return 0.0
    return float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())


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


def _first_line(err: Exception) -> str:
    """An exception's type and the first line of its message (at most 200 characters)."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


def _as_list(outputs: Any) -> list[Tensor]:
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise RnnkitError("ONNX export needs onnx and onnxruntime: pip install "
                          "'rnnkit[export]'") from None  # fmt: skip
    return onnxruntime
