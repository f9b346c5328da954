"""What every task's ``train`` entry point does, once: settings in, a new or resumed run out.

A task keeps its settings in a dataclass (stored as ``task_config`` in config.json) and gives
`train_task` a function that builds its task object from one. The settings come from the task's
defaults, a TOML file and the command-line flags (`rnnkit.training.options.merge_settings`); the
training-loop ones (`TRAIN_KEYS`) go to `TrainConfig`, the rest to the task's dataclass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

from rnnkit.data import registry
from rnnkit.errors import RnnkitError
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.options import (
    TRAIN_KEYS,
    flag_of,
    merge_settings,
    parse_duration,
    path_fields,
)
from rnnkit.training.runs import settings_from_dict
from rnnkit.training.trainer import FitResult, Task, TrainConfig, Trainer

Settings = TypeVar("Settings")


def train_task(
    name: str,
    settings_cls: type[Settings],
    make_task: Callable[[Settings], Task],
    default_train: TrainConfig,
    flags: dict[str, Any],
    config_file: str | None = None,
    out: str | None = None,
    resume: str | None = None,
) -> FitResult:
    """Train a new run of task ``name`` (in ``out``, default ``runs/NAME-DATE-TIME``), or resume
    the run ``resume`` (its task settings may not change; its budgets may).

    Args:
        settings_cls: the task's settings dataclass.
        make_task: builds the task object from the settings.
        default_train: the task's training-loop defaults.
        flags: command-line values (None: not given), named like the dataclass fields and
            `TRAIN_KEYS`.

    Settings made with `rnnkit.training.options.path` name files or folders, stored as absolute
    paths; a value (or, for a new run, the default) that is not an existing path may name a data
    set of the registry (``jsb-chorales``, ``nab/realKnownCause/nyc_taxi.csv``:
    `registry.resolve`).
    """
    task_keys = {f.name for f in fields(settings_cls)}
    values = merge_settings(config_file, flags, task_keys | set(TRAIN_KEYS))
    if "max_time" in values:
        values["max_time"] = parse_duration(values["max_time"])
    task_values = {k: v for k, v in values.items() if k in task_keys}
    train_values = {TRAIN_KEYS[k]: v for k, v in values.items() if k in TRAIN_KEYS}
    defaults = {f.name: f.default for f in fields(settings_cls)}
    for key in path_fields(settings_cls):
        value = task_values.get(key)
        if key not in task_values and resume is None:
            value = defaults.get(key)  # e.g. music's "jsb-chorales"
        if value and isinstance(value, str):
            task_values[key] = str(Path(registry.resolve(value)).expanduser().resolve())
    if resume is None:
        task = make_task(settings_from_dict(settings_cls, task_values, name))
        config = TrainConfig.from_dict({**asdict(default_train), **train_values})
        run_dir = Path(out) if out else Path("runs") / time.strftime(f"{name}-%Y%m%d-%H%M%S")
        return Trainer(task, config, run_dir).fit()
    saved = ckpt.read_config(resume)
    if saved.get("task") != name:
        raise RnnkitError(f"{resume} is a {saved.get('task')!r} run, not a {name} run")
    settings = settings_from_dict(settings_cls, saved["task_config"], name)
    for key, value in task_values.items():
        if getattr(settings, key) != value:
            raise RnnkitError(
                f"cannot change {flag_of(key)} when resuming (the run has "
                f"{getattr(settings, key)!r}); start a new run instead"
            )
    config = TrainConfig.from_dict({**saved["train"], **train_values})
    return Trainer(make_task(settings), config, resume, resume=True).fit()


def format_fit(result: FitResult) -> str:
    """How training ended: the stop reason, steps, time, run and final validation metrics."""
    minutes, seconds = divmod(round(result.elapsed), 60)
    lines = [f"{result.stop_reason}: {result.step} steps in {minutes}m{seconds:02d}s; run in "
             f"{result.run_dir}"]  # fmt: skip
    if result.final:
        lines.append("validation: " + "  ".join(f"{k} {v:.4f}" for k, v in result.final.items()))
    return "\n".join(lines)


def stamp(prefix: str) -> str:
    """A run name ``PREFIX-DATE-TIME``."""
    return time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
