"""Applications: one module per task, each a thin configuration of the shared parts.

`TASKS` maps a task's name (stored in a run's config.json) to its module; ``rnnkit sample`` and
``rnnkit eval`` import only modules listed here, never a name taken from a run directory. Each
module declares its task as a `TaskSpec` (`task_spec`), from which ``rnnkit train`` is made.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rnnkit.errors import RnnkitError
from rnnkit.tasks.spec import TaskSpec

TASKS: dict[str, str] = {
    "charlm": "rnnkit.tasks.charlm",
    "music": "rnnkit.tasks.music",
    "adding": "rnnkit.tasks.memory",
    "copy": "rnnkit.tasks.memory",
    "forecast": "rnnkit.tasks.forecast",
    "anomaly": "rnnkit.tasks.anomaly",
    "sentiment": "rnnkit.tasks.sentiment",
    "speech-digits": "rnnkit.tasks.speech",
    "speech-ctc": "rnnkit.tasks.speech_ctc",
    "translate": "rnnkit.tasks.translate",
    "caption": "rnnkit.tasks.caption",
}


def task_module(name: str) -> ModuleType:
    """The module of task ``name`` (a key of `TASKS`)."""
    if name not in TASKS:
        raise RnnkitError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return importlib.import_module(TASKS[name])


def task_spec(name: str) -> TaskSpec:
    """The `TaskSpec` of task ``name``: its module's ``SPEC``, or ``SPECS[name]`` where one
    module holds several tasks."""
    module = task_module(name)
    return getattr(module, "SPECS", {}).get(name) or module.SPEC
