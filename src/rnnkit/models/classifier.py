"""Many-to-one: a sequence in, one vector out (class logits, or values for regression).

Shape legend: T time steps, B batch, I input features, V vocabulary size, E embedding size,
H hidden size, D = 2H if bidirectional else H, C classes (or outputs). Time-major like the
layers; a padded batch comes with ``lengths`` (B,), never a ``PackedSequence``.

    ids (T, B) -> embedding (T, B, E) ┐
    features (T, B, I) ───────────────┴-> recurrent layer(s) (T, B, D) -> pooling (B, D)
        -> dropout -> linear (B, C) logits;  softmax -> probabilities

Pooling (``pooling``), always over each sequence's own valid steps ``t < lengths[b]``:

- ``"last"``: the top layer's final state, each direction's own (forward: the state after the
  last valid step; reverse: the state after reading back to step 0).
- ``"mean"``, ``"max"``: the mean or element-wise maximum of the outputs.
- ``"attention"``: additive attention (Bahdanau et al. 2015, as pooling in Yang et al. 2016):
  ``score_t = v . tanh(W o_t + b)``, ``alpha = softmax(score)`` over the valid steps (padding gets
  weight 0), pooled ``= sum_t alpha_t o_t``. `SequenceClassifier.predict` returns ``alpha``.

Padding never changes a prediction: the layers zero their outputs past each end and start the
reverse direction at each sequence's own end, and every pooling masks the padded steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit.dropout import Dropout
from rnnkit.errors import RnnkitError
from rnnkit.models.backbone import make_rnn

POOLINGS = ("last", "mean", "max", "attention")


def valid_mask(lengths: Tensor | None, steps: int, batch: int) -> Tensor:
    """(T, B) bool, True at the valid steps ``t < lengths[b]`` (all True without lengths)."""
    if lengths is None:
        return torch.ones(steps, batch, dtype=torch.bool)
    return torch.arange(steps, device=lengths.device).unsqueeze(1) < lengths.unsqueeze(0)


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over time of scores (T, B), with weight exactly 0 where ``mask`` is False."""
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=0).masked_fill(~mask, 0.0)


class AdditiveAttention(nn.Module):
    """Additive attention pooling: outputs (T, B, D), mask (T, B) -> pooled (B, D), alpha (T, B)."""

    def __init__(self, input_size: int, attention_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_size, attention_size)
        self.score = nn.Linear(attention_size, 1, bias=False)

    def forward(self, outputs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.score(torch.tanh(self.proj(outputs))).squeeze(-1)  # (T, B)
        alpha = masked_softmax(scores, mask)
        return (alpha.unsqueeze(-1) * outputs).sum(0), alpha


def pool(outputs: Tensor, final: Tensor, mask: Tensor, how: str) -> Tensor:
    """Pool outputs (T, B, D) of the valid steps ``mask`` (T, B) into (B, D) by "last" (which
    reads ``final``, the top layer's final states (dirs, B, H)), "mean" or "max"."""
    if how == "last":
        return torch.cat(list(final), dim=-1)  # (B, D): forward | reverse
    keep = mask.unsqueeze(-1)  # (T, B, 1)
    if how == "mean":
        return (outputs * keep).sum(0) / keep.sum(0).clamp(min=1)
    return outputs.masked_fill(~keep, float("-inf")).max(0).values


class SequenceClassifier(nn.Module):
    """Embedding or feature input -> (bidirectional, stacked) RNN/LSTM/GRU -> pooling -> classes.

    Args:
        cell: a name in `rnnkit.models.backbone.CELLS` ("rnn", "irnn", "lstm", "gru").
        input_size: V when ``embedding_size`` is set (inputs are token ids), else I.
        hidden_size: H per direction.
        num_classes: C, the head's outputs (classes, or regression targets).
        num_layers, dropout, impl: as `rnnkit.models.backbone.make_rnn`; ``dropout`` also
            applies to the embeddings and before the head (training only).
        embedding_size: E; if set, inputs are token ids.
        bidirectional: read the sequence both ways (D = 2H).
        pooling: one of `POOLINGS` (see the module docstring).
        attention_size: width of the attention's hidden layer.  [default: H]
        **options: passed to the recurrent layer (e.g. ``forget_bias=1.0``).

    ``forward(x, lengths) -> logits (B, C)``; ``predict(x, lengths) -> (probabilities (B, C),
    attention weights (T, B) or None)``.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_classes: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        impl: str = "auto",
        *,
        embedding_size: int | None = None,
        bidirectional: bool = False,
        pooling: str = "last",
        attention_size: int | None = None,
        **options,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise RnnkitError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        self.embedding = None
        if embedding_size is not None:
            self.embedding = nn.Embedding(input_size, embedding_size)
            input_size = embedding_size
        self.rnn = make_rnn(cell, input_size, hidden_size, num_layers, dropout, impl,
                            bidirectional=bidirectional, **options)  # fmt: skip
        self.directions = 2 if bidirectional else 1
        width = hidden_size * self.directions
        self.attention = None
        if pooling == "attention":
            self.attention = AdditiveAttention(width, attention_size or hidden_size)
        self.drop = Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    def encode(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x (T, B) ids or (T, B, I) features -> pooled (B, D), attention weights (T, B) or None."""
        if self.embedding is not None:
            if x.is_floating_point() or x.dim() != 2:
                raise RnnkitError(f"this model takes token ids (T, B) int64, got {x.dtype} "
                                  f"of shape {tuple(x.shape)}")  # fmt: skip
            x = self.drop(self.embedding(x))  # (T, B, E)
        outputs, state = self.rnn(x, lengths=lengths)  # (T, B, D)
        h_n = state[0] if isinstance(state, tuple) else state  # (L * dirs, B, H)
        mask = valid_mask(lengths, outputs.shape[0], outputs.shape[1]).to(outputs.device)
        if self.attention is not None:
            return self.attention(outputs, mask)
        return pool(outputs, h_n[-self.directions :], mask, self.pooling), None

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x (T, B) ids or (T, B, I) features, lengths (B,) or None -> logits (B, C)."""
        pooled, _ = self.encode(x, lengths)
        return self.head(self.drop(pooled))

    @torch.no_grad()
    def predict(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Class probabilities (B, C) and, with attention pooling, the weights (T, B) (each
        column sums to 1 over the valid steps), else None. Runs in eval mode."""
        was_training = self.training
        self.eval()
        pooled, alpha = self.encode(x, lengths)
        self.train(was_training)
        return torch.softmax(self.head(pooled), dim=-1), alpha


#: the many-to-one model of the memory lab: a `SequenceClassifier` reading the final state
ManyToOne = SequenceClassifier
