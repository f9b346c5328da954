"""What ``rnnkit export`` records of an encoder-decoder run (translate, caption): two graphs a
client chains to decode by itself, greedily or with a beam.

    encoder: src (B, S) int64, src_lengths (B,) int64     (translate: subword ids, EOS last)
             or pixels (B, H, W) uint8                     (caption: the grayscale scene)
        -> memory (B, S, M), mask (B, S) bool, keys (B, S, A), h (L, B, H) [, c (L, B, H)]
           [, feed (B, H)]
    decoder: token (B,) int64, memory, mask, keys, h [, c] [, feed]
        -> log_probs (B, V), attention (B, S), h_n [, c_n] [, feed_n]

``keys`` is the attention's projection of the memory, computed once per input (`Attention.
prepare`); ``h`` (and an LSTM's ``c``) the decoder's recurrent state, the encoder's bridge at
the start; ``feed`` the previous attentional vector (input feeding; zeros at the start). The
client runs the encoder once, then the decoder once per output token: ``token`` is BOS at the
first step, then the token it chose; memory, mask and keys stay the encoder's; h, c and feed
are the encoder's at the first step, then the previous step's h_n, c_n and feed_n (model.json
``chain``). Greedy decoding takes the argmax of ``log_probs`` until EOS; beam search repeats
each input's rows K times and reorders the rows of h, c and feed by the beams kept
(`Seq2Seq.beam_search` does the same in PyTorch).

Both graphs are checked on the run's own data (its sentences, or Fashion-MNIST scenes), then
chained: greedy decoding through the exported graphs must give the tokens of the model's own
greedy decoding (`Seq2Seq.greedy`), each step's outputs within the tolerance of PyTorch's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.data import images as fm
from rnnkit.data.parallel import read_parallel
from rnnkit.data.tokens import BOS, EOS, PAD, UNK, pad_ids
from rnnkit.errors import RnnkitError
from rnnkit.export import Chain, Graph, Runner, first_rows, ragged_batch
from rnnkit.models.seq2seq import DecoderState, Encoded, Seq2Seq

#: sentences or scenes of the run's data decoded end to end by the chained check
CHAINED = 4


def state_names(model: Seq2Seq) -> list[str]:
    """The decoder state's names: h, c (LSTM), feed (input feeding)."""
    decoder = model.decoder
    return ["h", "c"][: decoder.num_states] + (["feed"] if decoder.input_feeding else [])


def _encoder_outputs(model: Seq2Seq, encoded: Encoded) -> tuple[Tensor, ...]:
    """memory, mask, keys and the decoder's initial state (h [, c] [, feed])."""
    start = model.decoder.init_state(encoded)
    feed = () if start.feed is None else (start.feed,)
    return (encoded.memory, encoded.mask, model.decoder.prepare(encoded), *start.rnn, *feed)


class _TextEncoder(nn.Module):
    """src (B, S) int64, src_lengths (B,) -> the encoder's outputs (module docstring)."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: Tensor, src_lengths: Tensor):
        return _encoder_outputs(self.model, self.model.encode(src, src_lengths))


class _ImageEncoder(nn.Module):
    """pixels (B, H, W) uint8 -> the encoder's outputs, the pixels read as floats in [0, 1]."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor):
        return _encoder_outputs(self.model, self.model.encode(pixels.float() / 255.0, None))


class _DecoderStep(nn.Module):
    """token (B,), memory, mask, keys, h [, c] [, feed] -> log_probs (B, V), attention (B, S),
    h_n [, c_n] [, feed_n]: `AttentionDecoder.step`."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, token: Tensor, memory: Tensor, mask: Tensor, keys: Tensor, *state: Tensor):
        n = self.decoder.num_states
        rnn, feed = tuple(state[:n]), (state[n] if self.decoder.input_feeding else None)
        encoded = Encoded(memory, mask, rnn)
        logits, new, weights = self.decoder.step(token, DecoderState(rnn, feed), encoded, keys)
        fed = () if new.feed is None else (new.feed,)
        return (torch.log_softmax(logits, -1), weights, *new.rnn, *fed)


#: a graph's check: the length its example is recorded at, the two lengths it is checked at,
#: and what they set
Checks = tuple[int, tuple[int, int], str]


def _graphs(
    model: Seq2Seq,
    encoder: nn.Module,
    encoder_axes: dict[str, dict[int, str]],
    encoder_samples: Callable[[int], dict[str, Tensor]],
    step_sources: Callable[[int], tuple[dict[str, Tensor], Tensor]],
    checks: dict[str, Checks],
    source: str,
) -> dict[str, Graph]:
    """The encoder and decoder `Graph` of ``model``. ``encoder_axes``: the encoder's inputs and
    their axes; ``step_sources(n)``: the encoder's inputs and the tokens (B, t + 1) whose last
    column the decoder's check ``n`` reads after the others (`_step_inputs`)."""
    names = state_names(model)
    state_axes = {"h": {1: "B"}, "c": {1: "B"}, "feed": {0: "B"}}
    shared = {"memory": {0: "B", 1: "S"}, "mask": {0: "B", 1: "S"}, "keys": {0: "B", 1: "S"},
              **{n: state_axes[n] for n in names}}  # fmt: skip
    encoder_outputs = ["memory", "mask", "keys", *names]
    axes = {**encoder_axes, **shared}
    example, lengths, axis = checks["encoder"]
    encoder_graph = Graph(encoder, first_rows(encoder_samples(example), axes, 2),
                          encoder_outputs, axes, {}, encoder_samples, source, lengths,
                          axis)  # fmt: skip
    step = _DecoderStep(model)
    outputs = ["log_probs", "attention", *(f"{n}_n" for n in names)]
    axes = {"token": {0: "B"}, **shared, "log_probs": {0: "B"}, "attention": {0: "B", 1: "S"},
            **{f"{n}_n": state_axes[n] for n in names}}  # fmt: skip

    def decoder_samples(n: int) -> dict[str, Tensor]:
        return _step_inputs(encoder_graph, step, outputs, *step_sources(n))

    example, lengths, axis = checks["decoder"]
    decoder_graph = Graph(step, first_rows(decoder_samples(example), axes, 2), outputs, axes,
                          {}, decoder_samples, source, lengths, axis)  # fmt: skip
    return {"encoder": encoder_graph, "decoder": decoder_graph}


def _step_inputs(
    encoder: Graph, step: nn.Module, outputs: list[str], inputs: dict[str, Tensor], tokens: Tensor
) -> dict[str, Tensor]:
    """The decoder's inputs after it read ``tokens[:, :-1]`` (B, t + 1) from the encoder's
    outputs for ``inputs``, in PyTorch: the state those steps leave, the last column as
    ``token``."""
    with torch.no_grad():
        values = dict(zip(encoder.outputs, encoder.module(*inputs.values())))
        for t in range(tokens.shape[1] - 1):
            values.update(_fed_back(outputs, step(*_feed(encoder, values, tokens[:, t]))))
    return dict(zip(["token", *encoder.outputs], _feed(encoder, values, tokens[:, -1])))


def _feed(encoder: Graph, values: dict[str, Any], token: Any) -> list[Any]:
    """The decoder's inputs in order: ``token``, then the encoder's outputs' names (memory,
    mask, keys, the state) from ``values``."""
    return [token, *(values[n] for n in encoder.outputs)]


def _fed_back(outputs: list[str], values) -> dict[str, Any]:
    """A step's h_n, c_n, feed_n as the next step's h, c, feed."""
    return {n.removesuffix("_n"): v for n, v in zip(outputs, values) if n.endswith("_n")}


def greedy_check(
    graphs: dict[str, Graph], runs: dict[str, Runner], inputs: dict[str, Tensor],
    expected: list[list[int]], max_len: int, source: str,
) -> dict[str, Any]:  # fmt: skip
    """Greedy decoding of ``inputs`` (the encoder's, a batch) through the exported graphs
    (``runs``), each step beside PyTorch's graphs fed the same tokens: RnnkitError unless the
    tokens are ``expected`` (the model's own greedy decoding, at most ``max_len`` tokens); the
    report holds the largest difference of any output of any step."""
    encoder, decoder = graphs["encoder"], graphs["decoder"]
    names = ["token", *encoder.outputs]
    with torch.no_grad():
        ours = dict(zip(encoder.outputs, encoder.module(*inputs.values())))
    theirs = dict(zip(encoder.outputs, map(torch.from_numpy, runs["encoder"](inputs))))
    worst = max(_diff(theirs[n], ours[n]) for n in encoder.outputs)
    batch = len(expected)
    token, done, chosen = torch.full((batch,), BOS), torch.zeros(batch, dtype=torch.bool), []
    for _ in range(max_len):
        with torch.no_grad():
            want = decoder.module(*_feed(encoder, ours, token))
        got = runs["decoder"](dict(zip(names, _feed(encoder, theirs, token))))
        got = [torch.from_numpy(a) for a in got]
        worst = max(worst, *(_diff(g, e) for g, e in zip(got, want)))
        ours.update(_fed_back(decoder.outputs, want))
        theirs.update(_fed_back(decoder.outputs, got))
        token = got[0].argmax(-1).masked_fill(done, PAD)
        chosen.append(token)
        done = done | (token == EOS)
        if bool(done.all()):
            break
    rows = [r[: r.index(EOS)] if EOS in r else r for r in torch.stack(chosen, 1).tolist()]
    for number, (row, want_row) in enumerate(zip(rows, expected), 1):
        if row != want_row:
            raise RnnkitError(f"greedy decoding through the exported graphs gives other tokens "
                              f"than PyTorch's for input {number} of {source} ({row[:8]}... "
                              f"against {want_row[:8]}...); nothing was written")  # fmt: skip
    return {"data": source, "inputs": batch, "steps": len(chosen), "same_tokens": True,
            "max_abs_diff": worst}  # fmt: skip


def _diff(got: Tensor, expected: Tensor) -> float:
    """The largest absolute difference of two outputs (booleans as 0/1)."""
    if got.shape != expected.shape:
        return float("inf")
    return float((got.double() - expected.double()).abs().max()) if got.numel() else 0.0


def _chain_metadata(model: Seq2Seq, cfg: Any) -> dict[str, Any]:
    """What both tasks' model.json say about decoding: how to chain the graphs (``chain``),
    the special token ids, the settings the run decodes with."""
    decoder, names = model.decoder, state_names(model)
    chain = {
        "order": ["encoder", "decoder"],
        "encoder": "once per batch of inputs",
        "decoder": "once per output token, every row of the batch together",
        "from_encoder": ["memory", "mask", "keys", *names],
        "feedback": {f"{n}_n": n for n in names},
        "token": "bos at the first step, then the token chosen from log_probs (greedy: the "
        "argmax), until eos",
        "beam": "repeat each input's encoder outputs K times; after each step keep each "
        "input's K best (score + log_probs) and reorder the rows of the state by the beams kept",
    }
    return {"chain": chain, "state": names,
            "special_ids": {"pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS},
            "cell": cfg.cell, "attention": cfg.attention, "decoder_layers": decoder.layers,
            "decoder_hidden": decoder.hidden, "beam": cfg.beam,
            "length_penalty": cfg.length_penalty}  # fmt: skip


# --- translate -------------------------------------------------------------------------------


def translate_chain(predictor: Any) -> Chain:
    """The `Chain` of a translate run's `TranslatePredictor`: its sentences (the run's --src and
    --tgt files) feed the checks; model.json carries both subword vocabularies and the
    SentencePiece models beside it (``src.spm``, ``tgt.spm``) to tokenise and detokenise."""
    model, cfg = predictor.model, predictor.cfg
    try:
        pairs = read_parallel(cfg.src, cfg.tgt, cfg.encoding)[:200]
    except RnnkitError as err:
        raise RnnkitError(f"the export is checked on the run's sentences: {err}") from None
    sources = [torch.tensor(predictor.encode(s, n)) for n, (s, _) in enumerate(pairs, 1)]
    targets = [[BOS, *predictor.tgt_spm.encode(t)[:2]] for _, t in pairs]
    source = f"the run's sentences ({cfg.src})"

    def encoder_samples(steps: int) -> dict[str, Tensor]:
        """Three sources of ``steps``, ``steps - 3`` and ``steps // 2`` pieces (`ragged_batch`)."""
        src, lengths = ragged_batch(sources, steps)
        return {"src": src.t().contiguous(), "src_lengths": lengths}

    def step_sources(steps: int) -> tuple[dict[str, Tensor], Tensor]:
        """Those sources, and two pieces of their targets read before the checked step."""
        return encoder_samples(steps), pad_ids(targets[:3])

    axes = {"src": {0: "B", 1: "S"}, "src_lengths": {0: "B"}}
    checks = {"encoder": (7, (12, 30), "S"), "decoder": (7, (12, 30), "S")}
    graphs = _graphs(model, _TextEncoder(model), axes, encoder_samples, step_sources, checks,
                     source)  # fmt: skip
    chosen = sources[:CHAINED]
    src, lengths = pad_ids([s.tolist() for s in chosen]), torch.tensor([len(s) for s in chosen])
    max_len = min(2 * int(lengths.max()) + 10, 2 * cfg.max_len)

    def check(runs: dict[str, Runner]) -> dict[str, Any]:
        expected = model.greedy(src, lengths, max_len)
        return greedy_check(graphs, runs, {"src": src, "src_lengths": lengths}, expected,
                            max_len, f"the first {len(chosen)} sentences of {cfg.src}")  # fmt: skip

    metadata = {**_chain_metadata(model, cfg),
                "source_vocabulary": _pieces(predictor.src_spm),
                "target_vocabulary": _pieces(predictor.tgt_spm),
                "tokenizer": {"kind": "sentencepiece", "source": "src.spm", "target": "tgt.spm",
                              "max_source_pieces": cfg.max_len - 1, "source_ends_with": "eos"},
                "max_tokens": {"per_source_position": 2, "extra": 10,
                               "at_most": 2 * cfg.max_len}}  # fmt: skip
    files = {"src.spm": predictor.src_spm.model, "tgt.spm": predictor.tgt_spm.model}
    return Chain(graphs, metadata, check, files)


def _pieces(subword: Any) -> list[str]:
    """Every piece of a SentencePiece model, by id."""
    return [subword.processor.id_to_piece(i) for i in range(len(subword))]


# --- caption ---------------------------------------------------------------------------------


def caption_chain(predictor: Any) -> Chain:
    """The `Chain` of a caption run's `CaptionPredictor`, checked on scenes of Fashion-MNIST's
    test pictures (the run's --data) with their true captions."""
    model, cfg, vocab = predictor.model, predictor.cfg, predictor.vocab
    try:
        pool = fm.load_fashion_mnist("test", cfg.data or None)
    except RnnkitError as err:
        raise RnnkitError(f"the export is checked on the run's pictures: {err}") from None
    rng = np.random.default_rng(cfg.scene_seed + 2)
    pixels, labels = fm.compose_scenes(*pool, 8, rng, cfg.min_items, cfg.max_items, cfg.slots)
    words = [vocab.encode(fm.caption_of(k)) for k in labels]
    source = f"scenes of Fashion-MNIST test pictures ({Path(cfg.data or fm.DEFAULT_DIR)})"

    def encoder_samples(batch: int) -> dict[str, Tensor]:
        """The first ``batch`` scenes."""
        return {"pixels": torch.from_numpy(pixels[:batch])}

    def step_sources(read: int) -> tuple[dict[str, Tensor], Tensor]:
        """Three scenes, and the first ``read`` tokens of their true captions read before the
        checked step (BOS first; padded past the end)."""
        tokens = pad_ids([[BOS, *w, EOS] for w in words[:3]])
        tokens = nn.functional.pad(tokens, (0, max(0, read + 1 - tokens.shape[1])), value=PAD)
        return encoder_samples(3), tokens[:, : read + 1]

    axes = {"pixels": {0: "B"}}
    checks = {"encoder": (3, (2, 5), "B"), "decoder": (2, (1, 5), "tokens read")}
    graphs = _graphs(model, _ImageEncoder(model), axes, encoder_samples, step_sources, checks,
                     source)  # fmt: skip

    def check(runs: dict[str, Runner]) -> dict[str, Any]:
        inputs = encoder_samples(CHAINED)
        expected = model.greedy(inputs["pixels"].float() / 255.0, None, cfg.max_len)
        return greedy_check(graphs, runs, inputs, expected, cfg.max_len, f"{CHAINED} {source}")

    height, width = cfg.scene_size
    metadata = {**_chain_metadata(model, cfg), "vocabulary": vocab.words,
                "image": {"height": height, "width": width, "dtype": "uint8",
                          "pixels": "grayscale, light items on black (as `rnnkit caption "
                          "--example` writes them)"},
                "grid": list(model.encoder.grid(height, width)),
                "max_tokens": {"at_most": cfg.max_len}}  # fmt: skip
    return Chain(graphs, metadata, check)
