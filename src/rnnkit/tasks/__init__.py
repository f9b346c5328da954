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


#: each task's summary: the first line of ``rnnkit train NAME --help`` and the task's line in
#: ``rnnkit train --help`` (here, so that listing the tasks imports none of them)
SUMMARIES: dict[str, str] = {
    "charlm": "Train a character-level (or --unit word) language model on a text file.",
    "music": "Train a next-frame model of polyphonic music (88-key piano rolls).",
    "adding": "The adding problem: the sum of the two marked numbers of a length-T sequence.",
    "copy": "Copy memory: repeat 10 symbols after a delay of T blanks.",
    "forecast": "Train a forecaster on a CSV (`rnnkit predict RUN --horizon N` forecasts with it).",
    "anomaly": "Train an anomaly detector on a CSV: a forecaster learns the early part, large "
    "errors are flagged (`rnnkit predict RUN [CSV]` scores a series).",
    "sentiment": "Train a sentence classifier (sentiment) on labelled texts; test on a held-out "
    "fold.",
    "speech-digits": "Train a spoken-digit recogniser (one digit per recording); test on held-out "
    "recordings.",
    "speech-ctc": "Train a recogniser of spoken digit strings (bidirectional LSTM + CTC).",
    "translate": "Train an attention encoder-decoder to translate (subword vocabularies, BLEU).",
    "caption": "Train a CNN encoder + attention decoder to caption Fashion-MNIST scenes (BLEU, "
    "exact).",
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
