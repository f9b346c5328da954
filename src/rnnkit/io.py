"""Files of runs and data sets, read and written as untrusted input.

A run directory may come from someone else (shared, downloaded, served), so nothing here follows
a symbolic link: files are opened with ``O_NOFOLLOW``, a run's tree is checked for links before
it is used (`check_no_links`), temporary files get unpredictable names made with ``O_EXCL``
(`tempfile.mkstemp`) and are put in place with one ``os.replace`` (which replaces a link, never
its target). Reads are bounded: a file larger than its reader's limit is refused before it is
read. Every failure a user can cause is one `RnnkitError` line naming the file.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rnnkit.errors import RnnkitError

#: the largest JSON file of a run read (configs, manifests, trainer state, vocabularies)
MAX_JSON_BYTES = 64 << 20
#: the most entries a run directory's tree may hold (a run has a few dozen files)
MAX_RUN_ENTRIES = 100_000
_NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def open_fd(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``os.open`` that never follows a symbolic link in the last component of ``path``.

    Raises:
        RnnkitError: ``path`` is a symbolic link.
        OSError: any other failure (missing file, permissions), for the caller to word.
    """
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as err:
        if os.path.islink(path):
            raise link_error(Path(path)) from None
        raise err


def link_error(path: Path) -> RnnkitError:
    """The one line refusing the symbolic link ``path`` inside a run or data set."""
    return RnnkitError(
        f"{path} is a symbolic link; rnnkit does not follow links inside a run or data set "
        "(they could point anywhere): replace it with the file itself"
    )


def read_bytes(path: str | os.PathLike, limit: int) -> bytes:
    """The content of the regular file ``path`` (not a link), refused past ``limit`` bytes.

    Raises:
        RnnkitError: missing, a link, not a regular file, unreadable, or larger than ``limit``.
    """
    path = Path(path)
    try:
        fd = open_fd(path)
    except OSError as err:
        raise RnnkitError(f"cannot read {path} ({err.strerror or err})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RnnkitError(f"{path} is not a regular file; give a file")
        if info.st_size > limit:
            raise RnnkitError(
                f"{path} has {info.st_size} bytes, more than the {limit} rnnkit reads from such a "
                "file; it is not a file rnnkit wrote"
            )
        data = f.read(limit + 1)
    if len(data) > limit:  # grew while read
        raise RnnkitError(f"{path} grew past {limit} bytes while being read")
    return data


def parse_json(data: bytes | str, source: object) -> Any:
    """JSON of ``data`` (read from ``source``), malformed or too deeply nested input refused.

    Raises:
        RnnkitError: not UTF-8, not JSON, or nested too deeply to parse.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except UnicodeDecodeError as err:
        raise RnnkitError(f"{source} is not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise RnnkitError(f"{source} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise RnnkitError(f"{source} is nested too deeply to be a file rnnkit wrote") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise RnnkitError(f"{source} is not JSON rnnkit can read ({err})") from None


def read_json(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> Any:
    """Parse the JSON file ``path`` (see `read_bytes` and `parse_json`)."""
    return parse_json(read_bytes(path, limit), path)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented, key-sorted, strict JSON bytes (NaN and infinities as null)."""
    return (json.dumps(finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def json_line(obj: Any) -> str:
    """``obj`` as one line of strict JSON (NaN and infinities as null), with its newline."""
    return json.dumps(finite(obj), sort_keys=True, allow_nan=False) + "\n"


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_error(path: Path, err: OSError) -> RnnkitError:
    """The user-facing error of a failed write to ``path``."""
    return RnnkitError(
        f"cannot write {path} ({err.strerror or err}); free disk space or make the directory "
        "writable (or choose another --out); files already there are intact"
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path``: into a new temporary file beside it (an unpredictable name,
    created exclusively), synced, then renamed over ``path`` (a link there is replaced, its
    target untouched).

    Raises:
        RnnkitError: the file cannot be written (full disk, read-only directory); ``path`` is
            left as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as err:
        raise write_error(path, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, err) from None


#: the suffix of `atomic_write_bytes`'s temporary files (what a clean-up may delete)
TMP_SUFFIX = ".rnnkit-tmp"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON, atomically."""
    atomic_write_bytes(path, json_bytes(obj))


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (which must not exist, not even as a link) holding ``data``, synced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` (created if missing; never through a link)."""
    try:
        fd = open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        raise write_error(path, err) from None


def check_writable(directory: Path) -> None:
    """Raise `RnnkitError` now if ``directory`` (or, if missing, its nearest parent) cannot be
    written, rather than after the first training steps. The probe is a new file of an
    unpredictable name (nothing planted can redirect it), deleted at once."""
    target = directory
    while not target.exists() and target != target.parent:
        target = target.parent
    try:
        fd, probe = tempfile.mkstemp(dir=target, prefix=".rnnkit-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RnnkitError(
            f"cannot write in {target} ({err.strerror or err}); make it writable or choose "
            "another run directory"
        ) from None


def check_no_links(root: Path) -> None:
    """Refuse a run directory holding a symbolic link anywhere in its tree (``root`` itself
    may be one: the user named it), or more than `MAX_RUN_ENTRIES` entries.

    Raises:
        RnnkitError: naming the first link found.
    """
    for count, entry in enumerate(_entries(root)):
        if entry.is_symlink():
            raise link_error(Path(entry.path))
        if count >= MAX_RUN_ENTRIES:
            raise RnnkitError(f"{root} holds more than {MAX_RUN_ENTRIES} files; not a run")


def _entries(directory: Path) -> Iterator[os.DirEntry]:
    """Every entry under ``directory``, without following links (iterative: any depth)."""
    pending = [directory]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as found:
                entries = list(found)
        except OSError as err:
            raise RnnkitError(f"cannot list {current} ({err.strerror or err})") from None
        for entry in entries:
            yield entry
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))


def lock_file(path: Path, what: str) -> int:
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``path``, created if needed (never
    through a link), with our PID in it; returns the descriptor, whose closing (or the
    process's death) releases the lock.

    Raises:
        RnnkitError: another process holds it (named by its PID), or it cannot be created.
    """
    try:
        fd = open_fd(path, os.O_RDWR | os.O_CREAT)
    except OSError as err:
        raise write_error(path, err) from None
    if not try_lock(fd):
        holder = lock_holder(fd)
        os.close(fd)
        raise RnnkitError(
            f"{what} is in use by {holder} (lock {path}); wait for it to finish or stop it, then "
            "try again"
        )
    mark_holder(fd)
    return fd


def try_lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting; False if another process has it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def mark_holder(fd: int) -> None:
    """Write our PID into the lock file of ``fd`` (which we hold), for `lock_holder`."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def lock_holder(fd: int) -> str:
    """Who holds the lock file of ``fd``: "process N", or "another process" if it says not."""
    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f"process {holder}" if holder.isdigit() else "another process"
