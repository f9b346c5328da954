"""Parallel text: two files aligned by line (sentence i of one translates sentence i of the other).

Plain or gzip-compressed (``.gz``) UTF-8 files. Every line must hold a sentence: an empty line
breaks the alignment, and files of different line counts are not parallel; both are errors that
name the file and the line.
"""

from __future__ import annotations

import os

from rnnkit.data.text import read_text
from rnnkit.errors import RnnkitError


def read_lines(path: str | os.PathLike, encoding: str = "utf-8") -> list[str]:
    """The lines of a text file, without line breaks (a final line break adds no line). Only
    \\n (and \\r\\n) break lines: other Unicode separators inside a sentence stay in it."""
    lines = read_text(path, encoding).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_parallel(
    src: str | os.PathLike, tgt: str | os.PathLike, encoding: str = "utf-8"
) -> list[tuple[str, str]]:
    """The (source, target) sentence pairs of two line-aligned files.

    Raises:
        RnnkitError: a file is missing, empty or not text; the line counts differ; a line is
            empty (its 1-based number is named).
    """
    sources, targets = read_lines(src, encoding), read_lines(tgt, encoding)
    if len(sources) != len(targets):
        raise RnnkitError(
            f"the parallel files have different line counts: {src} has {len(sources)} lines, "
            f"{tgt} has {len(targets)}; line i of one must translate line i of the other"
        )
    for path, lines in ((src, sources), (tgt, targets)):
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                raise RnnkitError(
                    f"{path}: line {number} is empty; every line must hold a sentence (remove "
                    "the pair from both files)"
                )
    return [(s.strip(), t.strip()) for s, t in zip(sources, targets)]
