"""Machine translation: an attention encoder-decoder (`rnnkit.models.seq2seq`) on parallel text.

Data: two line-aligned files (`rnnkit.data.parallel`), e.g. Multi30k English->German. Validation
files are optional (else the last ``valid_fraction`` of the pairs validates); test files, when
given, are translated with beam search after training and scored.
Tokens: a SentencePiece model per language, learned on the training side and saved with the run
(``src.spm``, ``tgt.spm``). The source ends with EOS; the decoder reads BOS + target and predicts
target + EOS. Sentences longer than ``max_len`` pieces are cut (with a warning saying how many).
Batches: ``batch`` pairs of similar length (drawn from a random window of the pairs sorted by
length, so there is little padding).
Metrics: ``loss`` is the validation cross-entropy per target piece (teacher forcing, no label
smoothing); ``bleu`` is sacrebleu's corpus BLEU of detokenised greedy translations of the first
``eval_sentences`` validation sentences (all of them, with beam search, at the end).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sacrebleu
import torch
from torch import Tensor, nn

from rnnkit.data.parallel import read_lines, read_parallel
from rnnkit.data.subword import Subword
from rnnkit.data.tokens import BOS, EOS, PAD, pad_ids
from rnnkit.errors import RnnkitError
from rnnkit.io import atomic_write_bytes, atomic_write_json
from rnnkit.models.seq2seq import (
    ATTENTIONS,
    CELLS,
    AttentionDecoder,
    Hypothesis,
    Seq2Seq,
    TextEncoder,
    target_loss,
    teacher_forced_loss,
)
from rnnkit.predictor import Predictor, check_inputs
from rnnkit.tasks.common import train_task
from rnnkit.tasks.seq2seq import Translation, check_beam, translation_of
from rnnkit.tasks.spec import TaskSpec
from rnnkit.training.options import choice, path
from rnnkit.training.runs import TrainedRun, load_run
from rnnkit.training.trainer import StepOutput, TrainConfig

NAME = "translate"
SRC_SPM, TGT_SPM = "src.spm", "tgt.spm"


@dataclass
class TranslateConfig:
    """Everything that rebuilds the data pipeline and the model (stored in config.json).

    Attributes:
        src: Source sentences, one per line (plain or .gz).
        tgt: Their translations, line by line.
        valid_src: Validation sources; none: the last valid_fraction of the pairs.
        valid_tgt: Validation targets.
        test_src: Test sources: translated with beam search after training.
        test_tgt: Test references (BLEU, chrF).
        encoding: Encoding of the files.
        valid_fraction: Pairs held out to validate when there is no --valid-src.
        src_vocab: Source subword pieces.
        tgt_vocab: Target subword pieces.
        subword: The subword model (sentencepiece's).
        max_len: Subword pieces kept per sentence.
        cell: The recurrent cell of encoder and decoder.
        embed: Embedding size.
        hidden: Encoder units per direction.
        layers: Encoder layers.
        decoder_hidden: Decoder units.
        decoder_layers: Decoder layers.
        attention: Bahdanau (additive) or Luong (dot, general).
        dropout: Dropout.
        teacher_forcing: Teacher-forcing ratio.
        label_smoothing: Label smoothing of the targets.
        batch: Sentence pairs per step.
        beam: Beam size of the final evaluation.
        length_penalty: Beam search's length normalisation exponent.
        eval_sentences: Validation sentences translated at each evaluation (BLEU).
    """

    src: str = path()
    tgt: str = path()
    valid_src: str = path()
    valid_tgt: str = path()
    test_src: str = path()
    test_tgt: str = path()
    encoding: str = "utf-8"
    valid_fraction: float = 0.05
    src_vocab: int = 8000
    tgt_vocab: int = 8000
    subword: str = choice("unigram", ("unigram", "bpe"))
    max_len: int = 80
    cell: str = choice("gru", CELLS)
    embed: int = 256
    hidden: int = 256
    layers: int = 1
    decoder_hidden: int = 512
    decoder_layers: int = 1
    attention: str = choice("additive", ATTENTIONS)
    dropout: float = 0.3
    teacher_forcing: float = 1.0
    label_smoothing: float = 0.1
    batch: int = 64
    beam: int = 5
    length_penalty: float = 0.6
    eval_sentences: int = 300

    def check(self) -> None:
        if not (self.src and self.tgt):
            raise RnnkitError("give the parallel training files --src and --tgt (e.g. --src "
                              "multi30k/train.en.gz --tgt multi30k/train.de.gz, files of the "
                              "registry's data set multi30k)")  # fmt: skip
        if bool(self.valid_src) != bool(self.valid_tgt) or bool(self.test_src) != bool(
            self.test_tgt
        ):
            raise RnnkitError("give --valid-src with --valid-tgt, and --test-src with --test-tgt")
        for name in ("max_len", "batch", "beam", "eval_sentences", "embed", "hidden"):
            if getattr(self, name) < 1:
                raise RnnkitError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("layers", "decoder_layers", "decoder_hidden", "src_vocab", "tgt_vocab"):
            if getattr(self, name) < 1:
                raise RnnkitError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise RnnkitError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.dropout < 1.0:
            raise RnnkitError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise RnnkitError(f"teacher_forcing must be in [0, 1], got {self.teacher_forcing}")
        if self.length_penalty < 0:
            raise RnnkitError(f"length_penalty must be >= 0, got {self.length_penalty}")


#: training defaults of `rnnkit train translate` (Multi30k: 29,000 pairs, ~450 steps per epoch)
DEFAULT_TRAIN = TrainConfig(lr=2e-3, warmup_steps=200, clip=1.0, max_time=60 * 60,
                            eval_every=500, log_every=50)  # fmt: skip


class Pairs:
    """Encoded sentence pairs: source ids (ending with EOS) and target ids (no BOS/EOS)."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]]) -> None:
        self.src, self.tgt = src, tgt
        self.by_length = sorted(range(len(src)), key=lambda i: (len(tgt[i]), len(src[i])))

    def __len__(self) -> int:
        return len(self.src)

    def batch(self, index: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """src (B, S), src_lengths (B,), tgt_in (B, T) = BOS + y, tgt_out (B, T) = y + EOS."""
        src = pad_ids([self.src[i] for i in index])
        lengths = torch.tensor([len(self.src[i]) for i in index])
        tgt_in = pad_ids([[BOS, *self.tgt[i]] for i in index])
        tgt_out = pad_ids([[*self.tgt[i], EOS] for i in index])
        return src, lengths, tgt_in, tgt_out


class Translate:
    """The task object the trainer drives (see `rnnkit.training.trainer`)."""

    name = NAME

    def __init__(self, cfg: TranslateConfig, subwords: tuple[Subword, Subword] | None = None):
        cfg.check()
        self.cfg = cfg
        train = read_parallel(cfg.src, cfg.tgt, cfg.encoding)
        if cfg.valid_src:
            valid = read_parallel(cfg.valid_src, cfg.valid_tgt, cfg.encoding)
        else:
            cut = len(train) - max(1, round(cfg.valid_fraction * len(train)))
            if cut < 1:
                raise RnnkitError(f"{cfg.src}: too few pairs ({len(train)}) to hold some out")
            train, valid = train[:cut], train[cut:]
        self.src_spm, self.tgt_spm = subwords or (
            Subword.learn([s for s, _ in train], cfg.src_vocab, cfg.subword),
            Subword.learn([t for _, t in train], cfg.tgt_vocab, cfg.subword),
        )
        self.train = self.encode(train, "training")
        self.valid = self.encode(valid, "validation")
        self.valid_text = valid
        self.steps_per_epoch = max(1, len(self.train) // cfg.batch)

    def encode(self, pairs: list[tuple[str, str]], label: str) -> Pairs:
        """Subword ids of ``pairs``, cut to ``max_len`` (a warning counts the cut sentences)."""
        limit = self.cfg.max_len
        src = [self.src_spm.encode(s)[: limit - 1] + [EOS] for s, _ in pairs]
        tgt = [self.tgt_spm.encode(t) for _, t in pairs]
        cut = sum(len(self.src_spm.encode(s)) >= limit for s, _ in pairs)
        cut += sum(len(t) >= limit for t in tgt)
        if cut:
            warnings.warn(f"{cut} {label} sentence(s) longer than max_len = {limit} subword "
                          "pieces were truncated; raise --max-len to keep them whole",
                          stacklevel=2)  # fmt: skip
        return Pairs(src, [t[: limit - 1] for t in tgt])

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def save_assets(self, run_dir: Path) -> None:
        atomic_write_bytes(run_dir / SRC_SPM, self.src_spm.model)
        atomic_write_bytes(run_dir / TGT_SPM, self.tgt_spm.model)

    def build_model(self) -> Seq2Seq:
        return build_model(self.cfg, len(self.src_spm), len(self.tgt_spm))

    def train_batch(self, step: int, rng: torch.Generator) -> tuple[Tensor, ...]:
        """``batch`` pairs drawn from a random window of 4 batches in length order."""
        order, size = self.train.by_length, self.cfg.batch
        window = min(len(order), 4 * size)
        start = int(torch.randint(0, len(order) - window + 1, (1,), generator=rng))
        pick = torch.randperm(window, generator=rng)[:size] + start
        return self.train.batch([order[i] for i in pick.tolist()])

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...], state: Any) -> StepOutput:
        src, lengths, tgt_in, tgt_out = batch
        logits, _ = model(src, lengths, tgt_in, teacher_forcing=self.cfg.teacher_forcing)
        loss = target_loss(logits, tgt_out, PAD, self.cfg.label_smoothing)
        return StepOutput(loss, None, int((tgt_out != PAD).sum()))

    def evaluate(self, model: nn.Module, full: bool) -> dict[str, float]:
        count = len(self.valid) if full else min(len(self.valid), self.cfg.eval_sentences)
        sources = [s for s, _ in self.valid_text[:count]]
        references = [t for _, t in self.valid_text[:count]]
        beam = self.cfg.beam if full else 1
        hypotheses = translate_texts(model, self.src_spm, self.tgt_spm, sources, self.cfg, beam)
        return {
            "loss": valid_loss(model, self.valid, self.cfg.batch),
            **bleu(hypotheses, references),
        }


def build_model(cfg: TranslateConfig, src_vocab: int, tgt_vocab: int) -> Seq2Seq:
    """Bidirectional encoder, attention decoder (see `TranslateConfig`)."""
    encoder = TextEncoder(src_vocab, cfg.embed, cfg.hidden, cfg.layers, cfg.cell, cfg.dropout,
                          cfg.decoder_hidden, cfg.decoder_layers, padding_idx=PAD)  # fmt: skip
    decoder = AttentionDecoder(tgt_vocab, cfg.embed, cfg.decoder_hidden, 2 * cfg.hidden,
                               cfg.decoder_layers, cfg.cell, cfg.attention, cfg.dropout,
                               padding_idx=PAD)  # fmt: skip
    return Seq2Seq(encoder, decoder, BOS, EOS, PAD)


def valid_loss(model: Seq2Seq, pairs: Pairs, batch: int) -> float:
    """Cross-entropy per target piece (nats), teacher forcing, no label smoothing."""
    order = pairs.by_length
    return teacher_forced_loss(
        model, (pairs.batch(order[i : i + batch]) for i in range(0, len(order), batch))
    )


def bleu(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """sacrebleu corpus BLEU (13a tokenisation of detokenised text) and chrF."""
    return {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
    }


@torch.no_grad()
def translate_ids(
    model: Seq2Seq, sources: list[list[int]], beam: int, max_len: int, length_penalty: float,
    batch: int = 64,
) -> list[list[Hypothesis]]:  # fmt: skip
    """The beam's hypotheses of each source (ids ending with EOS), best first, in order; beam 1
    is greedy decoding. Batched by length, and a sentence's translation does not depend on its
    batch-mates: an output which never ends is cut at 2 S + 10 pieces, S its own source's
    length (and at most ``max_len``). Each hypothesis's attention is (T, S)."""
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[Any] = [None] * len(sources)
    for first in range(0, len(order), batch):
        chosen = order[first : first + batch]
        lengths = torch.tensor([len(sources[i]) for i in chosen])
        limits = (2 * lengths + 10).clamp(max=max_len)
        src = pad_ids([sources[i] for i in chosen])
        found = model.beam_search(src, lengths, beam, limits, length_penalty)
        for i, hypotheses in zip(chosen, found):
            out[i] = hypotheses
    return out


def translate_texts(
    model: Seq2Seq, src_spm: Subword, tgt_spm: Subword, sentences: list[str],
    cfg: TranslateConfig, beam: int,
) -> list[str]:  # fmt: skip
    """Detokenised translations of ``sentences``."""
    sources = [src_spm.encode(s)[: cfg.max_len - 1] + [EOS] for s in sentences]
    found = translate_ids(model, sources, beam, 2 * cfg.max_len, cfg.length_penalty, cfg.batch)
    return [tgt_spm.decode(hypotheses[0].tokens) for hypotheses in found]


# --- trained runs: loading, translating, testing --------------------------------------------


def read_run(run_dir: str | Path, checkpoint: str = "best") -> TrainedRun[TranslateConfig]:
    """A translate run (`rnnkit.training.runs.load_run`), its source and target `Subword`
    models in ``parts[SRC_SPM]`` and ``parts[TGT_SPM]``."""

    def build(cfg: TranslateConfig, parts: dict[str, Any]) -> Seq2Seq:
        return build_model(cfg, len(parts[SRC_SPM]), len(parts[TGT_SPM]))

    files = {SRC_SPM: Subword.load, TGT_SPM: Subword.load}
    return load_run(run_dir, NAME, TranslateConfig, build, checkpoint, files=files)


class TranslatePredictor(Predictor):
    """A trained translate run: ``predict(["A dog runs.", ...], beam=None)`` -> a `Translation`
    per sentence (beam None: the run's beam size; 1: greedy decoding)."""

    task = NAME
    takes = "a sentence"

    def __init__(self, run_dir: str | Path, checkpoint: str = "best") -> None:
        run = read_run(run_dir, checkpoint)
        self.model, self.cfg = run.model, run.settings
        self.src_spm, self.tgt_spm = run.parts[SRC_SPM], run.parts[TGT_SPM]
        super().__init__(run_dir, run.config, checkpoint)

    def graph(self):
        """What `rnnkit export` records: the encoder and the decoder's step, which a client
        chains (`rnnkit.tasks.seq2seq_export`)."""
        from rnnkit.tasks.seq2seq_export import translate_chain

        return translate_chain(self)

    def encode(self, sentence: Any, number: int) -> list[int]:
        """The source ids the encoder reads: at most ``max_len`` - 1 pieces, then EOS."""
        if not isinstance(sentence, str):
            raise RnnkitError(f"a translate run translates sentences (str), got "
                              f"{type(sentence).__name__} (input {number})")  # fmt: skip
        if not sentence.strip():
            raise RnnkitError(f"input {number} is an empty sentence; there is nothing to "
                              "translate (remove empty lines)")  # fmt: skip
        return self.src_spm.encode(sentence)[: self.cfg.max_len - 1] + [EOS]

    def predict(self, inputs: Sequence[Any], beam: int | None = None) -> list[Translation]:
        """One `Translation` per sentence; the sentences run as batches of similar lengths."""
        sentences = check_inputs(inputs, self.takes)
        sources = [self.encode(s, n) for n, s in enumerate(sentences, 1)]
        beam, cfg = check_beam(beam, self.cfg.beam), self.cfg
        with torch.inference_mode():
            found = translate_ids(self.model, sources, beam, 2 * cfg.max_len, cfg.length_penalty,
                                  cfg.batch)  # fmt: skip
        target = self.tgt_spm
        return [
            translation_of(hypotheses, target.decode, functools.partial(piece_names, target),
                           piece_names(self.src_spm, ids))
            for ids, hypotheses in zip(sources, found)
        ]  # fmt: skip


def piece_names(subword: Subword, ids: list[int]) -> list[str]:
    """The subword pieces of ``ids`` ("▁A", "▁dog", "</s>", ...)."""
    return [subword.processor.id_to_piece(i) for i in ids]


def load_predictor(run_dir: str | Path, checkpoint: str = "best") -> TranslatePredictor:
    """The `TranslatePredictor` of a run (`rnnkit.load`)."""
    return TranslatePredictor(run_dir, checkpoint)


def translate(
    run_dir: str, text: str | None = None, file: str | None = None, reference: str | None = None,
    beam: int | None = None, plot: str | None = None, checkpoint: str = "best",
) -> str:  # fmt: skip
    """What `rnnkit translate` prints: the translation of ``text``, or of each line of ``file``
    (and, with a ``reference`` file, BLEU and chrF). ``plot``: a PNG of the attention of
    ``text`` (or of the file's first line)."""
    predictor = TranslatePredictor(run_dir, checkpoint)
    if (text is None) == (file is None):
        raise RnnkitError("give a sentence to translate, or --file FILE (not both)")
    if reference is not None and file is None:
        raise RnnkitError("--ref goes with --file: the reference translations of its lines")
    sentences = [text] if text is not None else read_lines(file, predictor.cfg.encoding)
    results = predictor.predict(sentences, beam)
    lines = [r.summary() for r in results]
    if reference is not None:
        refs = read_lines(reference, predictor.cfg.encoding)
        if len(refs) != len(results):
            raise RnnkitError(f"{reference} has {len(refs)} lines, {file} has {len(results)}")
        scores = bleu([r.text for r in results], refs)
        lines.append(f"BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f}  ({len(refs)} "
                     f"sentences, beam {check_beam(beam, predictor.cfg.beam)}, "
                     "sacrebleu 13a)")  # fmt: skip
    if plot is not None:
        plot_attention_of(results[0], plot, sentences[0])
    return "\n".join(lines)


def plot_attention_of(result: Translation, path: str | Path, title: str) -> Path:
    """Draw a translation's attention (T, S) with its source and target pieces as tick labels."""
    from rnnkit.diagnostics.plots import plot_attention

    source, target = result.source_tokens or [], result.target_tokens
    weights = torch.tensor(result.attention, dtype=torch.float32).reshape(len(target), len(source))
    return plot_attention(weights, source, target, path, title)


def test_report(task: Translate, run_dir: Path, checkpoint: str = "best") -> dict[str, Any]:
    """BLEU of ``checkpoint`` on the test files (beam search); writes ``test.json``."""
    run = read_run(run_dir, checkpoint)
    model, cfg = run.model, run.settings
    pairs = read_parallel(cfg.test_src, cfg.test_tgt, cfg.encoding)
    started = time.time()
    outputs = translate_texts(model, task.src_spm, task.tgt_spm, [s for s, _ in pairs], cfg,
                              cfg.beam)  # fmt: skip
    report = {f"test_{k}": v for k, v in bleu(outputs, [t for _, t in pairs]).items()}
    report.update(test_size=len(pairs), beam=cfg.beam, checkpoint=checkpoint,
                  decode_seconds=round(time.time() - started, 1))  # fmt: skip
    atomic_write_json(run_dir / "test.json", report)
    atomic_write_bytes(run_dir / "test-translations.txt", "\n".join(outputs).encode() + b"\n")
    return report


def train(
    flags: dict[str, Any], config_file: str | None = None, out: str | None = None,
    resume: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train (or resume) a translation model; then, if test files are set, score the best
    checkpoint on them. Returns the fit's summary (and the test report)."""
    made: list[Translate] = []

    def make_task(cfg: TranslateConfig) -> Translate:
        subwords = None
        if resume is not None:
            subwords = Subword.load(Path(resume) / SRC_SPM), Subword.load(Path(resume) / TGT_SPM)
        made.append(Translate(cfg, subwords))
        return made[-1]

    result = train_task(NAME, TranslateConfig, make_task, DEFAULT_TRAIN, flags, config_file, out,
                        resume)  # fmt: skip
    summary = {"run_dir": str(result.run_dir), "steps": result.step, "elapsed": result.elapsed,
               "stop_reason": result.stop_reason, "valid": result.final}  # fmt: skip
    if made[-1].cfg.test_src and result.stop_reason not in ("interrupted", "diverged"):
        summary.update(test_report(made[-1], result.run_dir))
    return summary


def format_report(summary: dict[str, Any]) -> str:
    """The lines `rnnkit train translate` prints at the end."""
    valid = summary.get("valid") or {}
    lines = [f"{summary['steps']} steps in {summary['elapsed'] / 60:.1f} min "
             f"({summary['stop_reason']}); run in {summary['run_dir']}"]  # fmt: skip
    if valid:
        lines.append(f"validation: loss {valid['loss']:.3f}  BLEU {valid['bleu']:.2f}  "
                     f"chrF {valid['chrf']:.2f}")  # fmt: skip
    if "test_bleu" in summary:
        lines.append(f"test: BLEU {summary['test_bleu']:.2f}  chrF {summary['test_chrf']:.2f} "
                     f"({summary['test_size']} sentences, beam {summary['beam']})")  # fmt: skip
    return "\n".join(lines)


SPEC = TaskSpec(
    NAME,
    "",
    TranslateConfig,
    DEFAULT_TRAIN,
    train,
    format_report,
    load_predictor,
    examples=(
        "rnnkit data fetch multi30k                    # once: the data set, sha256 checked",
        "rnnkit train translate --src multi30k/train.en.gz --tgt multi30k/train.de.gz \\",
        "  --valid-src multi30k/val.en.gz --valid-tgt multi30k/val.de.gz \\",
        "  --test-src multi30k/test_2016_flickr.en.gz \\",
        "  --test-tgt multi30k/test_2016_flickr.de.gz --out runs/en-de",
    ),
)
