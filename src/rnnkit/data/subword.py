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

from rnnkit.data.tokens import BOS, EOS, PAD, UNK  # noqa: F401 (re-exported)
from rnnkit.errors import RnnkitError


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
        path = Path(path)
        if not path.is_file():
            raise RnnkitError(f"{path} is missing; the run is incomplete")
        try:
            return cls(path.read_bytes())
        except RuntimeError:
            raise RnnkitError(
                f"{path} is damaged (not a SentencePiece model); the run is incomplete"
            ) from None

    def __len__(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode([i for i in ids if i > EOS])

    def pieces(self, text: str) -> list[str]:
        """The subword pieces of ``text`` (for labelling an attention picture)."""
        return self.processor.encode(text, out_type=str)
