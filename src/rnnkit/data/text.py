"""Text: reading a file safely, character and word vocabularies, the train/validation split.

A vocabulary turns text into a 1-D tensor of token ids and back. It is stored in a run as
``vocab.json``: ``{"unit": "char" | "word", "tokens": [...], "unk": null | "<unk>"}``.

- ``char``: every character of the training text is a token; a character outside the vocabulary
  is an error (it names the character and where it is).
- ``word``: words, punctuation marks and line breaks are tokens; the ``max_size`` most frequent
  tokens seen at least ``min_count`` times are kept (and the line break, always), every other
  token maps to ``<unk>`` (the unknown-token policy).
"""

from __future__ import annotations

import codecs
import functools
import os
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rnnkit.data.bounded import load_json, read_capped
from rnnkit.errors import RnnkitError, shorten

MAX_TEXT_BYTES = 1 << 30
"""Bytes of one text file after decompression (1 GiB): enwik9 (10^9 bytes) fits, tiny-shakespeare
is 1 MB, Multi30k 4 MB. Decoded, the text takes 1 to 4 times as much memory."""
UNK = "<unk>"
_WORD = re.compile(r"\w+|[^\w\s]|\n")


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The whole text of ``path`` (decompressed first if the name ends in .gz, .bz2 or .xz).

    Raises:
        RnnkitError: the file is missing, a directory, empty, larger than `MAX_TEXT_BYTES`
            (after decompression), binary (a NUL byte; a compressed file is refused at its first
            binary chunk, before the rest is inflated), or not valid in ``encoding`` (the message
            names the byte offset and suggests ``--encoding``).
    """
    path = Path(path)
    if not path.exists():
        raise RnnkitError(f"text file {path} does not exist; check the path")
    if path.is_dir():
        raise RnnkitError(f"{path} is a directory; give a text file")
    try:
        codecs.lookup(encoding)
    except (LookupError, ValueError):
        raise RnnkitError(_unknown_encoding(encoding)) from None
    plain = encoding.lower().replace("-", "").replace("_", "") in ("utf8", "ascii")
    check = functools.partial(_refuse_nul, path) if plain else None
    data = read_capped(path, MAX_TEXT_BYTES, "split it into smaller files", check)
    if not data:
        raise RnnkitError(f"text file {path} is empty; give a file with some text in it")
    try:
        return data.decode(encoding)
    except LookupError:  # a codec that is not a text encoding, such as rot13
        raise RnnkitError(_unknown_encoding(encoding)) from None
    except UnicodeDecodeError as err:
        raise RnnkitError(
            f"{path} is not valid {encoding}: byte 0x{data[err.start]:02x} at byte offset "
            f"{err.start} ({err.reason}); convert the file to UTF-8 or pass --encoding "
            "(e.g. --encoding latin-1)"
        ) from None


def _unknown_encoding(encoding: str) -> str:
    return f"unknown encoding {shorten(encoding)}; try utf-8 or latin-1"


def _refuse_nul(path: Path, chunk: bytes, offset: int) -> None:
    """RnnkitError if ``chunk`` (at byte ``offset`` of the file's text) holds a NUL byte."""
    nul = chunk.find(b"\x00")
    if nul >= 0:
        raise RnnkitError(
            f"{path} looks binary (a NUL byte at byte offset {offset + nul}); give a plain-text "
            "file"
        )


def tokenize_words(text: str) -> list[str]:
    """Words, single punctuation marks and line breaks, in order."""
    return _WORD.findall(text)


class Vocab:
    """Tokens <-> ids for one unit ("char" or "word"); see the module docstring."""

    def __init__(self, unit: str, tokens: list[str], unk: str | None = None) -> None:
        if unit not in ("char", "word"):
            raise RnnkitError(f"unit must be 'char' or 'word', got {shorten(unit)}")
        self.unit, self.tokens, self.unk = unit, list(tokens), unk
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, text: str, unit: str = "char", min_count: int = 1, max_size: int | None = None):
        """The vocabulary of ``text`` (chars sorted; words by frequency, then ``<unk>``)."""
        if unit == "char":
            return cls("char", sorted(set(text)))
        return cls.from_counts(Counter(tokenize_words(text)), min_count, max_size)

    @classmethod
    def from_counts(cls, counts: Counter, min_count: int = 1, max_size: int | None = None):
        """A word vocabulary: ``<unk>``, then the tokens counted at least ``min_count`` times
        (and the line break, always), most frequent first, ``max_size`` in all."""
        order = sorted(counts.items(), key=lambda kv: (kv[0] != "\n", -kv[1], kv[0]))
        kept = [t for t, n in order if n >= min_count or t == "\n"]  # line breaks always kept
        return cls("word", [UNK, *kept[: None if max_size is None else max_size - 1]], unk=UNK)

    def split(self, text: str) -> list[str]:
        """``text`` as a list of tokens of this unit."""
        return list(text) if self.unit == "char" else tokenize_words(text)

    def encode(self, text: str, what: str = "the text") -> Tensor:
        """(N,) int64 token ids of ``text``.

        Raises:
            RnnkitError: a character outside a char vocabulary (names it and its line:column).
        """
        tokens = self.split(text)
        if self.unk is not None:
            unk = self.index[self.unk]
            return torch.tensor([self.index.get(t, unk) for t in tokens], dtype=torch.long)
        try:
            return torch.tensor([self.index[t] for t in tokens], dtype=torch.long)
        except KeyError as err:
            raise RnnkitError(self._unknown_message(text, err.args[0], what)) from None

    def _unknown_message(self, text: str, char: str, what: str) -> str:
        pos = text.index(char)
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        name = unicodedata.name(char, f"U+{ord(char):04X}")
        return (
            f"{what} has the character {char!r} ({name}) at line {line}, column {col}, which the "
            f"model never saw in training; its vocabulary has {len(self)} characters: remove or "
            "replace it"
        )

    def decode(self, ids: Tensor | list[int]) -> str:
        """The text of token ids (words joined with spaces, none before punctuation)."""
        tokens = [self.tokens[int(i)] for i in ids]
        if self.unit == "char":
            return "".join(tokens)
        out: list[str] = []
        for tok in tokens:
            glue = not out or out[-1] == "\n" or tok == "\n" or not (tok[0].isalnum() or tok == UNK)
            out.append(tok if glue else " " + tok)
        return "".join(out)

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "tokens": self.tokens, "unk": self.unk}

    @classmethod
    def from_json(cls, data: Any) -> Vocab:
        """The vocabulary stored as ``data`` (see the module docstring).

        Raises:
            RnnkitError: ``data`` is not of that shape (the message says what is wrong).
        """
        if not isinstance(data, dict) or data.get("unit") not in ("char", "word"):
            raise RnnkitError("a vocabulary must be an object with 'unit' 'char' or 'word'")
        tokens, unk = data.get("tokens"), data.get("unk")
        if not isinstance(tokens, list) or not tokens:
            raise RnnkitError("'tokens' must be a non-empty list")
        for i, token in enumerate(tokens):
            if not isinstance(token, str) or (data["unit"] == "char" and len(token) != 1):
                kind = "a single character" if data["unit"] == "char" else "a string"
                raise RnnkitError(f"token {i} is {shorten(token)}, not {kind}")
        if len(set(tokens)) < len(tokens):
            raise RnnkitError("a token appears twice in 'tokens'")
        if unk is not None and unk not in tokens:
            raise RnnkitError(f"'unk' {shorten(unk)} is not one of the tokens")
        return cls(data["unit"], tokens, unk)

    @classmethod
    def load(cls, path: Path) -> Vocab:
        """Read ``vocab.json``; a missing or damaged file is a user error (one line)."""
        if not path.is_file():
            raise RnnkitError(f"{path} is missing; the run is incomplete")
        fix = "the run is damaged; train again"
        data = load_json(path, fix)
        try:
            return cls.from_json(data)
        except RnnkitError as err:
            raise RnnkitError(f"{path}: {err}; {fix}") from None


def split_train_valid(text: str, valid_fraction: float) -> tuple[str, str]:
    """The first ``1 - valid_fraction`` of ``text`` and the rest (by characters)."""
    if not 0.0 < valid_fraction < 1.0:
        raise RnnkitError(f"the validation fraction must be in (0, 1), got {valid_fraction}")
    cut = int(round(len(text) * (1.0 - valid_fraction)))
    return text[:cut], text[cut:]
