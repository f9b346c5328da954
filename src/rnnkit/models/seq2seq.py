"""Encoder-decoder with attention: machine translation, image captioning (many-to-many, unaligned).

Shape legend: B batch, S source positions (tokens, or cells of a flattened feature map),
M memory features, T target steps, V target vocabulary size, E embedding size, H decoder
hidden size, L decoder layers, K beam size. The encoder and the decoder are batch-first at their
interface (``src`` (B, S), memory (B, S, M), ``tgt_in`` (B, T)); inside, the recurrent layers run
time-major as everywhere in rnnkit.

    src (B, S) ─► encoder ─► Encoded(memory (B, S, M), mask (B, S), state: tuple of (L, B, H))
    per target step t (Luong et al. 2015, "global attention" with input feeding):
        x_t   = [embed(y_{t-1}); h~_{t-1}]               (input feeding: the previous h~)
        h_t   = stacked recurrent cell (x_t, state)       top layer's output, (B, H)
        c_t, a_t = attention(query h_t, memory, mask)     context (B, M), weights (B, S)
        h~_t  = tanh(W_c [h_t; c_t])                      the attentional vector, (B, H)
        logits_t = W_o dropout(h~_t)                      (B, V)

Any module that maps ``(src, lengths)`` to an `Encoded` can be the encoder: `TextEncoder` reads
token ids; a captioning encoder returns a flattened CNN feature map with an all-True mask and an
initial state from a `Bridge` of the mean feature. `Seq2Seq`'s decoding (`forward` with teacher
forcing, `Seq2Seq.greedy`, `Seq2Seq.beam_search`) only ever sees the `Encoded`.

Attention (`Attention`): the score of memory position s for the query q is

    "additive" (Bahdanau et al. 2015)  v . tanh(W q + U m_s)
    "dot"      (Luong et al. 2015)     q . m_s                  (needs H == M)
    "general"  (Luong et al. 2015)     q . (W m_s)

and the weights are the softmax of the scores over the valid positions: padded positions get
weight exactly 0. The memory half (U m, W m) is computed once per sequence by
`Attention.prepare`, not once per decoding step or per beam.

Beam search ranks its finished hypotheses by the GNMT length normalisation (Wu et al. 2016):
``score / ((5 + n) / 6) ** alpha``, where ``score`` is the sum of the log-probabilities of the
tokens (the end token included) and ``n`` the number of tokens (end token included). Its
``max_len`` may differ per input, so that a batch decodes each input as it would alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rnnkit.dropout import Dropout
from rnnkit.errors import RnnkitError
from rnnkit.kernels import loops
from rnnkit.models.backbone import make_rnn

CELLS = ("gru", "lstm")
ATTENTIONS = ("additive", "dot", "general")


def _check_cell(cell: str, who: str) -> int:
    """The number of state tensors of ``cell`` (GRU 1, LSTM 2), or an error naming the choices."""
    if cell not in CELLS:
        raise RnnkitError(f"{who}: unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
    return 2 if cell == "lstm" else 1


def _check_positive(**values: int) -> None:
    for label, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RnnkitError(f"{label} must be a positive integer, got {value!r}")


class Encoded(NamedTuple):
    """What an encoder hands the decoder.

    memory: (B, S, M) one vector per source position.
    mask: (B, S) bool, True at the valid positions (at least one per row).
    state: the decoder's initial recurrent state, a tuple of (L, B, H) tensors: ``(h,)`` for a
        GRU decoder, ``(h, c)`` for an LSTM decoder.
    """

    memory: Tensor
    mask: Tensor
    state: tuple[Tensor, ...]

    def select(self, index: Tensor) -> Encoded:
        """The rows ``index`` (N,) of the batch (repeat them to expand for a beam)."""
        return Encoded(
            self.memory.index_select(0, index),
            self.mask.index_select(0, index),
            tuple(s.index_select(1, index) for s in self.state),
        )


class DecoderState(NamedTuple):
    """The decoder's state between steps: ``rnn`` the recurrent state, a tuple of (L, B, H);
    ``feed`` the previous attentional vector h~ (B, H) with input feeding, else None."""

    rnn: tuple[Tensor, ...]
    feed: Tensor | None

    def select(self, index: Tensor) -> DecoderState:
        """The rows ``index`` (N,) of the batch (beam search reorders its beams with it)."""
        rnn = tuple(s.index_select(1, index) for s in self.rnn)
        return DecoderState(rnn, None if self.feed is None else self.feed.index_select(0, index))


class Bridge(nn.Module):
    """A summary of the source (B, F) -> the decoder's initial state: tanh(Linear(summary)).

    Returns a tuple of ``num_states`` tensors (L, B, H) (1 for a GRU decoder, 2 for an LSTM's
    (h, c)), as `Encoded.state` wants it. Shared by every encoder (text: the final states of
    both directions; images: the mean feature).
    """

    def __init__(self, in_features: int, hidden: int, layers: int = 1, cell: str = "gru") -> None:
        super().__init__()
        _check_positive(in_features=in_features, hidden=hidden, layers=layers)
        self.num_states = _check_cell(cell, "Bridge")
        self.hidden, self.layers = hidden, layers
        self.proj = nn.Linear(in_features, self.num_states * layers * hidden)

    def forward(self, summary: Tensor) -> tuple[Tensor, ...]:
        out = torch.tanh(self.proj(summary))  # (B, states * L * H)
        out = out.view(-1, self.num_states, self.layers, self.hidden).permute(1, 2, 0, 3)
        return tuple(s.contiguous() for s in out)  # each (L, B, H)


def source_mask(
    lengths: Tensor | None, batch: int, steps: int, device: torch.device | str | None = None
) -> Tensor:
    """(B, S) bool, True at ``s < lengths[b]`` (all True without lengths)."""
    if lengths is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class TextEncoder(nn.Module):
    """Token ids -> embedding -> bidirectional GRU/LSTM -> `Encoded`.

    memory (B, S, 2 * hidden) is the output of the top layer (zero past each end), the mask
    marks ``s < lengths[b]``, and the decoder's initial state is a `Bridge` of the top layer's
    final forward and backward hidden states (each its own sequence's, thanks to ``lengths``).

    Args:
        vocab_size: the source vocabulary size.
        embed: E, the embedding size.
        hidden: hidden size per direction.
        layers: stacked bidirectional layers.
        cell: "gru" or "lstm".
        dropout: on the embeddings and between layers (training only).
        decoder_hidden: H of the decoder this encoder feeds.  [default: ``hidden``]
        decoder_layers: L of that decoder.
        decoder_cell: its cell ("gru" or "lstm"), which sets the state's tensors.
            [default: ``cell``]
        padding_idx: the pad token id (its embedding stays zero).
        impl: the recurrent layer's implementation ("auto": see `rnnkit.layers`).
    """

    def __init__(
        self,
        vocab_size: int,
        embed: int,
        hidden: int,
        layers: int = 1,
        cell: str = "gru",
        dropout: float = 0.0,
        decoder_hidden: int | None = None,
        decoder_layers: int = 1,
        *,
        decoder_cell: str | None = None,
        padding_idx: int | None = 0,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        _check_cell(cell, "TextEncoder")
        _check_positive(vocab_size=vocab_size, embed=embed, hidden=hidden, layers=layers)
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=padding_idx)
        self.drop = Dropout(dropout)
        self.rnn = make_rnn(cell, embed, hidden, layers, dropout, impl, bidirectional=True)
        self.memory_size = 2 * hidden
        self.bridge = Bridge(
            2 * hidden, decoder_hidden or hidden, decoder_layers, decoder_cell or cell
        )

    def forward(self, src: Tensor, lengths: Tensor | None = None) -> Encoded:
        """src (B, S) int64 ids, lengths (B,) or None (all full) -> `Encoded`."""
        if src.dim() != 2 or src.is_floating_point():
            raise RnnkitError(
                f"TextEncoder takes token ids (B, S) int64, got {src.dtype} of shape "
                f"{tuple(src.shape)}"
            )
        lengths = None if lengths is None else torch.as_tensor(lengths, device=src.device)
        x = self.drop(self.embedding(src.t()))  # (S, B, E)
        outputs, final = self.rnn(x, lengths=lengths)  # (S, B, 2 * hidden)
        h_n = final[0] if isinstance(final, tuple) else final  # (layers * 2, B, hidden)
        summary = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # top layer: forward | backward
        mask = source_mask(lengths, src.shape[0], src.shape[1], src.device)
        return Encoded(outputs.transpose(0, 1), mask.to(src.device), self.bridge(summary))


class Attention(nn.Module):
    """Attention of a query over a memory: additive, dot or general (see the module docstring).

    Args:
        query_size: Q, the query's features (the decoder's hidden size).
        memory_size: M, the memory's features.
        kind: one of `ATTENTIONS`.
        attn_size: A, the hidden width of additive attention.  [default: Q]

    ``prepare(memory (B, S, M)) -> keys`` once per sequence; ``forward(query (B, Q), memory,
    mask (B, S), keys=None) -> (context (B, M), weights (B, S))``, the weights summing to 1 over
    the valid positions and exactly 0 at the others.
    """

    def __init__(
        self,
        query_size: int,
        memory_size: int,
        kind: str = "additive",
        attn_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_positive(query_size=query_size, memory_size=memory_size)
        if kind not in ATTENTIONS:
            raise RnnkitError(f"unknown attention {kind!r}; choose one of {', '.join(ATTENTIONS)}")
        if kind == "dot" and query_size != memory_size:
            raise RnnkitError(
                f"dot attention needs query_size == memory_size, got {query_size} and "
                f"{memory_size}; use kind='general' or 'additive' for different sizes"
            )
        self.kind, self.query_size, self.memory_size = kind, query_size, memory_size
        if kind == "additive":
            attn_size = attn_size or query_size
            _check_positive(attn_size=attn_size)
            self.query_proj = nn.Linear(query_size, attn_size)  # W (with the one bias)
            self.memory_proj = nn.Linear(memory_size, attn_size, bias=False)  # U
            self.v = nn.Linear(attn_size, 1, bias=False)
        elif kind == "general":
            self.memory_proj = nn.Linear(memory_size, query_size, bias=False)  # W m

    def prepare(self, memory: Tensor) -> Tensor:
        """The memory's half of the scores, once per sequence: (B, S, A), (B, S, Q) or memory."""
        return memory if self.kind == "dot" else self.memory_proj(memory)

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """Unnormalised scores (B, S) of query (B, Q) against prepared keys."""
        if self.kind == "additive":
            return self.v(torch.tanh(keys + self.query_proj(query).unsqueeze(1))).squeeze(-1)
        return torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)

    def forward(
        self, query: Tensor, memory: Tensor, mask: Tensor, keys: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """query (B, Q), memory (B, S, M), mask (B, S) -> context (B, M), weights (B, S)."""
        if keys is None:
            keys = self.prepare(memory)
        scores = self.scores(query, keys).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # exp(-inf) = 0: padding weighs exactly 0
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights


class AttentionDecoder(nn.Module):
    """One target token per `step`: embedding -> stacked GRU/LSTM -> attention -> logits.

    The recurrence is an rnnkit layer (`rnnkit.layers.GRU` / `LSTM`, unidirectional, stacked)
    driven one step at a time through its ``step`` method (dropout between layers in training).

    Args:
        vocab_size: V, the target vocabulary.
        embed: E.
        hidden: H, the recurrent size and the attentional vector's size.
        memory_size: M, the encoder's memory features.
        layers: L.
        cell: "gru" or "lstm".
        attention: one of `ATTENTIONS`.
        dropout: on the embeddings, between layers and before the output layer (training).
        input_feeding: feed the previous attentional vector h~ with the embedding (Luong).
        attn_size: additive attention's width.  [default: H]
        padding_idx: the pad token id (its embedding stays zero), or None.
    """

    def __init__(
        self,
        vocab_size: int,
        embed: int,
        hidden: int,
        memory_size: int,
        layers: int = 1,
        cell: str = "gru",
        attention: str = "additive",
        dropout: float = 0.0,
        input_feeding: bool = True,
        *,
        attn_size: int | None = None,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__()
        self.num_states = _check_cell(cell, "AttentionDecoder")
        _check_positive(vocab_size=vocab_size, embed=embed, hidden=hidden, layers=layers)
        self.vocab_size, self.hidden, self.layers = vocab_size, hidden, layers
        self.memory_size, self.input_feeding = memory_size, input_feeding
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=padding_idx)
        self.drop = Dropout(dropout)
        rnn_input = embed + (hidden if input_feeding else 0)
        self.rnn = make_rnn(cell, rnn_input, hidden, layers, dropout)
        self.attention = Attention(hidden, memory_size, attention, attn_size)
        self.combine = nn.Linear(hidden + memory_size, hidden, bias=False)  # W_c
        self.out = nn.Linear(hidden, vocab_size)

    def prepare(self, encoded: Encoded) -> Tensor:
        """The attention's precomputed memory projection, once per source batch."""
        if encoded.memory.dim() != 3 or encoded.memory.shape[-1] != self.memory_size:
            raise RnnkitError(
                f"the decoder expects memory (B, S, {self.memory_size}), got "
                f"{tuple(encoded.memory.shape)}; set its memory_size to the encoder's output size"
            )
        return self.attention.prepare(encoded.memory)

    def init_state(self, encoded: Encoded) -> DecoderState:
        """The state before the first step: the encoder's state and a zero attentional vector."""
        expected = (self.layers, encoded.memory.shape[0], self.hidden)
        shapes = [tuple(s.shape) for s in encoded.state]
        if len(shapes) != self.num_states or any(s != expected for s in shapes):
            raise RnnkitError(
                f"the encoder's state must be {self.num_states} tensor(s) of shape {expected} "
                f"(decoder layers, batch, decoder hidden), got {shapes}; build the encoder's "
                "bridge with the decoder's hidden size, layers and cell"
            )
        feed = None
        if self.input_feeding:
            feed = encoded.memory.new_zeros(encoded.memory.shape[0], self.hidden)
        return DecoderState(tuple(encoded.state), feed)

    def step(
        self, prev_tokens: Tensor, state: DecoderState, encoded: Encoded, prepared: Tensor
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """prev_tokens (B,) -> logits (B, V), the new state, attention weights (B, S)."""
        attentional, state, weights = self.attend(prev_tokens, state, encoded, prepared)
        return self.logits(attentional), state, weights

    def logits(self, attentional: Tensor) -> Tensor:
        """(..., H) attentional vectors -> (..., V) logits."""
        return self.out(self.drop(attentional))

    def attend(
        self, prev: Tensor, state: DecoderState, encoded: Encoded, prepared: Tensor
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """A step without the output layer: previous tokens (B,) (or their embeddings (B, E))
        -> the attentional vector h~ (B, H), the new state, attention weights (B, S)."""
        x = self.drop(prev if prev.is_floating_point() else self.embedding(prev))  # (B, E)
        if self.input_feeding:
            x = torch.cat([x, state.feed], dim=-1)
        hx = state.rnn if self.num_states == 2 else state.rnn[0]
        if loops.exporting(x):  # a one-step forward: the layer knows how each exporter records it
            output, new = self.rnn(x.unsqueeze(0), hx)
            top = output[0]
        else:
            top, new = self.rnn.step(x, hx)  # (B, H), (L, B, H) or a tuple of them
        context, weights = self.attention(top, encoded.memory, encoded.mask, prepared)
        attentional = torch.tanh(self.combine(torch.cat([top, context], dim=-1)))  # h~ (B, H)
        new = new if isinstance(new, tuple) else (new,)
        return attentional, DecoderState(new, attentional if self.input_feeding else None), weights


@dataclass
class Hypothesis:
    """One beam-search output.

    tokens: the generated ids, without the start and end tokens.
    score: the sum of the log-probabilities of the tokens (the end token included).
    normalised: ``score / ((5 + n) / 6) ** alpha``, n = len(tokens) + 1 if finished.
    attention: (len(tokens), S_b) the weights of each output token over the source positions up
        to the last valid one.
    finished: True if it ended with the end token (False: cut at ``max_len``).
    """

    tokens: list[int]
    score: float
    normalised: float
    attention: Tensor
    finished: bool


def target_loss(
    logits: Tensor, targets: Tensor, pad_id: int, label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:  # fmt: skip
    """Cross-entropy of logits (B, T, V) against target ids (B, T), padding ignored."""
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id,
                                       label_smoothing=label_smoothing,
                                       reduction=reduction)  # fmt: skip


@torch.no_grad()
def teacher_forced_loss(
    model: Seq2Seq, batches: Iterable[tuple[Tensor, Tensor | None, Tensor, Tensor]]
) -> float:
    """Cross-entropy per target token (nats) of ``model`` over ``batches`` of (src,
    src_lengths, tgt_in, tgt_out), with teacher forcing and no label smoothing."""
    total, count = 0.0, 0
    for src, lengths, tgt_in, tgt_out in batches:
        logits, _ = model(src, lengths, tgt_in)
        total += float(target_loss(logits, tgt_out, model.pad_id, reduction="sum"))
        count += int((tgt_out != model.pad_id).sum())
    return total / max(1, count)


def gnmt_penalty(length: int, alpha: float) -> float:
    """GNMT's length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016)."""
    return ((5.0 + length) / 6.0) ** alpha


class Seq2Seq(nn.Module):
    """An encoder, an `AttentionDecoder`, and the ways to decode with them.

    Args:
        encoder: any module ``(src, lengths) -> Encoded`` (lengths may be None).
        decoder: an `AttentionDecoder` whose memory_size is the encoder's memory features.
        bos_id, eos_id, pad_id: the target's start, end and pad token ids.

    Training: ``forward(src, src_lengths, tgt_in)`` with ``tgt_in = [bos, y_1, ..., y_{n-1}]``
    gives logits predicting ``[y_1, ..., y_n, eos]`` (mask the padding with ``ignore_index``).
    """

    def __init__(
        self, encoder: nn.Module, decoder: AttentionDecoder, bos_id: int, eos_id: int, pad_id: int
    ) -> None:
        super().__init__()
        for label, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if not 0 <= value < decoder.vocab_size:
                raise RnnkitError(
                    f"{label}={value} is outside the target vocabulary [0, {decoder.vocab_size})"
                )
        self.encoder, self.decoder = encoder, decoder
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

    def encode(self, src: Tensor, src_lengths: Tensor | None = None) -> Encoded:
        """Run the encoder and check it returned an `Encoded`."""
        encoded = self.encoder(src, src_lengths)
        if not isinstance(encoded, Encoded):
            raise RnnkitError(
                f"the encoder must return rnnkit.models.seq2seq.Encoded, got "
                f"{type(encoded).__name__}"
            )
        return encoded

    def forward(
        self,
        src: Tensor,
        src_lengths: Tensor | None,
        tgt_in: Tensor,
        teacher_forcing: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """src, src_lengths as the encoder takes them, tgt_in (B, T) ids starting with bos ->
        (logits (B, T, V), attention weights (B, T, S)).

        With ``teacher_forcing`` < 1 each step t > 0 feeds, for each sequence independently, the
        model's own argmax of step t - 1 with probability 1 - teacher_forcing (scheduled
        sampling; ``generator`` makes the draws reproducible) instead of ``tgt_in[:, t]``.
        """
        if not 0.0 <= teacher_forcing <= 1.0:
            raise RnnkitError(f"teacher_forcing must be in [0, 1], got {teacher_forcing!r}")
        if tgt_in.dim() != 2 or tgt_in.shape[1] == 0 or tgt_in.is_floating_point():
            raise RnnkitError(
                f"tgt_in must be token ids (B, T) int64 with T >= 1, got {tgt_in.dtype} of shape "
                f"{tuple(tgt_in.shape)}"
            )
        encoded = self.encode(src, src_lengths)
        prepared = self.decoder.prepare(encoded)
        state = self.decoder.init_state(encoded)
        if teacher_forcing >= 1.0:  # the output layer once for all steps: one large product
            vectors, all_weights = [], []
            embedded = self.decoder.embedding(tgt_in)  # (B, T, E): one gradient for all steps
            for t in range(tgt_in.shape[1]):
                attentional, state, weights = self.decoder.attend(
                    embedded[:, t], state, encoded, prepared
                )
                vectors.append(attentional)
                all_weights.append(weights)
            logits = self.decoder.logits(torch.stack(vectors, dim=1))
            return logits, torch.stack(all_weights, dim=1)
        all_logits, all_weights = [], []
        tokens = tgt_in[:, 0]
        for t in range(tgt_in.shape[1]):
            if t > 0:
                tokens = self._next_input(tgt_in[:, t], all_logits[-1], teacher_forcing, generator)
            logits, state, weights = self.decoder.step(tokens, state, encoded, prepared)
            all_logits.append(logits)
            all_weights.append(weights)
        return torch.stack(all_logits, dim=1), torch.stack(all_weights, dim=1)

    @staticmethod
    def _next_input(
        forced: Tensor, logits: Tensor, ratio: float, generator: torch.Generator | None
    ) -> Tensor:
        """The given token with probability ``ratio``, else the model's own argmax."""
        if ratio >= 1.0:
            return forced
        own = torch.rand(forced.shape, generator=generator).to(forced.device) >= ratio
        return torch.where(own, logits.argmax(-1), forced)

    def _start(self, src: Tensor, src_lengths: Tensor | None) -> tuple[Encoded, Tensor]:
        encoded = self.encode(src, src_lengths)
        return encoded, self.decoder.prepare(encoded)

    @torch.no_grad()
    def greedy(
        self,
        src: Tensor,
        src_lengths: Tensor | None = None,
        max_len: int = 100,
        return_attention: bool = False,
    ) -> list[list[int]] | tuple[list[list[int]], list[Tensor]]:
        """The likeliest token at every step, for the whole batch at once (eval mode).

        Returns a list of B token lists (each stops before its end token, or has ``max_len``
        tokens), and with ``return_attention`` also a list of B tensors (len(tokens), S_b) as
        in `Hypothesis.attention`.
        """
        _check_positive(max_len=max_len)
        was_training = self.training
        self.eval()
        try:
            encoded, prepared = self._start(src, src_lengths)
            batch = encoded.memory.shape[0]
            state = self.decoder.init_state(encoded)
            tokens = torch.full((batch,), self.bos_id, dtype=torch.long, device=src.device)
            done = torch.zeros(batch, dtype=torch.bool, device=src.device)
            outputs, weights_seq = [], []
            for _ in range(max_len):
                logits, state, weights = self.decoder.step(tokens, state, encoded, prepared)
                tokens = torch.log_softmax(logits, -1).argmax(-1).masked_fill(done, self.pad_id)
                outputs.append(tokens)
                weights_seq.append(weights)
                done = done | (tokens == self.eos_id)
                if bool(done.all()):
                    break
        finally:
            self.train(was_training)
        ids = torch.stack(outputs, dim=1).tolist()  # (B, steps)
        attention = torch.stack(weights_seq, dim=1)  # (B, steps, S)
        results, maps = [], []
        for b, row in enumerate(ids):
            n = row.index(self.eos_id) if self.eos_id in row else len(row)
            results.append(row[:n])
            maps.append(attention[b, :n, : _valid_extent(encoded.mask[b])])
        return (results, maps) if return_attention else results

    @torch.no_grad()
    def beam_search(
        self,
        src: Tensor,
        src_lengths: Tensor | None = None,
        beam: int = 5,
        max_len: int | Sequence[int] | Tensor = 100,
        length_penalty: float = 0.6,
    ) -> list[list[Hypothesis]]:
        """Beam search over the batch and its beams at once (B * K rows), in eval mode.

        Every step extends each of the K beams of an input by every token and keeps the K best
        by summed log-probability; a beam that emitted the end token, or reached its input's
        ``max_len`` tokens (one int for all inputs, or one per input (B,)), stays in the beam
        with its score frozen until every beam of every input has stopped. The K beams of each
        input are then ranked by the GNMT-normalised score (``length_penalty`` is alpha; 0
        ranks by the raw score). Beam 1 gives exactly `greedy`'s tokens. An input's hypotheses
        do not depend on the other inputs of the batch.

        Returns B lists of at most K `Hypothesis`, best first.
        """
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise RnnkitError(f"beam must be a positive integer, got {beam!r}")
        if not length_penalty >= 0.0:
            raise RnnkitError(f"length_penalty (alpha) must be >= 0, got {length_penalty!r}")
        was_training = self.training
        self.eval()
        try:
            encoded, prepared = self._start(src, src_lengths)
            limits = _step_limits(max_len, encoded.memory.shape[0], encoded.memory.device)
            found = self._beam_loop(encoded, prepared, beam, limits)
        finally:
            self.train(was_training)
        return self._hypotheses(encoded, beam, length_penalty, *found)

    def _beam_loop(self, encoded: Encoded, prepared: Tensor, beam: int, limits: Tensor):
        """The search itself, each input's beams stopping at its ``limits`` (B,) tokens: returns
        histories (B*K, steps), weights (B*K, steps, S), scores (B, K), lengths (B*K,) (tokens
        counted with the end token) and finished (B*K,) (ended with the end token)."""
        batch, device = encoded.memory.shape[0], encoded.memory.device
        rows = torch.arange(batch, device=device).repeat_interleave(beam)  # beams of input b
        encoded, prepared = encoded.select(rows), prepared.index_select(0, rows)
        state = self.decoder.init_state(encoded)
        vocab = self.decoder.vocab_size
        scores = torch.full((batch, beam), float("-inf"), device=device)
        scores[:, 0] = 0.0  # all beams start equal: expand only the first one
        scores = scores.to(encoded.memory.dtype)
        frozen = torch.full((vocab,), float("-inf"), dtype=scores.dtype, device=device)
        frozen[self.pad_id] = 0.0  # an ended beam's only continuation: pad, at no cost
        tokens = torch.full((batch * beam,), self.bos_id, dtype=torch.long, device=device)
        done = torch.zeros(batch * beam, dtype=torch.bool, device=device)
        lengths = torch.zeros(batch * beam, dtype=torch.long, device=device)
        history = tokens.new_empty(batch * beam, 0)
        weights_seq = encoded.memory.new_empty(batch * beam, 0, encoded.memory.shape[1])
        offsets = (torch.arange(batch, device=device) * beam).unsqueeze(1)  # (B, 1)
        row_limits = limits.repeat_interleave(beam)  # a beam stays with its input: no reorder
        for step in range(int(limits.max())):
            stopped = done | (row_limits <= step)  # ended, or as long as its input allows
            logits, state, weights = self.decoder.step(tokens, state, encoded, prepared)
            logp = torch.where(stopped.unsqueeze(1), frozen, torch.log_softmax(logits, -1))
            candidates = (scores.reshape(-1, 1) + logp).view(batch, beam * vocab)
            scores, flat = candidates.topk(beam, dim=-1)  # (B, K) each
            origin = (offsets + torch.div(flat, vocab, rounding_mode="floor")).view(-1)
            tokens = (flat % vocab).view(-1)
            state = state.select(origin)
            history = torch.cat([history.index_select(0, origin), tokens.unsqueeze(1)], 1)
            weights_seq = torch.cat(
                [weights_seq.index_select(0, origin), weights.index_select(0, origin)[:, None]], 1
            )
            lengths = lengths.index_select(0, origin) + (~stopped.index_select(0, origin)).long()
            done = done.index_select(0, origin) | (tokens == self.eos_id)
            if bool((done | (row_limits <= step + 1)).all()):
                break
        return history, weights_seq, scores, lengths, done

    def _hypotheses(
        self,
        encoded: Encoded,
        beam: int,
        alpha: float,
        history: Tensor,
        weights_seq: Tensor,
        scores: Tensor,
        lengths: Tensor,
        done: Tensor,
    ) -> list[list[Hypothesis]]:
        """Cut the beams at their end tokens and rank each input's by normalised score."""
        ids, flat_scores = history.tolist(), scores.reshape(-1).tolist()
        results = []
        for b in range(scores.shape[0]):
            extent = _valid_extent(encoded.mask[b])
            found = []
            for row in range(b * beam, (b + 1) * beam):
                score = flat_scores[row]
                if score == float("-inf"):  # fewer than K distinct continuations exist
                    continue
                n = int(lengths[row]) - int(done[row])  # the tokens before the end token
                found.append(
                    Hypothesis(
                        tokens=ids[row][:n],
                        score=score,
                        normalised=score / gnmt_penalty(int(lengths[row]), alpha),
                        attention=weights_seq[row, :n, :extent],
                        finished=bool(done[row]),
                    )
                )
            found.sort(key=lambda h: h.normalised, reverse=True)
            results.append(found)
        return results


def _step_limits(max_len: int | Sequence[int] | Tensor, batch: int, device) -> Tensor:
    """``max_len``, one int or one per input, as (B,) int64 on ``device``; refuses a count < 1."""
    if isinstance(max_len, int):
        _check_positive(max_len=max_len)
        return torch.full((batch,), max_len, dtype=torch.long, device=device)
    limits = torch.as_tensor(max_len, device=device)
    if limits.shape != (batch,) or limits.is_floating_point() or bool((limits < 1).any()):
        raise RnnkitError(f"max_len must be a positive integer or {batch} of them (one per "
                          f"input), got {max_len!r}")  # fmt: skip
    return limits.long()


def _valid_extent(mask: Tensor) -> int:
    """1 + the last valid position of a mask (S,) (the source's length for a prefix mask)."""
    valid = mask.nonzero()
    return int(valid[-1]) + 1 if len(valid) else 0
