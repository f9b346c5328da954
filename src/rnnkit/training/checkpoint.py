"""Run directories and checkpoints: safetensors and JSON only, every write atomic and verified.

A run directory holds::

    config.json             format, format_version, task name, task config, training config
    checkpoints/step-N/     the last `KEEP` complete checkpoints, each with its manifest.json
    model.safetensors       the model's state_dict (the latest checkpoint)
    best.safetensors        the model at its best validation loss (when evaluated)
    optimizer.safetensors   the optimizer's tensors; its param groups as JSON metadata
    trainer.safetensors     RNG states and the carried recurrent state (truncated BPTT)
    trainer.json            step, elapsed time, best loss, early-stopping counter
    manifest.json           step, size and sha256 of each of the files above
    metrics.jsonl           one JSON object per logged step (see `rnnkit.training.metrics`)
    loss.png                the loss curve
    vocab.json              (tasks with a vocabulary)

Nothing is ever unpickled: loading a run never executes code from it.

A checkpoint is written whole into ``checkpoints/.tmp-step-N/`` (every file synced, then its
``manifest.json`` with the sha256 and size of each file), and committed by renaming that directory
to ``checkpoints/step-N`` (one atomic rename). The files at the top of the run are then hard links
to the latest checkpoint's (copies where links are not possible), its ``manifest.json`` last.

Loading (`latest_checkpoint`) takes the newest ``step-N`` whose files all match its manifest; a
damaged one (a flipped byte, a truncated file) is reported with a warning and the previous one is
used, which is why the last `KEEP` are kept. A process killed at any moment therefore leaves the
previous checkpoint or the new one, never a mix. A save that fails (a full disk, a read-only
directory) removes its temporary directory and raises `RnnkitError`, leaving the rest untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
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
MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
#: the files a checkpoint may hold, mirrored at the top of the run directory
CHECKPOINT_FILES = (MODEL, BEST, OPTIMIZER, TRAINER_TENSORS, TRAINER_STATE)
#: complete checkpoints kept (the newest may be damaged: the one before it is the fallback)
KEEP = 2


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    Raises:
        RnnkitError: the file cannot be written (full disk, read-only directory); ``path`` is
            left as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_error(path, err) from None


def write_error(path: Path, err: OSError) -> RnnkitError:
    """The user-facing error of a failed write to ``path``."""
    return RnnkitError(
        f"cannot write {path} ({err.strerror or err}); free disk space or make the directory "
        "writable (or choose another --out); files already there are intact"
    )


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(run_dir: Path) -> None:
    """Raise `RnnkitError` now if ``run_dir`` (or, if missing, its nearest parent) cannot be
    written, rather than after the first training steps."""
    target = run_dir
    while not target.exists() and target != target.parent:
        target = target.parent
    probe = target / f".rnnkit-write-test-{os.getpid()}"
    try:
        _write_synced(probe, b"")
        probe.unlink()
    except OSError as err:
        raise RnnkitError(
            f"cannot write in {target} ({err.strerror or err}); make it writable or choose "
            "another run directory"
        ) from None


# --- run directories -------------------------------------------------------------------------


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Create ``run_dir`` and write its ``config.json`` (adds the format stamp)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(run_dir, err) from None
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


# --- checkpoints: write whole, commit by one rename, verify on load -----------------------------


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(run_dir: Path, step: int, files: Mapping[str, bytes], keep: int = KEEP) -> Path:
    """Commit ``files`` (names of `CHECKPOINT_FILES` -> bytes) as the checkpoint of ``step``;
    mirror it at the top of ``run_dir`` and drop all but the newest ``keep`` checkpoints.

    Raises:
        RnnkitError: the checkpoint cannot be written; the previous ones are intact.
    """
    root = run_dir / CHECKPOINTS
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    try:
        root.mkdir(exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        entries = {}
        for name, data in files.items():
            _write_synced(tmp / name, data)
            entries[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        _write_synced(tmp / MANIFEST, json_bytes({"step": step, "files": entries}))
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again: set the old one aside first
            _discard(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(final, err) from None
    _mirror(run_dir, final)
    _prune(root, keep)
    return final


def _discard(directory: Path) -> None:
    """Rename ``directory`` to a hidden name (so no loader sees it) and delete it."""
    trash = directory.with_name(f".old-{directory.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _mirror(run_dir: Path, checkpoint: Path) -> None:
    """Make the top-level files of ``run_dir`` those of ``checkpoint`` (manifest last)."""
    present = set(read_manifest(checkpoint / MANIFEST))
    try:
        for name in CHECKPOINT_FILES:
            if name in present:
                _link(checkpoint / name, run_dir / name)
            else:
                (run_dir / name).unlink(missing_ok=True)
        _link(checkpoint / MANIFEST, run_dir / MANIFEST)
    except OSError as err:
        raise write_error(run_dir, err) from None


def _link(source: Path, target: Path) -> None:
    """Atomically make ``target`` a hard link to ``source`` (a copy if links fail)."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _steps(root: Path) -> list[Path]:
    """The committed checkpoint directories under ``root``, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")]
    return sorted((p for p in found if p.name[5:].isdigit()), reverse=True)


def _prune(root: Path, keep: int) -> None:
    for old in _steps(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The file entries of a ``manifest.json``, checked to be plain data naming only
    `CHECKPOINT_FILES` (so a crafted manifest cannot point outside its directory).

    Raises:
        RnnkitError: the manifest is unreadable or malformed.
    """
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["files"]
        ok = all(
            name in CHECKPOINT_FILES
            and isinstance(entry["bytes"], int)
            and isinstance(entry["sha256"], str)
            for name, entry in entries.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise RnnkitError(f"{path} is unreadable ({err}); the checkpoint is damaged") from None
    if not ok:
        raise RnnkitError(f"{path} names files a checkpoint does not have; refused")
    return entries


def verify_checkpoint(checkpoint: Path) -> str | None:
    """None if every file of ``checkpoint`` matches its manifest, else what is wrong."""
    try:
        entries = read_manifest(checkpoint / MANIFEST)
    except RnnkitError as err:
        return str(err)
    for name, entry in entries.items():
        problem = _verify_file(checkpoint / name, entry)
        if problem:
            return problem
    return None


def _verify_file(path: Path, entry: Mapping[str, Any]) -> str | None:
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"{path.name} has {size} bytes, {entry['bytes']} were written (truncated?)"
    if sha256_of(path) != entry["sha256"]:
        return f"{path.name} does not match its sha256 (the file was changed or corrupted)"
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` whose files match their manifest, or None if the
    run has none. Damaged newer ones are reported with a warning and skipped."""
    for checkpoint in _steps(run_dir / CHECKPOINTS):
        problem = verify_checkpoint(checkpoint)
        if problem is None:
            return checkpoint
        warnings.warn(
            f"checkpoint {checkpoint} is damaged: {problem}; falling back to the previous one",
            stacklevel=2,
        )
    return None


def set_aside_damaged(run_dir: Path, valid: Path | None) -> None:
    """Rename the checkpoints newer than ``valid`` to ``step-N.damaged-K`` (kept for
    inspection, never loaded), so that training on from ``valid`` can save those steps again."""
    for checkpoint in _steps(run_dir / CHECKPOINTS):
        if valid is not None and checkpoint.name <= valid.name:
            break
        k = 0
        while checkpoint.with_name(f"{checkpoint.name}.damaged-{k}").exists():
            k += 1
        os.rename(checkpoint, checkpoint.with_name(f"{checkpoint.name}.damaged-{k}"))


def recover(run_dir: Path, clean: bool = False) -> Path | None:
    """Point the top-level files of ``run_dir`` at its newest valid checkpoint (after a kill
    between the commit and the mirror, or a damaged newest checkpoint) and return that
    checkpoint (None for a run without ``checkpoints/``: written before they existed, or not
    yet checkpointed). ``clean`` (the training process only): also delete the debris of
    interrupted saves and set damaged checkpoints aside.
    """
    run_dir = Path(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if clean:
        for debris in [*run_dir.glob("*.tmp"), *(run_dir / CHECKPOINTS).glob(".*")]:
            shutil.rmtree(debris) if debris.is_dir() else debris.unlink()
        set_aside_damaged(run_dir, checkpoint)
    if checkpoint is not None and not _mirrors(run_dir, checkpoint):
        _mirror(run_dir, checkpoint)
    return checkpoint


def _mirrors(run_dir: Path, checkpoint: Path) -> bool:
    """True when the top-level files are exactly ``checkpoint``'s."""
    top = run_dir / MANIFEST
    if not top.is_file() or top.read_bytes() != (checkpoint / MANIFEST).read_bytes():
        return False
    entries = read_manifest(top)
    return all(_verify_file(run_dir / name, entry) is None for name, entry in entries.items())


def _manifest_entry(path: Path) -> Mapping[str, Any] | None:
    """The entry of ``path`` in the manifest beside it, if there is one."""
    manifest = path.parent / MANIFEST
    return read_manifest(manifest).get(path.name) if manifest.is_file() else None


# --- tensors <-> bytes -------------------------------------------------------------------------


def tensors_to_bytes(
    tensors: Mapping[str, Tensor], metadata: dict[str, Any] | None = None
) -> bytes:
    """safetensors bytes of ``tensors`` (copied, so shared storage is fine); metadata as JSON."""
    flat = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    meta = {"json": json.dumps(metadata or {})}
    return st_save(flat, metadata=meta)


def read_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and JSON metadata of a safetensors file written by `tensors_to_bytes`, checked
    against the sha256 of the manifest beside it (if any)."""
    if not path.is_file():
        raise RnnkitError(f"{path} is missing; the run has no checkpoint yet or is damaged")
    entry = _manifest_entry(path)
    problem = _verify_file(path, entry) if entry is not None else None
    if problem:
        raise RnnkitError(
            f"{path} is damaged: {problem}; resume the run (or run any command on it) to fall "
            "back to its previous checkpoint"
        )
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
    try:
        for name, value in tensors.items():
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
        for name, value in meta["scalars"].items():
            pid, key = name.split(".", 1)
            state.setdefault(int(pid), {})[key] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as err:
        raise RnnkitError(f"{path} does not fit the optimizer of config.json ({err})") from None


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
