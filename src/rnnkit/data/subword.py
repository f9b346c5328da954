"""Subword vocabularies learned with SentencePiece (Kudo & Richardson 2018).

A model is learned from the training sentences of one language and stored in a run as the
SentencePiece model file (a protocol buffer, not pickle). Its ids are fixed: 0 pad, 1 unknown,
2 begin of sentence, 3 end of sentence. Unknown characters never fail: SentencePiece's byte
fallback spells a character the training text never showed as its UTF-8 bytes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import sentencepiece as spm

from rnnkit.data.bounded import read_capped
from rnnkit.data.tokens import BOS, EOS, PAD, UNK  # noqa: F401 (re-exported)
from rnnkit.errors import RnnkitError

MAX_SUBWORD_BYTES = 64 << 20
"""Bytes of one SentencePiece model file (64 MiB): rnnkit's models of 8,000 to 32,000 pieces are
0.2 to 1 MB, the largest published ones (250,000 pieces) about 5 MB."""


class Subword:
    """A SentencePiece model: ``encode(text) -> ids``, ``decode(ids) -> text``."""

    def __init__(self, model: bytes) -> None:
        self.model = model
        self.processor = spm.SentencePieceProcessor(model_proto=model)

    @classmethod
    def learn(cls, sentences: list[str], vocab_size: int, kind: str = "unigram") -> Subword:
        """Learn a vocabulary of at most ``vocab_size`` pieces from ``sentences``."""
        if kind not in ("unigram", "bpe"):
            raise RnnkitError(f"subword kind must be 'unigram' or 'bpe', got {kind!r}")
        if vocab_size < 16:
            raise RnnkitError(f"the subword vocabulary needs >= 16 pieces, got {vocab_size}")
        out = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences), model_writer=out, vocab_size=vocab_size,
                model_type=kind, character_coverage=1.0, byte_fallback=True,
                pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, hard_vocab_limit=False,
                num_threads=1, minloglevel=2,
            )  # fmt: skip
        except RuntimeError as err:
            raise RnnkitError(
                f"could not learn a subword vocabulary of {vocab_size} pieces ({err}); byte "
                "fallback alone takes 256 pieces plus one per character: raise the vocabulary "
                "size (--src-vocab / --tgt-vocab)"
            ) from None
        return cls(out.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Subword:
        """The model stored at ``path`` by a training run.

        Raises:
            RnnkitError: missing, larger than `MAX_SUBWORD_BYTES`, not a SentencePiece model,
                or one without rnnkit's fixed ids (0 pad, 1 unknown, 2 begin, 3 end).
        """
        path = Path(path)
        if not path.is_file():
            raise RnnkitError(f"{path} is missing; the run is incomplete")
        fix = "the run is damaged; train again"
        model = read_capped(path, MAX_SUBWORD_BYTES, fix, compression="plain")
        try:
            subword = cls(bytes(model)) if model else None
        except (RuntimeError, ValueError):  # ValueError: a piece that is not UTF-8
            subword = None
        if subword is None:
            raise RnnkitError(f"{path} is not a SentencePiece model; {fix}")
        ids = [subword.processor.pad_id(), subword.processor.unk_id(),
               subword.processor.bos_id(), subword.processor.eos_id()]  # fmt: skip
        if ids != [PAD, UNK, BOS, EOS] or len(subword) <= EOS:
            raise RnnkitError(f"{path} is a SentencePiece model without rnnkit's ids (pad, "
                              f"unknown, begin, end = 0, 1, 2, 3); {fix}")  # fmt: skip
        return subword

    def __len__(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode([i for i in ids if i > EOS])

    def pieces(self, text: str) -> list[str]:
        """The subword pieces of ``text`` (for labelling an attention picture)."""
        return self.processor.encode(text, out_type=str)
