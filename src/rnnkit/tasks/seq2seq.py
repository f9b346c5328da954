"""What the encoder-decoder tasks share (translate, caption): the beam size a request asks
for and the `Translation` answer built from a beam's hypotheses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rnnkit.errors import RnnkitError
from rnnkit.models.seq2seq import Hypothesis
from rnnkit.predictor import Result


def check_beam(beam: Any, default: int) -> int:
    """The beam size to decode with: ``beam``, or the run's ``default`` for None."""
    beam = default if beam is None else beam
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise RnnkitError(f"beam must be a positive integer (1: greedy), got {beam!r}")
    return beam


@dataclass
class Translation(Result):
    """An encoder-decoder's answer: a translation, or an image's caption.

    text: the best hypothesis, detokenised (what `rnnkit translate` / `rnnkit caption` print).
    hypotheses: the beam's hypotheses, best first (one for greedy decoding, beam 1), each
        {"text": str, "score": float}; score is the length-normalised log-probability the beam
        ranks by (``log p / ((5 + n) / 6) ** length_penalty``, n tokens with the end token; see
        `rnnkit.models.seq2seq`). A hypothesis that never ended is cut at the length limit.
    source_tokens: the S source pieces the encoder read, its end token "</s>" last (a
        translation); None for a caption.
    target_tokens: the T pieces (translation) or words (caption) of ``text``, end token excluded.
    attention: T rows, one per target token, of S weights over the source positions (a
        caption's: over the h * w cells of the image's feature ``grid``, row by row); each row
        sums to 1.
    grid: a caption's feature grid [h, w] (S = h * w); None for a translation.
    """

    text: str
    hypotheses: list[dict[str, Any]]
    source_tokens: list[str] | None
    target_tokens: list[str]
    attention: list[list[float]]
    grid: list[int] | None = None

    def summary(self) -> str:
        return self.text


def translation_of(
    hypotheses: list[Hypothesis], detokenise: Callable[[list[int]], str],
    token_names: Callable[[list[int]], list[str]], source_tokens: list[str] | None = None,
    grid: list[int] | None = None,
) -> Translation:  # fmt: skip
    """The `Translation` of one input's beam (best first)."""
    best = hypotheses[0]
    ranked = [{"text": detokenise(h.tokens), "score": float(h.normalised)} for h in hypotheses]
    return Translation(text=ranked[0]["text"], hypotheses=ranked, source_tokens=source_tokens,
                       target_tokens=token_names(best.tokens),
                       attention=best.attention.float().tolist(), grid=grid)  # fmt: skip
