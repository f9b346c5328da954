"""Click options made from dataclasses: a task's settings and the training loop's `TrainConfig`.

A field ``seq_len`` is the flag ``--seq-len`` (`rnnkit.training.options.FLAG_NAMES` holds the
exceptions); its type, choices and default come from the field, its help from the class's
``Attributes:`` docstring section. (`rnnkit.training` is imported when options are made: it
imports torch.) Every option's value is None unless given, so that a TOML
file (``--config``) and a resumed run's settings are not overridden by defaults; the default
the task will use is shown in the help.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import click

#: the types of options naming a file or a folder (no existence check: the commands say what
#: is missing in their own words)
FILE = click.Path(dir_okay=False)
DIR = click.Path(file_okay=False)


def shown(value: Any) -> str | None:
    """A default as the help shows it (None: nothing to show)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or None
    return None if value in (None, "") else str(value)


def shown_train(defaults: Any, key: str) -> str:
    """The default of training-loop flag ``key`` (`TRAIN_KEYS`) in the `TrainConfig`
    ``defaults``, as the help shows it (a time budget in h, m or s)."""
    from rnnkit.training.options import TRAIN_KEYS

    value = getattr(defaults, TRAIN_KEYS[key])
    if key == "max_time" and value:
        for unit, seconds in (("h", 3600), ("m", 60)):
            if value % seconds == 0:
                return f"{value / seconds:g}{unit}"
        return f"{value:g}s"
    return shown(value) or "none"


def default_of(f: dataclasses.Field) -> Any:
    """The default value of dataclass field ``f``."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def option(
    f: dataclasses.Field, hint: Any, doc: str, default: str | None, name: str = ""
) -> click.Option:
    """The option setting field ``f`` (type ``hint``; named ``name``, default the field's name),
    with ``doc`` and the ``default`` shown."""
    from rnnkit.training.options import FLAG_NAMES

    name = name or f.name
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = hint if not args or typing.get_origin(hint) in (list, tuple) else args[0]
    kind = typing.get_origin(base)
    element = typing.get_args(base)[0] if kind in (list, tuple) else base
    choices = f.metadata.get("choices")
    kwargs: dict[str, Any] = {"default": None, "show_default": False}
    if choices:
        kwargs["type"] = click.Choice(["none" if c is None else c for c in choices])
    elif element is bool:
        kwargs["is_flag"] = True
    elif element in (int, float):
        kwargs["type"] = element
    if kind in (list, tuple):
        kwargs["multiple"] = True
    decl = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
    if element is bool and "/" not in decl:
        decl = f"{decl}/--no-{decl[2:]}"
    text = doc + (f"  [default: {default}]" if default is not None else "")
    return click.Option([decl, name], help=text, **kwargs)


def setting_options(spec: Any) -> list[click.Option]:
    """The options of a `TaskSpec`'s settings (all but its ``internal`` ones)."""
    from rnnkit.training.options import field_docs

    hints = typing.get_type_hints(spec.settings)
    docs = field_docs(spec.settings)
    return [
        option(f, hints[f.name], docs.get(f.name, ""), spec.shown.get(f.name, shown(default_of(f))))
        for f in dataclasses.fields(spec.settings)
        if f.name not in spec.internal
    ]


def loop_options(defaults: Any, shown_as: dict[str, str] | None = None) -> list[click.Option]:
    """The training-loop options (`TRAIN_KEYS`), showing the defaults of the `TrainConfig`
    ``defaults`` (or ``shown_as``, by flag name)."""
    from rnnkit.training.options import TRAIN_KEYS, field_docs
    from rnnkit.training.trainer import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    docs = field_docs(TrainConfig)
    found = {f.name: f for f in dataclasses.fields(TrainConfig)}
    options = []
    for key, name in TRAIN_KEYS.items():
        hint = str if key == "max_time" else hints[name]  # "15m" as well as seconds
        value = (shown_as or {}).get(key) or shown_train(defaults, key)
        options.append(option(found[name], hint, docs.get(name, ""), value, key))
    return options


def parsed(values: dict[str, Any]) -> dict[str, Any]:
    """Command-line values as the tasks take them: repeated options as lists; not given, None."""
    return {k: (list(v) or None) if isinstance(v, tuple) else v for k, v in values.items()}
