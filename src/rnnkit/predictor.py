"""A trained run as a Python object: ``rnnkit.load(run_dir)`` gives its task's `Predictor`.

    predictor = rnnkit.load("runs/sentiment")
    predictor.predict(["a gripping, funny film", "dull"])   # [Classification(...), ...]

A predictor loads the run once (config, vocabulary or scalers, weights) and answers any number
of calls, from any number of threads: it keeps no state between calls, runs under
``torch.inference_mode`` and never writes to the run. ``predict`` takes a list of inputs (texts,
WAV paths or waveforms, prompts, ...: each task says which) and returns one result per input, a
dataclass whose `to_dict` is plain JSON; inputs of unequal lengths are batched with ``lengths``,
and a batch answers exactly what each of its items answers alone.

Each task module offers ``load_predictor(run_dir, checkpoint) -> Predictor`` (`rnnkit.tasks`
lists the modules; a run names its task in config.json, never a module).
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from rnnkit.errors import RnnkitError

CHECKPOINTS = ("best", "last")


@dataclasses.dataclass
class Result:
    """One answer of a predictor; `to_dict` is its JSON (NaN and infinities as null)."""

    def to_dict(self) -> dict[str, Any]:
        return _finite(dataclasses.asdict(self))

    def summary(self) -> str:
        """One line for a person (what ``rnnkit predict`` prints without --json)."""
        return str(self.to_dict())

    def rows(self) -> list[dict[str, Any]]:
        """What ``rnnkit predict --json`` prints, one JSON object a line: the result (a
        forecast: one row per step and column)."""
        return [self.to_dict()]

    def explained(self) -> str:
        """`summary` and what the model looked at (``rnnkit predict --explain``), where a
        result has it."""
        raise RnnkitError(f"--explain is for classifiers; a {type(self).__name__} has no "
                          "attention to show")  # fmt: skip


class Predictor:
    """The trained model of a run, loaded once. Subclasses set `task` and implement `predict`
    (and `parse` for the command line)."""

    task: ClassVar[str] = ""
    #: what an input is, for help texts and errors: "a sentence", "a WAV file", "a prompt"
    takes: ClassVar[str] = "an input"

    def __init__(self, run_dir: str | os.PathLike, config: dict[str, Any], checkpoint: str):
        self.run_dir = Path(run_dir)
        self.config = config
        self.checkpoint = checkpoint

    @property
    def settings(self) -> dict[str, Any]:
        """The run's task settings (config.json's ``task_config``)."""
        return dict(self.config.get("task_config", {}))

    def predict(self, inputs: Sequence[Any]) -> list[Result]:
        """One result per input."""
        raise NotImplementedError

    def parse(self, args: Sequence[str]) -> list[Any]:
        """The inputs ``predict`` takes from command-line arguments (default: the strings)."""
        if not args:
            raise RnnkitError(f"give at least one input ({self.takes}) after the run")
        return list(args)

    def graph(self):
        """What ``rnnkit export`` records of this run: a `rnnkit.export.Graph`, or a
        `rnnkit.export.Chain` of graphs a client runs in turn (an encoder and a decoder step)."""
        raise RnnkitError(f"{self.task} runs cannot be exported yet")

    def describe(self) -> dict[str, Any]:
        """Name, task, settings and the run's figures (its last validation metrics)."""
        from rnnkit.training.metrics import read_metrics

        rows = [
            r for r in read_metrics(self.run_dir / "metrics.jsonl") if r.get("split") == "valid"
        ]
        figures = {k: v for k, v in (rows[-1] if rows else {}).items() if k != "split"}
        return {"name": self.run_dir.name, "task": self.task, "checkpoint": self.checkpoint,
                "settings": self.settings, "figures": figures}  # fmt: skip


def load(run_dir: str | os.PathLike, checkpoint: str = "best") -> Predictor:
    """The `Predictor` of a trained run directory, whatever its task.

    checkpoint: "best" (the best validation checkpoint; the latest where a run has none) or
    "last". Raises `RnnkitError` for a directory that is not a run, a damaged run, or a task
    without a predictor.
    """
    from rnnkit.tasks import task_module
    from rnnkit.training.checkpoint import read_config

    if checkpoint not in CHECKPOINTS:
        raise RnnkitError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    task = read_config(run_dir)["task"]
    loader = getattr(task_module(task), "load_predictor", None)
    if loader is None:
        raise RnnkitError(f"{run_dir} is a {task!r} run; those cannot be loaded for prediction")
    return loader(run_dir, checkpoint)


def answer(predictor: Predictor, args: Sequence[str], options: dict[str, Any]) -> list[Result]:
    """``rnnkit predict``: the results of ``predictor`` for command-line ``args`` (`parse`)
    with ``options`` (e.g. ``horizon``), refusing an option its task does not take."""
    check_options(predictor, options, "--")
    return predictor.predict(predictor.parse(list(args)), **options)


def check_options(predictor: Predictor, options: dict[str, Any], prefix: str = "") -> None:
    """Refuse an option ``predictor.predict`` does not take (named with ``prefix``)."""
    takes = inspect.signature(predictor.predict).parameters
    for name in options:
        if name == "inputs" or name not in takes:
            raise RnnkitError(f"{prefix}{name} does not apply to {predictor.task} runs")


def check_inputs(inputs: Sequence[Any], what: str) -> list[Any]:
    """``inputs`` as a list, refusing a bare string (one input is ``[text]``) and an empty list."""
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
        raise RnnkitError(f"predict takes a list of inputs ({what} each), got "
                          f"{type(inputs).__name__}; wrap one input in a list")  # fmt: skip
    if not inputs:
        raise RnnkitError(f"predict takes at least one input ({what})")
    return list(inputs)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value
