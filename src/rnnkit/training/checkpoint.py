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

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from rnnkit.errors import RnnkitError, shorten
from rnnkit.io import (
    TMP_SUFFIX,
    atomic_write_json,
    check_no_links,
    json_bytes,
    lock_file,
    open_fd,
    parse_json,
    read_bytes,
    read_json,
    write_error,
    write_new,
)

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
LOCK = "train.lock"
#: complete checkpoints kept (the newest may be damaged: the one before it is the fallback)
KEEP = 2


def _write_synced(path: Path, data: bytes) -> None:
    """Create ``path`` (new, not a link) with ``data``, synced to disk."""
    write_new(path, data)


def _fsync_dir(path: Path) -> None:
    fd = open_fd(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def lock_run(run_dir: Path) -> BinaryIO:
    """Create ``run_dir`` if needed and hold its training lock (``train.lock``, an advisory
    ``flock``), released when the file returned is closed or collected, or the process dies.

    Raises:
        RnnkitError: another process trains this run (named by its PID).
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(run_dir, err) from None
    return os.fdopen(lock_file(run_dir / LOCK, f"run {run_dir}"), "rb")


def update_train_config(run_dir: Path, train: dict[str, Any]) -> None:
    """Record new training settings (a resumed run's budgets) in ``config.json``."""
    config = read_config(run_dir)
    atomic_write_json(run_dir / CONFIG, {**config, "train": train})


def is_run(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory with a ``config.json`` (a file or a link)."""
    return os.path.lexists(Path(path) / CONFIG)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``config.json``, after checking that the run holds no symbolic link and is of
    a format we can read.

    Raises:
        RnnkitError: ``run_dir`` is missing, not a run, holds a link, is from an incompatible
            version, or its config is malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RnnkitError(f"run directory {run_dir} does not exist; give the --out of a training")
    if not run_dir.is_dir():
        raise RnnkitError(f"{run_dir} is a file, not a run directory; give the --out of a training")
    if not os.path.lexists(run_dir / CONFIG):
        raise RnnkitError(
            f"{run_dir} is not an rnnkit run (no {CONFIG}); give a directory made by `rnnkit train`"
        )
    check_no_links(run_dir)
    config = read_json(run_dir / CONFIG)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise RnnkitError(f"{run_dir} is not an rnnkit run ({CONFIG} lacks format={FORMAT!r})")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise RnnkitError(
            f"{run_dir} is a run of format version {shorten(version)}, this rnnkit reads version "
            f"{FORMAT_VERSION}; use the rnnkit release that made it, or train again"
        )
    for key, kind in (("task", str), ("task_config", dict), ("train", dict)):
        if not isinstance(config.get(key), kind):
            raise RnnkitError(
                f"{run_dir / CONFIG}: {key!r} must be a {kind.__name__}, not "
                f"{shorten(config.get(key))}; the run is damaged"
            )
    return config


# --- checkpoints: write whole, commit by one rename, verify on load -----------------------------


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's content (never through a link)."""
    digest = hashlib.sha256()
    with os.fdopen(open_fd(path), "rb") as f:
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
        if not os.path.lexists(root):
            root.mkdir()
        _remove_own(tmp)
        tmp.mkdir()
        entries = {}
        for name, data in files.items():
            _write_synced(tmp / name, data)
            entries[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        _write_synced(tmp / MANIFEST, json_bytes({"step": step, "files": entries}))
        _fsync_dir(tmp)
        if os.path.lexists(final):  # the same step saved again: set the old one aside first
            _discard(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as err:
        _remove_own(tmp)
        raise write_error(final, err) from None
    _mirror(run_dir, final)
    _prune(root, keep)
    return final


def _remove_own(path: Path) -> None:
    """Delete ``path`` if it is a regular file or a real directory (never a link's target;
    a link itself is left for `check_no_links` to report)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)  # rmtree never follows links inside
    elif stat.S_ISREG(mode):
        path.unlink(missing_ok=True)


def _discard(directory: Path) -> None:
    """Rename ``directory`` to a hidden name (so no loader sees it) and delete it."""
    trash = directory.with_name(f".old-{directory.name}")
    _remove_own(trash)
    os.rename(directory, trash)
    _remove_own(trash)


def _mirror(run_dir: Path, checkpoint: Path) -> None:
    """Make the top-level files of ``run_dir`` those of ``checkpoint`` (manifest last)."""
    present = set(read_manifest(checkpoint / MANIFEST))
    try:
        for name in CHECKPOINT_FILES:
            if name in present:
                _link(checkpoint / name, run_dir / name)
            else:
                _remove_own(run_dir / name)
        _link(checkpoint / MANIFEST, run_dir / MANIFEST)
    except OSError as err:
        raise write_error(run_dir, err) from None


def _link(source: Path, target: Path) -> None:
    """Atomically make ``target`` a hard link to ``source`` (a copy if links fail), through a
    new temporary name (`TMP_SUFFIX`), so a link planted at ``target`` is replaced, not
    followed."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
    try:
        os.link(source, tmp, follow_symlinks=False)
    except OSError:
        with os.fdopen(open_fd(source), "rb") as f:
            write_new(tmp, f.read())
    try:
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _steps(root: Path) -> list[Path]:
    """The committed checkpoint directories under ``root``, newest first (links ignored:
    `check_no_links` refuses them)."""
    try:
        with os.scandir(root) as found:
            names = [e.name for e in found if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise RnnkitError(f"cannot list {root} ({err.strerror or err})") from None
    return sorted((root / n for n in names if _STEP.fullmatch(n)), reverse=True)


_STEP = re.compile(r"step-\d{8,}")
#: debris of interrupted saves that `recover` may delete: exactly these names, nothing else
_DEBRIS = re.compile(r"\.(tmp|old)-step-\d{8,}")
_TOP_DEBRIS = re.compile(r"\..+\..+" + re.escape(TMP_SUFFIX))


def _prune(root: Path, keep: int) -> None:
    for old in _steps(root)[keep:]:
        _remove_own(old)


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The file entries of a ``manifest.json``, checked to be plain data naming only
    `CHECKPOINT_FILES` (so a crafted manifest cannot point outside its directory).

    Raises:
        RnnkitError: the manifest is unreadable or malformed.
    """
    manifest = read_json(path)
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(entries, dict) and not set(entries) <= set(CHECKPOINT_FILES):
        raise RnnkitError(f"{path} names files a checkpoint does not have; refused")
    if not isinstance(entries, dict) or not all(
        isinstance(entry, dict)
        and type(entry.get("bytes")) is int
        and entry["bytes"] >= 0
        and isinstance(entry.get("sha256"), str)
        for name, entry in entries.items()
    ):
        raise RnnkitError(f"{path} is not a manifest of a checkpoint's files; refused")
    return entries


def verify_checkpoint(checkpoint: Path) -> str | None:
    """None if every file of ``checkpoint`` matches its manifest, else what is wrong."""
    try:
        entries = read_manifest(checkpoint / MANIFEST)
        for name, entry in entries.items():
            problem = _verify_file(checkpoint / name, entry)
            if problem:
                return problem
    except RnnkitError as err:
        return str(err)
    return None


def _verify_file(path: Path, entry: Mapping[str, Any]) -> str | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return f"{path.name} is missing"
    if not stat.S_ISREG(info.st_mode):
        return f"{path.name} is not a regular file"
    if info.st_size != entry["bytes"]:
        return f"{path.name} has {info.st_size} bytes, {entry['bytes']} were written (truncated?)"
    if sha256_of(path) != entry["sha256"]:
        return f"{path.name} does not match its sha256 (the file was changed or corrupted)"
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` whose files match their manifest, or None if the
    run has none. Damaged newer ones are reported with a warning and skipped. Reads only."""
    for checkpoint in _steps(run_dir / CHECKPOINTS):
        problem = verify_checkpoint(checkpoint)
        if problem is None:
            return checkpoint
        warnings.warn(
            f"checkpoint {checkpoint} is damaged: {problem}; falling back to the previous one",
            stacklevel=2,
        )
    return None


def weights_file(run_dir: str | os.PathLike, which: str = "last") -> Path:
    """The weights to load from a trained run, chosen without writing anything: ``which``
    "last" (model.safetensors) or "best" (best.safetensors, the last model if the run was
    never evaluated), from the newest verified checkpoint (the top of the run for a run
    without ``checkpoints/``).

    Raises:
        RnnkitError: ``which`` is neither, or the run has no weights yet.
    """
    if which not in ("last", "best"):
        raise RnnkitError(f"checkpoint must be 'last' or 'best', got {shorten(which)}")
    run_dir = Path(run_dir)
    source = latest_checkpoint(run_dir) or run_dir
    path = source / (BEST if which == "best" else MODEL)
    if which == "best" and not os.path.lexists(path):
        path = source / MODEL
    if not os.path.lexists(path):
        raise RnnkitError(f"{run_dir} has no trained weights yet; train it first")
    return path


def set_aside_damaged(run_dir: Path, valid: Path | None) -> None:
    """Rename the checkpoints newer than ``valid`` to ``step-N.damaged-K`` (kept for
    inspection, never loaded), so that training on from ``valid`` can save those steps again."""
    for checkpoint in _steps(run_dir / CHECKPOINTS):
        if valid is not None and checkpoint.name <= valid.name:
            break
        k = 0
        while os.path.lexists(checkpoint.with_name(f"{checkpoint.name}.damaged-{k}")):
            k += 1
        os.rename(checkpoint, checkpoint.with_name(f"{checkpoint.name}.damaged-{k}"))


def recover(run_dir: Path) -> Path | None:
    """Repair a run before training on (the trainer only, holding the run's lock): delete the
    debris of interrupted saves (only rnnkit's own temporary names, only regular files and
    folders), set damaged checkpoints aside, and point the top-level files at the newest valid
    checkpoint (after a kill between the commit and the mirror). Returns that checkpoint (None
    for a run without ``checkpoints/``: written before they existed, or not yet checkpointed).
    """
    run_dir = Path(run_dir)
    check_no_links(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    for folder, pattern in ((run_dir, _TOP_DEBRIS), (run_dir / CHECKPOINTS, _DEBRIS)):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(folder) as it:
            names = [e.name for e in it]
        for name in names if os.path.isdir(folder) else []:
            if pattern.fullmatch(name):
                _remove_own(folder / name)
    set_aside_damaged(run_dir, checkpoint)
    if checkpoint is not None and not _mirrors(run_dir, checkpoint):
        _mirror(run_dir, checkpoint)
    return checkpoint


def _mirrors(run_dir: Path, checkpoint: Path) -> bool:
    """True when the top-level files are exactly ``checkpoint``'s."""
    top = run_dir / MANIFEST
    if not os.path.lexists(top):
        return False
    if read_bytes(top, MAX_MANIFEST) != read_bytes(checkpoint / MANIFEST, MAX_MANIFEST):
        return False
    entries = read_manifest(top)
    return all(_verify_file(run_dir / name, entry) is None for name, entry in entries.items())


MAX_MANIFEST = 1 << 20


def _manifest_entry(path: Path) -> Mapping[str, Any] | None:
    """The entry of ``path`` in the manifest beside it, if there is one."""
    manifest = path.parent / MANIFEST
    return read_manifest(manifest).get(path.name) if os.path.lexists(manifest) else None


# --- tensors <-> bytes -------------------------------------------------------------------------


def tensors_to_bytes(
    tensors: Mapping[str, Tensor], metadata: dict[str, Any] | None = None
) -> bytes:
    """safetensors bytes of ``tensors`` (copied, so shared storage is fine); metadata as JSON."""
    flat = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    meta = {"json": json.dumps(metadata or {})}
    return st_save(flat, metadata=meta)


#: the largest safetensors header read (names, dtypes, shapes of a few thousand tensors)
MAX_HEADER = 16 << 20
#: the most bytes of tensors read from a run's file that no model bounds (trainer state)
MAX_STATE_BYTES = 1 << 30


def read_tensors(
    path: Path, limit: int = MAX_STATE_BYTES
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and JSON metadata of a safetensors file written by `tensors_to_bytes`, read
    once (never through a link, refused past ``limit`` bytes before anything is read) and
    checked against the sha256 of the manifest beside it (if any) and against its own header.
    """
    if not os.path.lexists(path):
        raise RnnkitError(f"{path} is missing; the run has no checkpoint yet or is damaged")
    entry = _manifest_entry(path)
    data = read_bytes(path, limit + MAX_HEADER)
    problem = _mismatch(path, data, entry) if entry is not None else None
    if problem:
        raise RnnkitError(
            f"{path} is damaged: {problem}; resume the run to fall back to its previous checkpoint"
        )
    header = safetensors_header(data[: 8 + MAX_HEADER], path, len(data))
    try:
        tensors = st_load(data)
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise RnnkitError(f"{path} is not a readable safetensors file ({shorten(err)})") from None
    meta = parse_json(header.get("__metadata__", {}).get("json", "{}"), f"{path}'s metadata")
    if not isinstance(meta, dict):
        raise RnnkitError(f"{path}'s metadata is not a JSON object; the run is damaged")
    return tensors, meta


def _mismatch(path: Path, data: bytes, entry: Mapping[str, Any]) -> str | None:
    """What is wrong with the bytes ``data`` of ``path`` against its manifest ``entry``."""
    if len(data) != entry["bytes"]:
        return f"{path.name} has {len(data)} bytes, {entry['bytes']} were written (truncated?)"
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return f"{path.name} does not match its sha256 (the file was changed or corrupted)"
    return None


def safetensors_header(data: bytes, path: Path, size: int) -> dict[str, Any]:
    """The JSON header at the start of the safetensors file ``path`` of ``size`` bytes,
    checked to describe exactly the file's data (a file padded or cut is refused)."""
    length = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < length <= min(MAX_HEADER, size - 8):
        raise RnnkitError(f"{path} is not a safetensors file (bad header length)")
    header = parse_json(data[8 : 8 + length], path)
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise RnnkitError(f"{path} is not a safetensors file (its header is not an object)")
    ends = [0]
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and _ints(offsets)):
            raise RnnkitError(f"{path}: tensor {shorten(name)} has no valid data offsets")
        ends.append(offsets[1])
    if 8 + length + max(ends) != size:
        raise RnnkitError(
            f"{path} has {size} bytes but its header describes {8 + length + max(ends)}; the file "
            "is damaged or was made to mislead"
        )
    return header


def _ints(values: list) -> bool:
    return all(type(v) is int and v >= 0 for v in values)


def state_bytes(module_or_tensors: nn.Module | Mapping[str, Tensor]) -> int:
    """Bytes of a model's ``state_dict`` (or of named tensors) as safetensors would store."""
    tensors = (
        module_or_tensors.state_dict()
        if isinstance(module_or_tensors, nn.Module)
        else module_or_tensors
    )
    return sum(t.numel() * t.element_size() for t in tensors.values())


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Load a ``state_dict`` saved as safetensors into ``model`` (strict); a file larger than
    the model's weights is refused before it is read."""
    tensors, _ = read_tensors(path, limit=state_bytes(model) + (64 << 10))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise RnnkitError(f"{path} does not fit the model of config.json: {first}") from None


#: the most parameters a model built from a run's config may have (1 GiB of float32)
MAX_PARAMETERS = 1 << 28


def build_checked(build: Callable[[], nn.Module], source: object, strict: bool = True) -> nn.Module:
    """``build()``, once a build on the meta device (no memory) has shown that the model of
    ``source`` (a run or settings) has at most `MAX_PARAMETERS` parameters. A model that cannot
    be built on the meta device is refused (``strict``) or built as it is (a user's own task).

    Raises:
        RnnkitError: the settings ask for a larger model, or cannot build one.
    """
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in build().parameters())
    except RnnkitError:
        raise
    except (RuntimeError, TypeError, ValueError, OverflowError, MemoryError, IndexError) as err:
        if not strict:
            return build()
        raise RnnkitError(
            f"the settings of {source} do not build a model ({shorten(str(err))})"
        ) from None
    if count > MAX_PARAMETERS:
        raise RnnkitError(
            f"the settings of {source} build a model of {count:,} parameters, more than the "
            f"{MAX_PARAMETERS:,} rnnkit builds; use smaller sizes"
        )
    return build()


def load_trained(
    build: Callable[[], nn.Module], run_dir: str | os.PathLike, which: str = "last"
) -> nn.Module:
    """The model of a trained run, in eval mode: ``build()`` (its size checked first, see
    `build_checked`) loaded with the weights `weights_file` chooses; writes nothing, and
    chooses again if a trainer pruned the checkpoint meanwhile. On the CPU, or on the device of
    an enclosing `rnnkit.training.devices.predicting_on` (``--device`` of the predict commands).
    """
    from rnnkit.training.devices import place_trained

    model = build_checked(build, run_dir)
    for _ in range(2):  # a trainer may prune the checkpoint chosen meanwhile: choose again
        path = weights_file(run_dir, which)
        try:
            load_model_weights(model, path)
            return place_trained(model.eval())
        except RnnkitError:
            if os.path.lexists(path):
                raise
    load_model_weights(model, weights_file(run_dir, which))
    return place_trained(model.eval())


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
    """Inverse of `optimizer_to_bytes`; state that does not fit the optimizer's parameters
    (shapes, group settings of other types) is refused before it reaches them."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    tensors, meta = read_tensors(path, limit=3 * state_bytes(dict(enumerate(params))) + (1 << 20))
    state: dict[int, dict[str, Any]] = {}
    try:
        for name, value in tensors.items():
            _, pid, key = name.split(".", 2)
            param = params[int(pid)] if 0 <= int(pid) < len(params) else None
            wanted = torch.Size([]) if key == "step" or param is None else param.shape
            if param is None or value.shape != wanted:
                raise ValueError(f"tensor {shorten(name)} does not fit the parameters")
            state.setdefault(int(pid), {})[key] = value
        for name, value in meta["scalars"].items():
            pid, key = name.split(".", 1)
            if not isinstance(value, (int, float)):
                raise ValueError(f"scalar {shorten(name)} is not a number")
            state.setdefault(int(pid), {})[key] = value
        groups = meta["param_groups"]
        if not _groups_fit(groups, optimizer.param_groups):
            raise ValueError("its param_groups do not fit the optimizer's")
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as err:
        raise RnnkitError(
            f"{path} does not fit the optimizer of config.json ({shorten(str(err))})"
        ) from None


def _groups_fit(saved: Any, groups: list[dict[str, Any]]) -> bool:
    """Whether ``saved`` param groups have the optimizer's settings, each of the same kind."""
    if not isinstance(saved, list) or len(saved) != len(groups):
        return False
    for old, group in zip(saved, groups):
        if not isinstance(old, dict) or set(old) != set(group):
            return False
        for key, value in group.items():
            kind = (list, tuple) if isinstance(value, (list, tuple)) else type(value)
            widened = isinstance(value, float) and type(old[key]) is int
            if key != "params" and not isinstance(old[key], kind) and not widened:
                return False
        if len(old["params"]) != len(group["params"]):
            return False
    return True


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
