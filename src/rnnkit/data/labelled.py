"""Labelled texts for classification, read from one of three layouts:

- a CSV (``.csv``) or TSV (``.tsv``) file with a header, the text in column ``text_col`` and the
  label in ``label_col``;
- a folder of files with one example per line, the class in the file name: ``rt-polarity.pos``
  and ``rt-polarity.neg`` (files sharing a stem: the class is the suffix, as in the MR data set),
  or ``pos.txt`` and ``neg.txt`` (the class is the stem);
- a folder per class: ``DIR/CLASS/*.txt``, one example per file.

Every layout gives `LabelledTexts`, classes sorted by name. Empty lines of a one-per-line file
are skipped; an empty text anywhere else, a missing column, fewer than two classes or a class with
a single example is a `RnnkitError` naming the place.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rnnkit.data.bounded import list_names, message_of
from rnnkit.data.text import read_text
from rnnkit.errors import RnnkitError, shorten


@dataclass
class LabelledTexts:
    """texts[i] has class ``classes[labels[i]]``."""

    texts: list[str]
    labels: list[int]
    classes: list[str]

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, str]], source: str) -> LabelledTexts:
        """From (text, class name) pairs, checking that each class has two examples or more."""
        counts = Counter(label for _, label in pairs)
        if len(counts) < 2:
            raise RnnkitError(f"{source} has {len(counts)} class(es); a classifier needs two or "
                              "more")  # fmt: skip
        single = sorted(c for c, n in counts.items() if n < 2)
        if single:
            raise RnnkitError(
                f"{source}: class(es) {list_names(single, quote=True)} have a single "
                "example; give at least two per class (or drop the class)"
            )
        classes = sorted(counts)
        index = {c: i for i, c in enumerate(classes)}
        return cls([t for t, _ in pairs], [index[c] for _, c in pairs], classes)


def read_labelled(
    path: str | os.PathLike,
    text_col: str = "text",
    label_col: str = "label",
    encoding: str = "utf-8",
) -> LabelledTexts:
    """The labelled texts at ``path`` in one of the layouts of the module docstring."""
    path = Path(path)
    if not path.exists():
        raise RnnkitError(f"{path} does not exist; give a CSV/TSV file or a folder of texts")
    if path.is_dir():
        subdirs = sorted(p for p in path.iterdir() if p.is_dir())
        pairs = _folder_per_class(subdirs, encoding) if subdirs else _line_files(path, encoding)
    elif path.suffix.lower() in (".csv", ".tsv"):
        pairs = _table(path, text_col, label_col, encoding)
    else:
        raise RnnkitError(f"{path}: give a .csv or .tsv file, or a folder (one file per class, or "
                          "one folder per class)")  # fmt: skip
    return LabelledTexts.from_pairs(pairs, str(path))


def _table(path: Path, text_col: str, label_col: str, encoding: str) -> list[tuple[str, str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(read_text(path, encoding)), delimiter=delimiter)
    try:
        fieldnames = reader.fieldnames or []
    except csv.Error as err:
        raise RnnkitError(f"{path}: the header is not valid CSV/TSV ({message_of(err)})") from None
    missing = [c for c in (text_col, label_col) if c not in fieldnames]
    if missing:
        raise RnnkitError(
            f"{path} has no column(s) {', '.join(map(shorten, missing))}; its columns are "
            f"{list_names(fieldnames, quote=True)}: name them with --text-col and --label-col"
        )
    pairs = []
    try:
        for line, row in enumerate(reader, start=2):
            text, label = (row[text_col] or "").strip(), (row[label_col] or "").strip()
            if not text or not label:
                raise RnnkitError(f"{path}, line {line}: empty {'text' if not text else 'label'};"
                                  " fill it in or delete the row")  # fmt: skip
            pairs.append((text, label))
    except csv.Error as err:
        raise RnnkitError(f"{path}, line {reader.line_num}: not valid CSV/TSV "
                          f"({message_of(err)})") from None  # fmt: skip
    return pairs


def _line_files(folder: Path, encoding: str) -> list[tuple[str, str]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise RnnkitError(f"{folder} is an empty folder; give one file per class")
    stems = {p.stem for p in files}
    pairs = []
    for p in files:
        label = p.suffix.lstrip(".") if len(stems) == 1 else p.stem
        lines = read_text(p, encoding).splitlines()
        pairs += [(line.strip(), label) for line in lines if line.strip()]
    return pairs


def _folder_per_class(subdirs: list[Path], encoding: str) -> list[tuple[str, str]]:
    pairs = []
    for folder in subdirs:
        for p in sorted(folder.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                text = read_text(p, encoding).strip()
                if not text:
                    raise RnnkitError(f"{p} holds only white space; delete it or add the text")
                pairs.append((text, folder.name))
    return pairs
