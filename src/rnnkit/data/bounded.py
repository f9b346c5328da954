"""Reading untrusted files within bounds: whole files (decompressed by suffix, in chunks) and JSON.

Data files and run files are untrusted input. `read_capped` never holds more than ``cap`` bytes:
a compressed file is inflated `CHUNK` bytes at a time and refused as soon as it passes the cap
(a 14 MB gzip of zeros is refused after ``cap`` bytes, not inflated to 6.5 GB first), and an
optional ``check`` sees each chunk before the next one is inflated. `load_json` turns every way
a JSON file can be malformed (too big, not UTF-8, not JSON, nested too deep for Python) into one
line of `RnnkitError` naming the file. Each reader passes its own cap (``MAX_TEXT_BYTES`` in
`rnnkit.data.text`, ``MAX_CSV_BYTES`` in `rnnkit.data.timeseries`, ...).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rnnkit.errors import RnnkitError, shorten

MAX_JSON_BYTES = 32 << 20
"""Bytes of one JSON file (32 MiB): the JSB chorales are 0.5 MB, a run's vocab.json of a million
words about 15 MB, NAB's combined_windows.json 20 kB. Parsing costs about 20 times the file."""

CHUNK = 1 << 20
"""Bytes read or inflated at a time (1 MiB)."""

DECOMPRESSED = {".gz": ("gzip", gzip.open), ".bz2": ("bzip2", bz2.open), ".xz": ("xz", lzma.open)}
"""Suffixes read decompressed: the format's name and its opener."""

_BROKEN = (OSError, EOFError, zlib.error, lzma.LZMAError)  # bad or truncated compressed data


def message_of(err: BaseException) -> str:
    """A library's error message, to quote in ours: as it is when short and on one line, else
    cut by `shorten` (a parser's message may quote a 200 MB line of the file)."""
    text = str(err).strip()
    return text if len(text) <= 80 and text.isprintable() else shorten(text)


def list_names(names: Sequence[str], most: int = 5, quote: bool = False) -> str:
    """The first ``most`` of ``names`` and how many there are in all, for quoting a file's column
    or class names on one line: each `shorten`ed (to 40 characters) if ``quote``, long or not
    printable."""
    plain = lambda n: not quote and len(n) <= 40 and n.isprintable()  # noqa: E731
    shown = [n if plain(n) else shorten(n, 40) for n in names[:most]]
    more = f", ... ({len(names)} in all)" if len(names) > most else ""
    return ", ".join(shown) + more


def size_text(n: int) -> str:
    """``n`` bytes for a message: "1 GiB", "32 MiB", "1,000 bytes"."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:,} bytes"


def read_capped(
    path: Path,
    cap: int,
    fix: str,
    check: Callable[[bytes, int], None] | None = None,
    compression: str | None = None,
) -> bytes | bytearray:
    """The bytes of ``path``, decompressed if its suffix is .gz, .bz2 or .xz, at most ``cap``.

    ``compression`` overrides the suffix: a key of `DECOMPRESSED`, or "plain".

    ``check(chunk, offset)`` sees each chunk (at byte ``offset`` of the decompressed data)
    before the next is read, and may raise. ``fix`` ends the too-big message (how to fix it).

    Raises:
        RnnkitError: more than ``cap`` bytes (after decompression), or bad compressed data.
    """
    kind, opener = DECOMPRESSED.get(compression or path.suffix.lower(), (None, None))
    if opener is None and path.is_file():
        size = path.stat().st_size
        if size > cap:
            raise RnnkitError(f"{path} holds {size:,} bytes, more than rnnkit reads from one file "
                              f"({size_text(cap)}); {fix}")  # fmt: skip
        data = path.read_bytes()
        if check is not None:
            check(data, 0)
        return data
    try:
        return _read_chunks(path, opener or open, cap, fix, check, kind)
    except _BROKEN as err:
        raise RnnkitError(f"{path} is not a readable {kind or 'binary'} file "
                          f"({message_of(err)}); check or re-download it") from None  # fmt: skip


def _read_chunks(
    path: Path,
    opener: Callable[..., Any],
    cap: int,
    fix: str,
    check: Callable[[bytes, int], None] | None,
    kind: str | None,
) -> bytearray:
    data = bytearray()
    with opener(path, "rb") as f:
        while chunk := f.read(CHUNK):
            if check is not None:
                check(chunk, len(data))
            if len(data) + len(chunk) > cap:
                after = f" after {kind} decompression" if kind else ""
                raise RnnkitError(f"{path} holds more than {size_text(cap)}{after}, more than "
                                  f"rnnkit reads from one file; {fix}")  # fmt: skip
            data += chunk
    return data


def load_json(path: Path, fix: str, cap: int | None = None) -> Any:
    """The JSON value in ``path`` (UTF-8, at most ``cap`` bytes, default `MAX_JSON_BYTES`).

    ``fix`` ends each message (what to give instead). The caller still checks the value's shape.

    Raises:
        RnnkitError: too big, not UTF-8, not JSON, or nested too deep for Python's parser.
    """
    data = read_capped(path, MAX_JSON_BYTES if cap is None else cap, fix)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError, integers too long
        problem = message_of(err)
    except RecursionError:
        problem = "its values nest too deep to read"
    raise RnnkitError(f"{path} is not valid JSON ({problem}); {fix}")
