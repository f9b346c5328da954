"""What a task declares once, and the command line is generated from (`rnnkit train TASK`).

A task module exposes ``SPEC`` (``SPECS`` for a module with several tasks): its settings
dataclass (each field's help in the class's ``Attributes:`` docstring section, its choices in
the field, see `rnnkit.training.options.choice`), its training-loop defaults, how to train, how
to report a finished training and how to load a run's predictor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Flag:
    """A flag of one task's ``rnnkit train`` that is not a setting (e.g. sentiment's ``--cv``):
    passed to the task's ``train`` as the keyword ``name``; ``kind`` bool makes an on/off flag."""

    name: str
    help: str
    kind: type = bool


@dataclass(frozen=True)
class TaskSpec:
    """One task, as `rnnkit train NAME` and `rnnkit predict` see it.

    Attributes:
        name: the task's name (``rnnkit train NAME``; stored in a run's config.json).
        help: the command's help after its summary line (`rnnkit.tasks.SUMMARIES`), or "".
        settings: the settings dataclass (config.json's ``task_config``).
        default_train: the training-loop defaults (a `TrainConfig`).
        train: ``train(flags, config_file, out, resume, **extras)``: trains or resumes a run.
        report: the text printed when ``train`` returns, from its result.
        load_predictor: ``load_predictor(run_dir, checkpoint)``: a run's `Predictor`.
        internal: settings filled in by the task, not flags.
        shown: defaults shown in the help where the task's differ from the dataclass's.
        extras: flags passed to ``train`` beside the settings.
        examples: command lines for the help.
        out: where a new run goes without ``--out`` (default ``runs/NAME-DATE-TIME``).
    """

    name: str
    help: str
    settings: type
    default_train: Any
    train: Callable[..., Any]
    report: Callable[[Any], str]
    load_predictor: Callable[..., Any] | None = None
    internal: tuple[str, ...] = ()
    shown: dict[str, str] = field(default_factory=dict)
    extras: tuple[Flag, ...] = ()
    examples: tuple[str, ...] = ()
    out: str = ""
