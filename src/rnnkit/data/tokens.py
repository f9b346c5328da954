"""Token ids shared by every sequence-to-sequence vocabulary, and padding rows of them.

0 pad, 1 unknown, 2 begin of sentence, 3 end of sentence: the SentencePiece models of translation
(`rnnkit.data.subword`) and the caption words (`rnnkit.data.images`) both use these ids.
"""

from __future__ import annotations

import torch
from torch import Tensor

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def pad_ids(rows: list[list[int]]) -> Tensor:
    """(B, longest row) int64, each row padded with PAD."""
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
