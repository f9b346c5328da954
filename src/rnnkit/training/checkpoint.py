"""Run directories and checkpoints: safetensors and JSON only, every write atomic.

A run directory holds::

    config.json             format, format_version, task name, task config, training config
    model.safetensors       the model's state_dict (the latest checkpoint)
    best.safetensors        the model at its best validation loss (when evaluated)
    optimizer.safetensors   the optimizer's tensors; its param groups as JSON metadata
    trainer.safetensors     RNG states and the carried recurrent state (truncated BPTT)
    trainer.json            step, elapsed time, best loss, early-stopping counter
    metrics.jsonl           one JSON object per logged step (see `rnnkit.training.metrics`)
    loss.png                the loss curve
    vocab.json              (tasks with a vocabulary)

Nothing is ever unpickled: loading a run never executes code from it.

A checkpoint is several files, so it is committed in two phases: every file is first written to
``NAME.tmp``; then ``checkpoint.commit`` (the list of names) is written atomically; then each
``NAME.tmp`` is renamed over ``NAME`` and the marker removed. `recover` (called before every load)
finishes a commit whose marker exists and deletes temporary files of one that never reached it, so
a process killed at any point leaves either the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from rnnkit.errors import RnnkitError

FORMAT = "rnnkit-run"
FORMAT_VERSION = 1
CONFIG = "config.json"
MODEL = "model.safetensors"
BEST = "best.safetensors"
OPTIMIZER = "optimizer.safetensors"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_STATE = "trainer.json"
COMMIT = "checkpoint.commit"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    _write_synced(tmp, data)
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented, key-sorted JSON bytes."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def read_json(path: Path) -> Any:
    """Parse a JSON file of a run, with a clear error if it is damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RnnkitError(f"cannot read {path} ({err}); the run is damaged") from None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# --- run directories -------------------------------------------------------------------------


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Create ``run_dir`` and write its ``config.json`` (adds the format stamp)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        run_dir / CONFIG, {"format": FORMAT, "format_version": FORMAT_VERSION, **config}
    )


def update_train_config(run_dir: Path, train: dict[str, Any]) -> None:
    """Record new training settings (a resumed run's budgets) in ``config.json``."""
    config = read_config(run_dir)
    atomic_write_json(run_dir / CONFIG, {**config, "train": train})


def is_run(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory with a ``config.json``."""
    return (Path(path) / CONFIG).is_file()


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``config.json``, after checking that it is a run of a format we can read.

    Raises:
        RnnkitError: ``run_dir`` is missing, not a run, or from an incompatible version.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RnnkitError(f"run directory {run_dir} does not exist; give the --out of a training")
    if not run_dir.is_dir():
        raise RnnkitError(f"{run_dir} is a file, not a run directory; give the --out of a training")
    path = run_dir / CONFIG
    if not path.is_file():
        raise RnnkitError(
            f"{run_dir} is not an rnnkit run (no {CONFIG}); give a directory made by `rnnkit train`"
        )
    config = read_json(path)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise RnnkitError(f"{run_dir} is not an rnnkit run ({CONFIG} lacks format={FORMAT!r})")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise RnnkitError(
            f"{run_dir} is a run of format version {version}, this rnnkit reads version "
            f"{FORMAT_VERSION}; use the rnnkit release that made it, or train again"
        )
    return config


# --- two-phase checkpoint commit ---------------------------------------------------------------


def commit_files(run_dir: Path, files: Mapping[str, bytes]) -> None:
    """Replace several files of ``run_dir`` as one atomic unit (see the module docstring)."""
    for name, data in files.items():
        _write_synced(run_dir / (name + ".tmp"), data)
    atomic_write_json(run_dir / COMMIT, sorted(files))
    _finish_commit(run_dir)


def _finish_commit(run_dir: Path) -> None:
    names = json.loads((run_dir / COMMIT).read_text())
    for name in names:
        tmp = run_dir / (name + ".tmp")
        if tmp.exists():
            os.replace(tmp, run_dir / name)
    (run_dir / COMMIT).unlink()


def recover(run_dir: Path) -> None:
    """Finish a committed checkpoint, or drop the temporary files of an uncommitted one."""
    if (run_dir / COMMIT).exists():
        _finish_commit(run_dir)
    for tmp in run_dir.glob("*.tmp"):
        tmp.unlink()


# --- tensors <-> bytes -------------------------------------------------------------------------


def tensors_to_bytes(
    tensors: Mapping[str, Tensor], metadata: dict[str, Any] | None = None
) -> bytes:
    """safetensors bytes of ``tensors`` (copied, so shared storage is fine); metadata as JSON."""
    flat = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    meta = {"json": json.dumps(metadata or {})}
    return st_save(flat, metadata=meta)


def read_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and JSON metadata of a safetensors file written by `tensors_to_bytes`."""
    if not path.is_file():
        raise RnnkitError(f"{path} is missing; the run has no checkpoint yet or is damaged")
    try:
        tensors = st_load(path.read_bytes())
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("json", "{}"))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise RnnkitError(f"{path} is not a readable safetensors file ({err})") from None
    return tensors, meta


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Load a ``state_dict`` saved as safetensors into ``model`` (strict)."""
    tensors, _ = read_tensors(path)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise RnnkitError(f"{path} does not fit the model of config.json: {first}") from None


def optimizer_to_bytes(optimizer: torch.optim.Optimizer) -> bytes:
    """The optimizer's state_dict: tensors as safetensors, everything else as JSON metadata."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors_to_bytes(tensors, {"param_groups": sd["param_groups"], "scalars": scalars})


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Inverse of `optimizer_to_bytes`."""
    tensors, meta = read_tensors(path)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def flatten_state(state: Any, prefix: str = "carried") -> tuple[dict[str, Tensor], Any]:
    """A recurrent state (None, a tensor, or nested tuples of them) as named tensors + a spec."""
    if state is None:
        return {}, None
    if isinstance(state, Tensor):
        return {prefix: state}, prefix
    tensors, spec = {}, []
    for i, part in enumerate(state):
        t, s = flatten_state(part, f"{prefix}.{i}")
        tensors.update(t)
        spec.append(s)
    return tensors, spec


def unflatten_state(tensors: Mapping[str, Tensor], spec: Any) -> Any:
    """Inverse of `flatten_state`."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return tensors[spec]
    return tuple(unflatten_state(tensors, s) for s in spec)
