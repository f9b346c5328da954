"""Seq2Seq: masked attention, padding and batching invariance, greedy and beam search agreeing
with each other and with teacher forcing, copy and reverse learned, any encoder, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from rnnkit.errors import RnnkitError
from rnnkit.models.seq2seq import (
    ATTENTIONS,
    Attention,
    AttentionDecoder,
    Bridge,
    Encoded,
    Seq2Seq,
    TextEncoder,
    gnmt_penalty,
)

torch.set_num_threads(1)

PAD, BOS, EOS = 0, 1, 2
SYMBOLS = 8  # tokens 3 .. 10
VOCAB = 3 + SYMBOLS

CONFIGS = [  # (cell, attention, layers, input_feeding)
    ("gru", "additive", 1, True),
    ("lstm", "general", 2, True),
    ("gru", "dot", 2, False),
]


def make_model(cell="gru", attention="additive", layers=1, input_feeding=True, hidden=12):
    encoder = TextEncoder(VOCAB, 6, hidden // 2, layers, cell, decoder_hidden=hidden,
                          decoder_layers=layers)  # fmt: skip
    decoder = AttentionDecoder(VOCAB, 6, hidden, hidden, layers, cell, attention,
                               input_feeding=input_feeding, padding_idx=PAD)  # fmt: skip
    return Seq2Seq(encoder, decoder, BOS, EOS, PAD)


def random_model(config, seed=0) -> Seq2Seq:
    """An untrained float64 model with large random weights, so that its outputs depend on the
    source and end (the end token is favoured) after varied numbers of tokens."""
    torch.manual_seed(seed)
    model = make_model(*config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1.0)
        model.decoder.out.bias[EOS] += 2.0
    return model


def random_source(lengths: list[int], seed=0, width: int | None = None) -> tuple[Tensor, Tensor]:
    """A padded batch (B, width) of random symbols and its lengths."""
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), width or max(lengths)), PAD, dtype=torch.long)
    for b, n in enumerate(lengths):
        src[b, :n] = torch.randint(3, VOCAB, (n,), generator=g)
    return src, torch.tensor(lengths)


def task_batch(n: int, reverse: bool, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Random sequences of 3-6 symbols; the target is the copy (or reverse) framed by BOS/EOS."""
    lengths = torch.randint(3, 7, (n,), generator=g)
    src = torch.full((n, 6), PAD, dtype=torch.long)
    tgt = torch.full((n, 8), PAD, dtype=torch.long)
    for b, length in enumerate(lengths.tolist()):
        seq = torch.randint(3, VOCAB, (length,), generator=g)
        src[b, :length] = seq
        tgt[b, 0], tgt[b, length + 1] = BOS, EOS
        tgt[b, 1 : length + 1] = seq.flip(0) if reverse else seq
    return src, lengths, tgt


def train(model: Seq2Seq, reverse: bool, steps: int = 300) -> Seq2Seq:
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    for _ in range(steps):
        src, lengths, tgt = task_batch(64, reverse, g)
        logits, _ = model(src, lengths, tgt[:, :-1])
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, VOCAB), tgt[:, 1:].reshape(-1), ignore_index=PAD
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return model.eval()


@pytest.fixture(scope="module")
def copier() -> Seq2Seq:
    torch.manual_seed(0)
    return train(make_model("gru", "additive", hidden=32), reverse=False)


@pytest.fixture(scope="module")
def reverser() -> Seq2Seq:
    torch.manual_seed(0)
    return train(make_model("lstm", "general", hidden=32), reverse=True)


# --- attention -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_attention_weights_are_zero_at_padding_and_sum_to_one(kind):
    torch.manual_seed(0)
    attention = Attention(5, 5, kind, attn_size=4).double()
    lengths = torch.tensor([6, 3, 1])
    mask = torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)
    memory = torch.randn(3, 6, 5, dtype=torch.float64)
    query = torch.randn(3, 5, dtype=torch.float64)
    context, weights = attention(query, memory, mask)
    assert context.shape == (3, 5) and weights.shape == (3, 6)
    assert (weights[~mask] == 0).all() and (weights[mask] > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(context, torch.einsum("bs,bsm->bm", weights, memory))
    # the padded memory does not matter, and precomputed keys give the same result
    garbage = memory.masked_fill(~mask.unsqueeze(-1), 1e3)
    keys = attention.prepare(garbage)
    context2, weights2 = attention(query, garbage, mask, keys)
    torch.testing.assert_close(weights2, weights)
    torch.testing.assert_close(context2, context)


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_attention_gradcheck(kind):
    torch.manual_seed(0)
    attention = Attention(4, 4 if kind == "dot" else 3, kind, attn_size=5).double()
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    query = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(2, 4, attention.memory_size, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, m: attention(q, m, mask), (query, memory))
    params = tuple(attention.parameters())  # and through the parameters
    if params:

        def by_params(*weights):
            values = dict(zip([n for n, _ in attention.named_parameters()], weights))
            return torch.func.functional_call(attention, values, (query, memory, mask))

        assert torch.autograd.gradcheck(by_params, params)


# --- invariances ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_padding_the_source_never_changes_a_translation(config):
    model = random_model(config)
    src, lengths = random_source([4], seed=3)
    tgt_in = torch.tensor([[BOS, 5, 6, 7]])
    logits, attn = model(src, lengths, tgt_in)
    greedy = model.greedy(src, lengths, max_len=6)
    beams = model.beam_search(src, lengths, beam=3, max_len=6)
    for width in (5, 9):  # extra pad columns, and a longer neighbour in the batch
        padded, _ = random_source([4, width], seed=3, width=width)
        padded[0] = PAD
        padded[0, :4] = src[0]
        lengths2 = torch.tensor([4, width])
        logits2, attn2 = model(padded, lengths2, tgt_in.expand(2, -1))
        torch.testing.assert_close(logits2[0], logits[0])
        torch.testing.assert_close(attn2[0, :, :4], attn[0])
        assert (attn2[0, :, 4:] == 0).all()
        assert model.greedy(padded, lengths2, max_len=6)[0] == greedy[0]
        beams2 = model.beam_search(padded, lengths2, beam=3, max_len=6)[0]
        assert [h.tokens for h in beams2] == [h.tokens for h in beams[0]]
        torch.testing.assert_close([h.score for h in beams2], [h.score for h in beams[0]])


@pytest.mark.parametrize("config", CONFIGS)
def test_a_batch_translates_as_each_sentence_alone(config):
    model = random_model(config, seed=1)
    src, lengths = random_source([5, 2, 7, 3], seed=4)
    greedy, maps = model.greedy(src, lengths, max_len=8, return_attention=True)
    beams = model.beam_search(src, lengths, beam=4, max_len=8, length_penalty=0.6)
    for b, n in enumerate(lengths.tolist()):
        alone_src, alone_len = src[b : b + 1, :n], lengths[b : b + 1]
        alone, alone_maps = model.greedy(alone_src, alone_len, max_len=8, return_attention=True)
        assert alone[0] == greedy[b]
        torch.testing.assert_close(alone_maps[0], maps[b])
        assert maps[b].shape == (len(greedy[b]), n)
        alone_beams = model.beam_search(alone_src, alone_len, beam=4, max_len=8)[0]
        assert [h.tokens for h in alone_beams] == [h.tokens for h in beams[b]]
        for h, h2 in zip(alone_beams, beams[b]):
            torch.testing.assert_close(h.normalised, h2.normalised)
            torch.testing.assert_close(h.attention, h2.attention)


# --- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_teacher_forced_logits_equal_step_by_step_decoding(config):
    model = random_model(config, seed=2)
    src, lengths = random_source([5, 3], seed=5)
    tgt_in = torch.tensor([[BOS, 3, 4, 5, 6], [BOS, 7, 8, PAD, PAD]])
    logits, attn = model(src, lengths, tgt_in)
    assert logits.shape == (2, 5, VOCAB) and attn.shape == (2, 5, 5)
    encoded = model.encode(src, lengths)
    prepared = model.decoder.prepare(encoded)
    state = model.decoder.init_state(encoded)
    for t in range(5):
        step_logits, state, weights = model.decoder.step(tgt_in[:, t], state, encoded, prepared)
        torch.testing.assert_close(step_logits, logits[:, t])
        torch.testing.assert_close(weights, attn[:, t])


def test_teacher_forcing_zero_feeds_the_models_own_argmax():
    model = random_model(CONFIGS[1], seed=3)
    src, lengths = random_source([6, 4], seed=6)
    greedy = model.greedy(src, lengths, max_len=5)
    tgt_in = torch.full((2, 5), 9)
    tgt_in[:, 0] = BOS
    logits, _ = model(src, lengths, tgt_in, teacher_forcing=0.0)
    for b, tokens in enumerate(greedy):
        own = logits[b].argmax(-1).tolist()
        assert own[: len(tokens)] == tokens
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    half1, _ = model(src, lengths, tgt_in, teacher_forcing=0.5, generator=g1)
    half2, _ = model(src, lengths, tgt_in, teacher_forcing=0.5, generator=g2)
    torch.testing.assert_close(half1, half2)


@pytest.mark.parametrize("config", CONFIGS)
def test_beam_of_one_is_greedy(config):
    model = random_model(config, seed=4)
    src, lengths = random_source([6, 1, 4, 3], seed=7)
    greedy, maps = model.greedy(src, lengths, max_len=7, return_attention=True)
    beams = model.beam_search(src, lengths, beam=1, max_len=7)
    for tokens, attention, found in zip(greedy, maps, beams):
        assert len(found) == 1
        assert found[0].tokens == tokens
        torch.testing.assert_close(found[0].attention, attention)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_hypotheses_are_sorted_by_normalised_score_and_scored_right(alpha):
    model = random_model(CONFIGS[0], seed=5)
    src, lengths = random_source([5, 3], seed=8)
    beams = model.beam_search(src, lengths, beam=4, max_len=6, length_penalty=alpha)
    for b, found in enumerate(beams):
        assert len(found) == 4
        assert len({tuple(h.tokens) for h in found}) == 4
        normalised = [h.normalised for h in found]
        assert normalised == sorted(normalised, reverse=True)
        for h in found:
            n = len(h.tokens) + h.finished
            assert h.normalised == pytest.approx(h.score / gnmt_penalty(n, alpha))
            # the score is the sum of the tokens' log-probabilities under teacher forcing
            tgt = [BOS, *h.tokens] + ([EOS] if h.finished else [])
            logits, _ = model(src[b : b + 1], lengths[b : b + 1], torch.tensor([tgt[:-1]]))
            logp = torch.log_softmax(logits[0], -1).gather(1, torch.tensor(tgt[1:])[:, None])
            assert h.score == pytest.approx(logp.sum().item(), abs=1e-9)


def test_any_encoder_returning_encoded_plugs_in():
    """A captioning-like encoder: a flattened feature map, all positions valid, no lengths."""

    class GridEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(3, 8, 3, padding=1)
            self.bridge = Bridge(8, 12, 1, "lstm")

        def forward(self, images: Tensor, lengths: Tensor | None = None) -> Encoded:
            grid = self.features(images).flatten(2).transpose(1, 2)  # (B, 16, 8)
            mask = torch.ones(grid.shape[:2], dtype=torch.bool)
            return Encoded(grid, mask, self.bridge(grid.mean(1)))

    torch.manual_seed(0)
    decoder = AttentionDecoder(VOCAB, 6, 12, 8, cell="lstm", attention="general")
    model = Seq2Seq(GridEncoder(), decoder, BOS, EOS, PAD)
    images = torch.randn(2, 3, 4, 4)
    logits, attn = model(images, None, torch.tensor([[BOS, 4, 5], [BOS, 6, 7]]))
    assert logits.shape == (2, 3, VOCAB) and attn.shape == (2, 3, 16)
    logits.sum().backward()
    assert model.encoder.features.weight.grad.abs().sum() > 0
    greedy = model.greedy(images, max_len=4)
    assert [h.tokens for h in model.beam_search(images, None, 1, 4)[0]] == [greedy[0]]
    assert model.training  # decoding restores the mode


# --- learning ------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["copy", "reverse"])
def test_learns_to_copy_and_to_reverse(task, copier, reverser):
    model = copier if task == "copy" else reverser
    src, lengths, tgt = task_batch(200, task == "reverse", torch.Generator().manual_seed(99))
    expected = [row[1 : n + 1].tolist() for row, n in zip(tgt, lengths.tolist())]
    assert model.greedy(src, lengths, max_len=10) == expected
    best = [found[0].tokens for found in model.beam_search(src, lengths, beam=3, max_len=10)]
    assert best == expected


def test_trained_model_batches_and_beams_consistently(copier):
    model = copy.deepcopy(copier).double()
    src, lengths, _ = task_batch(6, False, torch.Generator().manual_seed(5))
    greedy = model.greedy(src, lengths, max_len=10)
    beams = model.beam_search(src, lengths, beam=4, max_len=10)
    assert [found[0].tokens for found in model.beam_search(src, lengths, 1, 10)] == greedy
    for b, n in enumerate(lengths.tolist()):
        alone = model.beam_search(src[b : b + 1, :n], lengths[b : b + 1], beam=4, max_len=10)
        assert [h.tokens for h in alone[0]] == [h.tokens for h in beams[b]]
        assert all(h.finished for h in beams[b])


# --- errors --------------------------------------------------------------------------------------


def test_bad_arguments_are_rnnkit_errors():
    with pytest.raises(RnnkitError, match="dot attention needs query_size == memory_size"):
        Attention(4, 6, "dot")
    with pytest.raises(RnnkitError, match="unknown attention 'cosine'"):
        Attention(4, 4, "cosine")
    with pytest.raises(RnnkitError, match="unknown cell 'rnn'; choose one of gru, lstm"):
        TextEncoder(VOCAB, 4, 4, cell="rnn")
    with pytest.raises(RnnkitError, match="unknown cell 'transformer'"):
        AttentionDecoder(VOCAB, 4, 4, 4, cell="transformer")
    with pytest.raises(RnnkitError, match="dot attention"):
        AttentionDecoder(VOCAB, 4, 4, 6, attention="dot")
    with pytest.raises(RnnkitError, match="eos_id=11 is outside"):
        Seq2Seq(TextEncoder(VOCAB, 4, 2), AttentionDecoder(VOCAB, 4, 4, 4), BOS, 11, PAD)
    model = random_model(CONFIGS[0])
    src, lengths = random_source([3, 2])
    for beam in (0, -1, 1.5):
        with pytest.raises(RnnkitError, match="beam must be a positive integer"):
            model.beam_search(src, lengths, beam=beam)
    with pytest.raises(RnnkitError, match="max_len must be a positive integer"):
        model.greedy(src, lengths, max_len=0)
    with pytest.raises(RnnkitError, match="length_penalty"):
        model.beam_search(src, lengths, length_penalty=-1.0)
    with pytest.raises(RnnkitError, match=r"teacher_forcing must be in \[0, 1\]"):
        model(src, lengths, torch.tensor([[BOS], [BOS]]), teacher_forcing=1.5)
    with pytest.raises(RnnkitError, match="token ids"):
        model(src.double(), lengths, torch.tensor([[BOS], [BOS]]))


def test_mismatched_encoder_and_decoder_are_rnnkit_errors():
    src, lengths = random_source([3, 2])
    encoder = TextEncoder(VOCAB, 4, 3, decoder_hidden=8)  # memory 6, state (1, B, 8)
    lstm = Seq2Seq(encoder, AttentionDecoder(VOCAB, 4, 8, 6, cell="lstm"), BOS, EOS, PAD)
    with pytest.raises(RnnkitError, match=r"the encoder's state must be 2 tensor\(s\)"):
        lstm.greedy(src, lengths, max_len=3)
    narrow = Seq2Seq(encoder, AttentionDecoder(VOCAB, 4, 8, 5), BOS, EOS, PAD)
    with pytest.raises(RnnkitError, match=r"memory \(B, S, 5\)"):
        narrow.greedy(src, lengths, max_len=3)

    class Plain(nn.Module):
        def forward(self, src, lengths=None):
            return torch.zeros(2, 3, 6), None

    wrong = Seq2Seq(Plain(), AttentionDecoder(VOCAB, 4, 8, 6), BOS, EOS, PAD)
    with pytest.raises(RnnkitError, match="must return rnnkit.models.seq2seq.Encoded"):
        wrong.greedy(src, lengths)
