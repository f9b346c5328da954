"""Settings from the command line and from TOML files, shared by every ``rnnkit train`` task.

A task's settings come from three layers, later ones winning: the task's defaults, a TOML file
(``--config FILE.toml``: flat ``key = value`` lines named like the flags, dashes or underscores),
then the flags actually given on the command line.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from rnnkit.errors import RnnkitError, shorten

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def parse_duration(value: str | float | int) -> float:
    """Seconds of a duration: a number of seconds, or like "15m", "90s", "1h30m", "1.5h"."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or _DURATION.sub("", text).strip():
                raise RnnkitError(
                    f"cannot read the duration {value!r}; write e.g. 900, 90s, 15m or 1h30m"
                ) from None
            scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
            seconds = sum(float(n) * scale[unit] for n, unit in parts)
    if seconds <= 0:
        raise RnnkitError(f"a duration must be positive, got {value!r}")
    return seconds


#: the largest settings file read (a few lines of ``key = value``)
MAX_TOML_BYTES = 1 << 20


def read_toml(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML file, keys with dashes turned into underscores."""
    path = Path(path)
    if not path.is_file():
        raise RnnkitError(f"config file {path} does not exist; check the path")
    if path.stat().st_size > MAX_TOML_BYTES:
        raise RnnkitError(f"config file {path} is larger than {MAX_TOML_BYTES} bytes; not settings")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise RnnkitError(f"config file {path} is not UTF-8 (byte offset {err.start})") from None
    except tomllib.TOMLDecodeError as err:
        raise RnnkitError(f"config file {path} is not valid TOML: {err}") from None
    except RecursionError:
        raise RnnkitError(f"config file {path} is nested too deeply; write flat settings") from None
    return {key.replace("-", "_"): value for key, value in data.items()}


def merge_settings(
    config_file: str | None, flags: dict[str, Any], known: set[str]
) -> dict[str, Any]:
    """The TOML file's settings overridden by the flags that were given (not None). A file may
    name a setting by its flag (``hidden_size`` or ``hidden-size`` for ``hidden``).

    Raises:
        RnnkitError: a key of the file is not in ``known`` (names the key and the file).
    """
    values = read_toml(config_file) if config_file else {}
    aliases = {flag_of(name)[2:].replace("-", "_"): name for name in FLAG_NAMES}
    values = {
        aliases[k] if k not in known and aliases.get(k) in known else k: v
        for k, v in values.items()
    }
    unknown = sorted(set(values) - known)
    if unknown:
        raise RnnkitError(
            f"{config_file}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    values.update({k: v for k, v in flags.items() if v is not None})
    return values


#: flag/TOML names that set the training loop, mapped to `TrainConfig` fields (every task)
TRAIN_KEYS = {
    "lr": "lr",
    "weight_decay": "weight_decay",
    "warmup": "warmup_steps",
    "min_lr_ratio": "min_lr_ratio",
    "clip": "clip",
    "max_time": "max_time",
    "max_steps": "max_steps",
    "max_epochs": "max_epochs",
    "eval_every": "eval_every",
    "log_every": "log_every",
    "patience": "patience",
    "checkpoint_every": "checkpoint_every",
    "keep_checkpoints": "keep_checkpoints",
    "on_nonfinite": "on_nonfinite",
    "seed": "seed",
    "progress": "progress",
    "tensorboard": "tensorboard",
    "precision": "precision",
    "device": "device",
}


def check_types(cls: type, values: dict[str, Any], what: str) -> None:
    """Refuse values of ``values`` whose type does not fit the field of dataclass ``cls`` they
    set (a TOML file or a run's config.json may hold anything), naming the setting and ``what``.

    Raises:
        RnnkitError: e.g. ``lr = "fast"`` or ``max_steps = 2.5``.
    """
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name in hints and not _fits(value, hints[name]):
            shown = getattr(hints[name], "__name__", None) or str(hints[name])
            raise RnnkitError(
                f"{what} setting {name} = {shorten(value)} is not of type "
                f"{shown.replace('typing.', '')}"
            )
        limit = MAX_LAYERS if name in LAYER_SETTINGS else MAX_INT
        if _largest_int(value) > limit:
            raise RnnkitError(
                f"{what} setting {name} = {shorten(value)} is larger than {limit:,}, the most "
                "rnnkit accepts; use a smaller value"
            )


#: the largest integer a setting may hold (sizes, counts, seeds)
MAX_INT = 1 << 53
#: the most layers a model may stack (each is a module: a million would take minutes to build)
MAX_LAYERS = 64
LAYER_SETTINGS = ("layers", "num_layers", "decoder_layers", "encoder_layers", "stages")


def _largest_int(value: Any) -> int:
    """The largest magnitude of the integers in ``value`` (one, or a flat list of them)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    ints = [abs(v) for v in items if isinstance(v, int) and not isinstance(v, bool)]
    return max(ints, default=0)


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (JSON/TOML data) fits the type ``hint`` (a float accepts an int)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_fits, value, args))
        return all(_fits(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def choice(default: str | None, options: tuple[str | None, ...]) -> Any:
    """A dataclass field holding one of ``options`` (the command line offers them as choices;
    None among them is written "none")."""
    return dataclasses.field(default=default, metadata={"choices": tuple(options)})


def path(default: str = "") -> Any:
    """A dataclass field naming a file, a folder or a data set of the registry; a run stores it
    as an absolute path (`rnnkit.tasks.common.train_task`)."""
    return dataclasses.field(default=default, metadata={"path": True})


def path_fields(cls: type) -> tuple[str, ...]:
    """The names of the fields of dataclass ``cls`` made with `path`."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("path"))


def field_docs(cls: type) -> dict[str, str]:
    """The help text of each field of dataclass ``cls``: the ``Attributes:`` section of its
    docstring and its bases' (one ``name: text`` line per field, continued on lines indented
    deeper), a subclass's text winning."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_attributes(inspect.getdoc(klass) or "" if klass is not object else ""))
    return docs


def _attributes(doc: str) -> dict[str, str]:
    """``name: text`` entries of the ``Attributes:`` section of a docstring."""
    lines = doc.split("Attributes:", 1)[1].splitlines() if "Attributes:" in doc else []
    found: dict[str, str] = {}
    name = None
    for line in lines[1:]:
        if not line.strip():
            break
        entry = _ENTRY.match(line)
        if entry:
            name = entry.group(1)
            found[name] = entry.group(2).strip()
        elif name is not None:
            found[name] += " " + line.strip()
    return found


_ENTRY = re.compile(r"^ {4}(\w+): (.*)$")


#: command-line flags of the settings whose flag is not their name in kebab-case: torch's names
#: for the sizes, one target or covariate column per flag, and the on/off pairs named for the
#: off side
FLAG_NAMES = {
    "hidden": "--hidden-size",
    "layers": "--num-layers",
    "columns": "--target",
    "covariates": "--covariate",
    "bidirectional": "--bidirectional/--unidirectional",
    "regular": "--regular/--rows-as-steps",
}


def flag_of(name: str) -> str:
    """The command-line flag of setting ``name`` (``hidden`` -> ``--hidden-size``; for an on/off
    pair, its "on" side)."""
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-")).split("/")[0]
