"""Many-to-one: a sequence in, one vector out (class logits, or values for regression)."""

from __future__ import annotations

from torch import Tensor, nn

from rnnkit.models.backbone import make_rnn


class ManyToOne(nn.Module):
    """A recurrent layer reads the sequence; a linear head reads the top layer's final state.

    Args:
        cell: a name in `rnnkit.models.backbone.CELLS` ("rnn", "irnn", "lstm", "gru").
        input_size: I, features per step.
        hidden_size: H.
        output_size: O, the head's outputs (classes, or regression targets).
        num_layers, dropout, impl, **options: as `rnnkit.models.backbone.make_rnn`.

    Shapes: x (T, B, I), lengths (B,) or None -> (B, O); the state read is each sequence's own
    last step.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        output_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        impl: str = "auto",
        **options,
    ) -> None:
        super().__init__()
        self.rnn = make_rnn(cell, input_size, hidden_size, num_layers, dropout, impl, **options)
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        _, state = self.rnn(x, lengths=lengths)
        h_n = state[0] if isinstance(state, tuple) else state  # (L, B, H); LSTM: (h, c)
        return self.head(h_n[-1])  # (B, O)
