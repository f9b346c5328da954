"""Many-to-many aligned sequence model, and one-to-many generation from it.

Shape legend: T time steps, B batch, I input features, E embedding size, H hidden size,
O outputs per step (V, the vocabulary size, for a language model), L layers. Time-major like
the layers: inputs (T, B) token ids (with an embedding) or (T, B, I) features; the recurrent
state (L, B, H), an LSTM's a tuple (h, c).

    ids (T, B) -> embedding (T, B, E) -> recurrent layer (T, B, H) -> dropout -> linear (T, B, O)

`SequenceModel.generate` feeds one token at a time and carries the recurrent state: the prompt
is read once, and every new token costs one step (no recomputation of the prefix).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.dropout import Dropout, locked_dropout
from rnnkit.errors import RnnkitError
from rnnkit.models.backbone import make_rnn
from rnnkit.models.heads import Sampling, check_sampling, draw_rows


class SequenceModel(nn.Module):
    """One output per input step: a recurrent layer and a linear head on every step.

    Args:
        cell: a name in `rnnkit.models.backbone.CELLS` ("rnn", "irnn", "lstm", "gru").
        input_size: the vocabulary size when ``embedding_size`` is set (inputs are token ids),
            else I, features per step.
        hidden_size: H.
        output_size: O (the vocabulary size for next-token prediction).
        num_layers: L.
        dropout: between recurrent layers and before the head (training only).
        locked_dropout: that dropout with one mask per sequence, the same at every step
            (`rnnkit.dropout.locked_dropout`), instead of one per element.
        impl: the recurrent layer's implementation ("auto": see `rnnkit.layers`).
        embedding_size: E; if set, inputs are token ids looked up in an embedding.
        **options: passed to the recurrent layer (e.g. ``forget_bias=1.0``, or
            ``bidirectional=True``: the head then reads both directions, 2H features).
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
        embedding_size: int | None = None,
        locked_dropout: bool = False,
        **options,
    ) -> None:
        super().__init__()
        self.embedding = (
            None if embedding_size is None else nn.Embedding(input_size, embedding_size)
        )
        features = input_size if embedding_size is None else embedding_size
        if locked_dropout:
            options["locked_dropout"] = True
        self.rnn = make_rnn(cell, features, hidden_size, num_layers, dropout, impl, **options)
        self.drop = Dropout(dropout)
        self.locked_dropout = locked_dropout
        directions = 2 if options.get("bidirectional") else 1  # outputs (T, B, directions * H)
        self.head = nn.Linear(directions * hidden_size, output_size)

    def forward(
        self, x: Tensor, state: Any = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, Any]:
        """x (T, B) ids or (T, B, I) features, state or None -> (T, B, O), final state."""
        if self.embedding is not None:
            if x.is_floating_point() or x.dim() != 2:
                raise RnnkitError(
                    f"this model takes token ids (T, B) int64, got {x.dtype} of shape "
                    f"{tuple(x.shape)}"
                )
            x = self.embedding(x)  # (T, B, E)
        h, state = self.rnn(x, state, lengths=lengths)  # (T, B, H)
        if self.locked_dropout:  # an unbatched (T, H) output is one sequence
            rows = h if h.dim() == 3 else h.unsqueeze(1)
            h = locked_dropout(rows, self.drop.p, self.training).view_as(h)
        else:
            h = self.drop(h)
        return self.head(h), state

    @torch.no_grad()
    def stream(
        self,
        prompt_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        lengths: Tensor | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(token (B,), logits (B, O))`` for each new token, one step at a time.

        ``logits`` are the raw scores the token was drawn from (before temperature).
        prompt_ids: (T0,) or (T0, B) token ids, T0 >= 1; with ``lengths`` (B,) in [1, T0],
        column b's prompt is its first ``lengths[b]`` ids (the rest is padding) and its first
        token follows that prompt. ``generator``: one for the whole batch, or one per column
        (B of them), each drawing its column's tokens alone, so that a column draws the same
        tokens in any batch. Runs in eval mode (restored after).
        """
        check_sampling(temperature, top_k, top_p)
        ids = prompt_ids.unsqueeze(1) if prompt_ids.dim() == 1 else prompt_ids  # (T0, B)
        if ids.shape[0] == 0:
            raise RnnkitError("the prompt is empty; give at least one token")
        was_training = self.training
        self.eval()
        try:
            logits, state = self(ids, lengths=lengths)  # the whole prompt in one pass
            if lengths is None:
                last = logits[-1]  # (B, O)
            else:  # each column's logits after its own last prompt token
                last = logits[lengths.to(logits.device) - 1, torch.arange(ids.shape[1])]
            settings = Sampling.of([(temperature, top_k, top_p)] * ids.shape[1], last.shape[-1])
            for _ in range(max_new_tokens):
                token = draw_rows(last, settings, generator)  # (B,)
                yield token, last
                logits, state = self(token.unsqueeze(0), state)  # one step: (1, B, O)
                last = logits[-1]
        finally:
            self.train(was_training)

    def generate(
        self,
        prompt_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The prompt followed by ``max_new_tokens`` sampled tokens: (T0 + n, B), or (T0 + n,)
        for a 1-D prompt. ``temperature`` 0 picks the likeliest token; ``top_k`` / ``top_p``
        restrict sampling to the k likeliest tokens / the nucleus of mass p; ``generator``
        makes sampling reproducible. See `stream` for token-by-token output."""
        steps = self.stream(prompt_ids, max_new_tokens, temperature, top_k, top_p, generator)
        new = [token for token, _ in steps]
        ids = prompt_ids.unsqueeze(1) if prompt_ids.dim() == 1 else prompt_ids
        out = torch.cat([ids, torch.stack(new)]) if new else ids
        return out.squeeze(1) if prompt_ids.dim() == 1 else out
