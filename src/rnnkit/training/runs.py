"""A trained run read back, the same way for every task: its config checked, its settings
rebuilt, the files it keeps beside the weights read, and the model built and loaded.

A run's ``config.json`` names its task and keeps the task's settings (``task_config``); some
tasks keep a few entries there that are not settings (a classifier's class names), and files
beside the weights (a vocabulary, subword models). `load_run` reads them all or refuses the run
in one line saying what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from torch import nn

from rnnkit.errors import RnnkitError
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.options import check_types

Settings = TypeVar("Settings")


def settings_from_dict(cls: type[Settings], values: dict[str, Any], task: str) -> Settings:
    """The dataclass ``cls`` from ``values``, refusing unknown keys (a typo in a config file)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RnnkitError(
            f"unknown {task} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    check_types(cls, values, task)
    return cls(**values)


@dataclass
class TrainedRun(Generic[Settings]):
    """A run read by `load_run`.

    model: the network, in eval mode, with the chosen checkpoint's weights.
    settings: the task's settings dataclass.
    parts: each file of ``files`` as its reader returned it (by file name), and each entry of
        ``entries`` as its check returned it (by key).
    run_dir: the run's folder.
    config: its config.json.
    """

    model: nn.Module
    settings: Settings
    parts: dict[str, Any]
    run_dir: Path
    config: dict[str, Any]


def load_run(
    run_dir: str | Path,
    task: str,
    settings_cls: type[Settings],
    build: Callable[[Settings, dict[str, Any]], nn.Module],
    checkpoint: str = "best",
    files: dict[str, Callable[[Path], Any]] | None = None,
    entries: dict[str, Callable[[Any], Any]] | None = None,
) -> TrainedRun[Settings]:
    """The run of task ``task`` in ``run_dir``: ``build(settings, parts)`` loaded with its
    ``checkpoint`` weights ("best" or "last", see `ckpt.weights_file`).

    ``files``: name -> reader(path) of the files the run keeps (each must be there);
    ``entries``: key -> check(value) of ``task_config`` entries that are not settings (the
    check returns the value to keep, or raises `RnnkitError` saying what is wrong with it; a
    missing entry is None).
    """
    run_dir = Path(run_dir)
    config = ckpt.read_config(run_dir)
    if config.get("task") != task:
        raise RnnkitError(f"{run_dir} is a {config.get('task')!r} run, not a {task} run")
    saved = dict(config["task_config"])
    parts = {}
    for key, check in (entries or {}).items():
        try:
            parts[key] = check(saved.pop(key, None))
        except RnnkitError as err:
            raise RnnkitError(f"{run_dir}/config.json: {err}; the run is damaged") from None
    settings = settings_from_dict(settings_cls, saved, task)
    for name, reader in (files or {}).items():
        if not (run_dir / name).is_file():
            raise RnnkitError(f"{run_dir / name} is missing; the run is incomplete (train again)")
        parts[name] = reader(run_dir / name)
    model = ckpt.load_trained(lambda: build(settings, parts), run_dir, checkpoint)
    return TrainedRun(model, settings, parts, run_dir, config)
