"""Character-level (or word-level) language modelling on a text file.

Data: the first ``1 - valid_fraction`` of the file trains, the rest validates (by characters).
Model: `SequenceModel` with an embedding (token ids in, next-token logits out).
Training batches (``batching``):

- ``"random"`` (default): B windows of L tokens at random offsets, each from a zero state;
- ``"stream"``: truncated BPTT, B parallel streams read in consecutive chunks of L tokens, the
  state carried from chunk to chunk (`rnnkit.training.tbptt`).

Metric: cross-entropy of the next token in nats (and bits) per token, on the validation text cut
into consecutive windows of L tokens, each read from a zero state (``loss``: every validation
token scored once, as in training with random windows). The final evaluation also reports
``loss_carried``: the same text read as B long streams with the state carried across windows.
During training the validation loss is measured on the first ``eval_tokens`` validation tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.data.text import Vocab, read_text, split_train_valid
from rnnkit.errors import RnnkitError
from rnnkit.export import Graph
from rnnkit.io import atomic_write_json
from rnnkit.layers import IMPLS
from rnnkit.models.heads import check_sampling
from rnnkit.models.sequence import SequenceModel
from rnnkit.predictor import Predictor, Result, check_inputs
from rnnkit.tasks.common import format_fit, train_task
from rnnkit.tasks.spec import TaskSpec
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.distributed import World, shard_batch
from rnnkit.training.options import choice, path
from rnnkit.training.runs import TrainedRun, load_run
from rnnkit.training.tbptt import StreamBatches, stream_loss_sum
from rnnkit.training.trainer import FitResult, StepOutput, TrainConfig

NAME = "charlm"
VOCAB = "vocab.json"


@dataclass
class CharLMConfig:
    """Everything that rebuilds the data pipeline and the model (stored in config.json).

    Attributes:
        text: Text file to learn (or a data set: tiny-shakespeare): the first 90% trains, the
            last 10% validates.
        encoding: Encoding of the text file.
        unit: Token unit.
        valid_fraction: The end of the text that validates.
        min_count: Keep tokens seen this often; others become <unk>.
        max_vocab: Keep at most this many tokens (the most frequent); none: all.
        cell: The recurrent cell.
        embed: Embedding size.
        hidden: Hidden units per layer.
        layers: Recurrent layers.
        dropout: Dropout.
        weight_dropout: DropConnect on the recurrent weights (runs rnnkit's engine, not
            torch's kernel); 0: off.
        locked_dropout: One dropout mask per sequence, the same at every step.
        impl: The recurrence's implementation: rnnkit's BPTT engine, torch's kernel, or auto.
        seq_len: Time steps per training window.
        batch: Sequences per step.
        batching: random windows, or stream: truncated BPTT carrying the state.
        eval_tokens: Validation tokens scored at each evaluation (all of them at the end).
    """

    text: str = path()
    encoding: str = "utf-8"
    unit: str = choice("char", ("char", "word"))
    valid_fraction: float = 0.1
    min_count: int = 1
    max_vocab: int | None = None
    cell: str = choice("lstm", ("lstm", "gru", "rnn"))
    embed: int = 128
    hidden: int = 512
    layers: int = 3
    dropout: float = 0.3
    weight_dropout: float = 0.0
    locked_dropout: bool = False
    impl: str = choice("auto", IMPLS)
    seq_len: int = 128
    batch: int = 64
    batching: str = choice("random", ("random", "stream"))
    eval_tokens: int = 32768

    def check(self) -> None:
        if self.batching not in ("random", "stream"):
            raise RnnkitError(f"batching must be 'random' or 'stream', got {self.batching!r}")
        for name in ("embed", "hidden", "layers", "seq_len", "batch", "eval_tokens"):
            if getattr(self, name) < 1:
                raise RnnkitError(f"{name} must be a positive integer, got {getattr(self, name)}")


#: training defaults of `rnnkit train charlm` (a 15-minute budget on a 2-core CPU)
DEFAULT_TRAIN = TrainConfig(
    lr=3e-3,
    warmup_steps=20,
    clip=1.0,
    max_time=15 * 60,
    eval_every=100,
    log_every=10,
    min_lr_ratio=0.0,
    precision="auto",
)


class CharLM:
    """The task object the trainer drives (see `rnnkit.training.trainer`)."""

    name = NAME

    def __init__(self, config: CharLMConfig, vocab: Vocab | None = None) -> None:
        if not config.text:
            raise RnnkitError("no text to train on: give --text FILE (or text = ... in --config)")
        config.check()
        self.cfg = config
        text = read_text(config.text, config.encoding)
        train_text, valid_text = split_train_valid(text, config.valid_fraction)
        self.vocab = vocab or Vocab.build(train_text + valid_text, config.unit, config.min_count,
                                          config.max_vocab)  # fmt: skip
        self.train_ids = self.vocab.encode(train_text, f"the training part of {config.text}")
        self.valid_ids = self.vocab.encode(valid_text, f"the validation part of {config.text}")
        self._check_sizes()
        self.stream = None
        self.steps_per_epoch: int | None = None
        if config.batching == "stream":
            self.stream = StreamBatches(self.train_ids, config.batch, config.seq_len)
            self.steps_per_epoch = self.stream.steps_per_epoch
        else:
            tokens_per_step = config.batch * config.seq_len
            self.steps_per_epoch = max(1, self.train_ids.numel() // tokens_per_step)

    def _check_sizes(self) -> None:
        need = self.cfg.seq_len + 2
        for label, ids in (("training", self.train_ids), ("validation", self.valid_ids)):
            if ids.numel() < need:
                raise RnnkitError(
                    f"{self.cfg.text}: the {label} part has {ids.numel()} tokens, fewer than "
                    f"--seq-len + 2 = {need}; give a longer text or a smaller --seq-len"
                )

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def save_assets(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / VOCAB, self.vocab.to_json())

    def build_model(self) -> SequenceModel:
        return build_model(self.cfg, len(self.vocab))

    def shard_batch(self, batch: Any, world: World) -> Any:
        """Distributed training: this process's columns of the (L, B) windows (see
        `rnnkit.training.distributed`)."""
        return shard_batch(batch, world, dim=1)

    def train_batch(self, step: int, rng: torch.Generator) -> Any:
        """Random windows: (inputs, targets) (L, B); stream: a `StreamChunk` of (B, L)."""
        if self.stream is not None:
            return self.stream.chunk(step)
        L, B = self.cfg.seq_len, self.cfg.batch
        starts = torch.randint(0, self.train_ids.numel() - L, (B,), generator=rng)
        index = starts.unsqueeze(0) + torch.arange(L).unsqueeze(1)  # (L, B)
        return self.train_ids[index], self.train_ids[index + 1]

    def loss(self, model: nn.Module, batch: Any, state: Any) -> StepOutput:
        if self.stream is None:
            inputs, targets = batch
            state = None
        else:
            inputs, targets = batch.inputs.t(), batch.targets.t()  # (L, B)
            state = None if batch.first else state
        logits, state = model(inputs, state)  # (L, B, V)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return StepOutput(loss, state if self.stream is not None else None, targets.numel())

    def evaluate(self, model: nn.Module, full: bool) -> dict[str, float]:
        ids = self.valid_ids if full else self.valid_ids[: self.cfg.eval_tokens + 1]
        return evaluate_ids(model, ids, self.cfg, carried=full)


def build_model(cfg: CharLMConfig, vocab_size: int) -> SequenceModel:
    """The language model of ``cfg``: embedding, recurrent layers, a head over the vocabulary."""
    options = {"weight_dropout": cfg.weight_dropout} if cfg.weight_dropout else {}
    return SequenceModel(cfg.cell, vocab_size, cfg.hidden, vocab_size, num_layers=cfg.layers,
                         dropout=cfg.dropout, impl=cfg.impl, embedding_size=cfg.embed,
                         locked_dropout=cfg.locked_dropout, **options)  # fmt: skip


def window_loss_sum(model: nn.Module, ids: Tensor, seq_len: int, batch: int) -> tuple[float, int]:
    """Sum of next-token losses (nats) and their count over ``ids`` (N,), cut into consecutive
    windows of ``seq_len`` each read from a zero state; every token after the first is scored."""
    n_windows = math.ceil((ids.numel() - 1) / seq_len)
    total = 0.0
    for first in range(0, n_windows, batch):
        spans = [(w * seq_len, min((w + 1) * seq_len, ids.numel() - 1))
                 for w in range(first, min(first + batch, n_windows))]  # fmt: skip
        for length in sorted({b - a for a, b in spans}):  # the last window may be shorter
            group = [a for a, b in spans if b - a == length]
            index = torch.tensor(group).unsqueeze(0) + torch.arange(length).unsqueeze(1)  # (L, B)
            logits, _ = model(ids[index])
            loss = nn.functional.cross_entropy(
                logits.flatten(0, 1), ids[index + 1].flatten(), reduction="sum"
            )
            total += float(loss)
    return total, ids.numel() - 1


def evaluate_ids(
    model: nn.Module, ids: Tensor, cfg: CharLMConfig, carried: bool
) -> dict[str, float]:
    """Validation metrics of ``ids`` (N,): ``loss`` (nats/token, windows from a zero state),
    ``bits``, ``perplexity``; with ``carried`` also ``loss_carried`` and ``bits_carried``."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total, count = window_loss_sum(model, ids, cfg.seq_len, cfg.batch)
        out = _named(total / count, "")
        if carried:
            time_major = _BatchFirst(model)
            total, count = stream_loss_sum(time_major, ids, cfg.batch, cfg.seq_len)
            out.update(_named(total / count, "_carried"))
    model.train(was_training)
    return out


def _named(loss: float, suffix: str) -> dict[str, float]:
    named = {f"loss{suffix}": loss, f"bits{suffix}": loss / math.log(2)}
    if not suffix:
        named["perplexity"] = math.exp(min(loss, 50.0))
    return named


class _BatchFirst(nn.Module):
    """Adapts the time-major model to `stream_loss_sum`'s (B, L) ids and (B, L, V) logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        logits, state = self.model(ids.t(), state)
        return logits.transpose(0, 1), state


# --- rebuilding a trained run (rnnkit sample / eval) --------------------------------------------


def read_run(run_dir: str | Path, checkpoint: str = "last") -> TrainedRun[CharLMConfig]:
    """A charlm run (`rnnkit.training.runs.load_run`), its `Vocab` in ``parts[VOCAB]``.

    ``checkpoint``: "last" (model.safetensors) or "best" (best.safetensors, the best periodic
    validation loss).
    """
    build = lambda cfg, parts: build_model(cfg, len(parts[VOCAB]))  # noqa: E731
    return load_run(run_dir, NAME, CharLMConfig, build, checkpoint, files={VOCAB: Vocab.load})


# --- a trained run answering prompts (rnnkit.load) --------------------------------------------

#: prompts run together in one forward pass (`CharLMPredictor.next_tokens`, ``predict``)
PROMPT_BATCH = 64


@dataclass
class Generation(Result):
    """Text generated after a prompt.

    Fields: ``text`` (the generated text, without the prompt), ``prompt`` (the prompt as given;
    "" when none was given and the text continues the run's default start, a line break) and
    ``tokens`` (how many characters or words, per the run's unit, were generated).
    """

    text: str
    prompt: str
    tokens: int

    def summary(self) -> str:
        """The prompt and its continuation: what ``rnnkit sample`` prints."""
        return self.prompt + self.text


@dataclass
class Token(Result):
    """One generated token: its ``text`` (as it reads after the text before it: a word with
    its leading space), its ``probability`` under the model given everything before it (the
    softmax of the logits, before temperature, top-k and top-p), and ``step`` (0 for the first
    token after the prompt)."""

    text: str
    probability: float
    step: int

    def summary(self) -> str:
        return f"{self.step}: {self.text!r} {self.probability:.3f}"


@dataclass
class NextTokens(Result):
    """The likeliest next tokens after ``prompt``: ``tokens`` (k characters or words, per the
    run's unit, as the vocabulary spells them) and their ``probabilities`` (k floats, the model's
    probability of each given the prompt), likeliest first."""

    prompt: str
    tokens: list[str]
    probabilities: list[float]

    def summary(self) -> str:
        return "  ".join(f"{t!r} {p:.3f}" for t, p in zip(self.tokens, self.probabilities))


class CharLMPredictor(Predictor):
    """A trained language model: ``generate`` / ``stream`` text after a prompt, ``next_tokens``
    for the likeliest continuations; ``predict(prompts)`` generates with the defaults.

    Every call draws with its own generator (seeded by ``seed``) and carries its own recurrent
    state, so one predictor serves any number of threads; the same seed gives the same text
    as ``rnnkit sample RUN --prompt P --length N --seed S``.
    """

    task = NAME
    takes = "a prompt (text to continue)"

    def __init__(self, run_dir: str | Path, checkpoint: str = "best") -> None:
        run = read_run(run_dir, checkpoint)
        self.model, self.vocab, self.cfg = run.model, run.parts[VOCAB], run.settings
        super().__init__(run_dir, run.config, checkpoint)

    @property
    def default_start(self) -> str:
        """What a missing prompt reads: a line break (if the vocabulary has one)."""
        return "\n" if "\n" in self.vocab.index else self.vocab.tokens[0]

    def graph(self) -> Graph:
        """What `rnnkit export` records: `export_graph`."""
        return export_graph(self)

    def encode(self, prompt: str | None) -> Tensor:
        """The (T,) token ids of ``prompt`` (None: `default_start`), T >= 1."""
        if prompt is None:
            prompt = self.default_start
        if not isinstance(prompt, str):
            raise RnnkitError(f"a charlm run continues text prompts, got {type(prompt).__name__}")
        ids = self.vocab.encode(prompt, "the prompt")
        if ids.numel() == 0:
            raise RnnkitError(f"the prompt {prompt!r} has no tokens; give some text")
        return ids

    def stream(
        self,
        prompt: str | None,
        max_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 40,
        top_p: float | None = None,
        seed: int = 1,
    ) -> Iterator[Token]:
        """The tokens `generate` returns, each as soon as it is drawn (the prompt read once,
        then one step per token with the state carried). Bad arguments raise here, before
        the first token."""
        ids = self.encode(prompt)
        _check_generation(max_tokens, temperature, top_k, top_p, seed)
        steps = self._steps([ids], max_tokens, temperature, top_k, top_p, [seed])
        return (Token(texts[0], float(probs[0]), step) for step, (texts, probs) in enumerate(steps))

    def generate(
        self,
        prompt: str | None,
        max_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 40,
        top_p: float | None = None,
        seed: int = 1,
    ) -> Generation:
        """``max_tokens`` tokens drawn after ``prompt`` (None: after `default_start`, and
        ``prompt`` "" in the result). ``temperature`` 0 picks the likeliest token; ``top_k`` /
        ``top_p`` (None: off) restrict sampling to the k likeliest tokens / the nucleus of mass
        p; ``seed`` fixes the draws."""
        _check_generation(max_tokens, temperature, top_k, top_p, seed)
        return self._generate([prompt], max_tokens, temperature, top_k, top_p, seed)[0]

    def predict(self, inputs: Sequence[str]) -> list[Generation]:
        """`generate` with its defaults for each prompt, the prompts run as batches."""
        return self._generate(check_inputs(inputs, self.takes), 200, 0.8, 40, None, 1)

    def parse(self, args: Sequence[str]) -> list[str]:
        """Each command-line argument is a prompt."""
        return super().parse(args)

    def next_tokens(self, prompts: Sequence[str], k: int = 5) -> list[NextTokens]:
        """Per prompt the ``k`` likeliest next tokens and their probabilities (all tokens of
        the vocabulary if it has fewer than k); the prompts run as batches with lengths."""
        prompts = check_inputs(prompts, self.takes)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RnnkitError(f"k must be a positive integer, got {k!r}")
        encoded = [self.encode(p) for p in prompts]
        results: list[NextTokens | None] = [None] * len(prompts)
        with torch.inference_mode():
            for chunk in _batches(encoded):
                ids, lengths = _pad([encoded[i] for i in chunk])
                logits, _ = self.model(ids, lengths=lengths)  # (T, B, V)
                last = logits[lengths - 1, torch.arange(len(chunk))]  # (B, V)
                top = last.float().softmax(-1).topk(min(k, len(self.vocab)), dim=-1)
                for column, i in enumerate(chunk):
                    tokens = [self.vocab.tokens[int(t)] for t in top.indices[column]]
                    probs = [float(p) for p in top.values[column]]
                    results[i] = NextTokens(prompts[i] or "", tokens, probs)
        return results

    def _generate(
        self, prompts: list, max_tokens: int, temperature: float, top_k, top_p, seed: int
    ) -> list[Generation]:
        """`generate` for several prompts, run as batches (each with its own generator)."""
        encoded = [self.encode(p) for p in prompts]
        texts: list[list[str]] = [[] for _ in prompts]
        for chunk in _batches(encoded):
            steps = self._steps([encoded[i] for i in chunk], max_tokens, temperature, top_k,
                                top_p, [seed] * len(chunk))  # fmt: skip
            for pieces, _ in steps:
                for column, i in enumerate(chunk):
                    texts[i].append(pieces[column])
        return [Generation("".join(t), p or "", len(t)) for t, p in zip(texts, prompts)]

    @torch.inference_mode()
    def _steps(
        self, prompts: list[Tensor], max_tokens: int, temperature: float, top_k, top_p,
        seeds: list[int],
    ) -> Iterator[tuple[list[str], Tensor]]:  # fmt: skip
        """Per step, each prompt's new token as text and its probability (B,); prompts (T_b,)
        run as one batch with lengths, each column drawn with its own seeded generator."""
        ids, lengths = _pad(prompts)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        previous = [int(p[-1]) for p in prompts]
        steps = self.model.stream(ids, max_tokens, temperature, top_k, top_p, generators,
                                  lengths=lengths)  # fmt: skip
        for tokens, logits in steps:
            probs = logits.float().softmax(-1).gather(1, tokens.unsqueeze(1)).squeeze(1)
            pieces = [self._piece(a, int(b)) for a, b in zip(previous, tokens)]
            previous = tokens.tolist()
            yield pieces, probs

    def _piece(self, previous: int, token: int) -> str:
        """The text ``token`` adds after ``previous`` (a word's leading space included)."""
        return self.vocab.decode([previous, token])[len(self.vocab.decode([previous])) :]


def _check_generation(max_tokens: int, temperature: float, top_k, top_p, seed: int) -> None:
    """RnnkitError for generation settings outside their ranges."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise RnnkitError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RnnkitError(f"seed must be an integer, got {seed!r}")
    check_sampling(temperature, top_k, top_p)


def _pad(prompts: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Prompts (T_b,) -> ids (T, B) padded with zeros, lengths (B,)."""
    return nn.utils.rnn.pad_sequence(prompts), torch.tensor([len(p) for p in prompts])


def _batches(encoded: list[Tensor]) -> Iterator[list[int]]:
    """Indices of ``encoded`` in batches of `PROMPT_BATCH` of similar lengths."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), PROMPT_BATCH):
        yield order[start : start + PROMPT_BATCH]


def load_predictor(run_dir: str | Path, checkpoint: str = "best") -> CharLMPredictor:
    """The `CharLMPredictor` of a run (`rnnkit.load`)."""
    return CharLMPredictor(run_dir, checkpoint)


class _StepGraph(nn.Module):
    """The language model as a streaming client runs it: (ids (T, B), state) -> (logits
    (T, B, V), state), the state h (L, B, H) and for an LSTM c (L, B, H) in and out."""

    def __init__(self, model: SequenceModel, lstm: bool) -> None:
        super().__init__()
        self.model, self.lstm = model, lstm

    def forward(self, ids: Tensor, *state: Tensor):
        logits, final = self.model(ids, tuple(state) if self.lstm else state[0])
        return (logits, *final) if self.lstm else (logits, final)


def export_graph(predictor: CharLMPredictor) -> Graph:
    """What `rnnkit export` records of a charlm run (`_StepGraph`: feed a prompt, then one token
    at a time with the state carried), checked on windows of the run's own text, each entered
    with the state its preceding text leaves."""
    model, cfg, vocab = predictor.model, predictor.cfg, predictor.vocab
    try:
        text = read_text(cfg.text, cfg.encoding)[:20000]
    except RnnkitError as err:
        raise RnnkitError(f"the export is checked on the run's text: {err}") from None
    ids = vocab.encode(text, "the run's text")
    lstm = cfg.cell == "lstm"
    names = ["h", "c"] if lstm else ["h"]

    def samples(steps: int) -> dict[str, Tensor]:
        """Three windows of ``steps`` tokens, each after 16 tokens that set its state."""
        stream = ids.repeat(-(-3 * (steps + 16) // len(ids)))  # the text again where short
        starts = [16 + k * (steps + 16) for k in range(3)]
        with torch.no_grad():
            _, state = model(torch.stack([stream[s - 16 : s] for s in starts], 1))
        windows = torch.stack([stream[s : s + steps] for s in starts], 1)
        return dict(zip(["ids", *names], (windows, *(state if lstm else (state,)))))

    axes = {"ids": {0: "T", 1: "B"}, "logits": {0: "T", 1: "B"}}
    axes.update({n: {1: "B"} for n in names} | {f"{n}_n": {1: "B"} for n in names})
    metadata = {"vocabulary": vocab.tokens, "unit": vocab.unit, "unk": vocab.unk,
                "state": names, "cell": cfg.cell}  # fmt: skip
    outputs = ["logits", *(f"{n}_n" for n in names)]
    return Graph(_StepGraph(model, lstm), samples(7), outputs, axes, metadata, samples,
                 f"the run's text ({cfg.text})")  # fmt: skip


# --- what the command line calls --------------------------------------------------------------


def train(
    flags: dict[str, Any],
    config_file: str | None = None,
    out: str | None = None,
    resume: str | None = None,
) -> FitResult:
    """Train (or resume) a language model from command-line ``flags`` (None: not given), a TOML
    ``config_file`` and the defaults; returns how training ended. A resumed run keeps its own
    vocabulary."""

    def make_task(cfg: CharLMConfig) -> CharLM:
        return CharLM(cfg, Vocab.load(Path(resume) / VOCAB) if resume is not None else None)

    return train_task(NAME, CharLMConfig, make_task, DEFAULT_TRAIN, flags, config_file, out,
                      resume)  # fmt: skip


def sample(
    run_dir: str,
    prompt: str | None = None,
    length: int = 500,
    temperature: float = 0.8,
    top_k: int | None = 40,
    top_p: float | None = None,
    seed: int = 1,
    checkpoint: str = "last",
) -> Iterator[str]:
    """Yield the prompt, then the text of each generated token as soon as it is drawn.

    The default prompt is a line break (if the vocabulary has one), which is not echoed.
    """
    predictor = CharLMPredictor(run_dir, checkpoint)
    if length < 0:
        raise RnnkitError(f"--length must be >= 0, got {length}")
    tokens = predictor.stream(prompt, length, temperature, top_k, top_p, seed)
    if prompt is not None:
        yield prompt
    for token in tokens:
        yield token.text


def evaluate_file(
    run_dir: str, text: str, encoding: str = "utf-8", split: str = "all", checkpoint: str = "last"
) -> dict[str, float]:
    """Metrics of a trained run on a text file (``split``: "all" of it, or its "valid" part as
    cut in training); see `evaluate_ids`. Adds ``tokens``."""
    run = read_run(run_dir, checkpoint)
    model, vocab, cfg = run.model, run.parts[VOCAB], run.settings
    content = read_text(text, encoding)
    if split not in ("all", "valid"):
        raise RnnkitError(f"split must be 'all' or 'valid', got {split!r}")
    if split == "valid":
        content = split_train_valid(content, cfg.valid_fraction)[1]
    ids = vocab.encode(content, str(text))
    if ids.numel() < 2:
        raise RnnkitError(f"{text} has fewer than 2 tokens; nothing to predict")
    return {**evaluate_ids(model, ids, cfg, carried=True), "tokens": float(ids.numel() - 1)}


def eval_report(run_dir: str, metrics: dict[str, float]) -> str:
    """Two lines for `rnnkit eval`: loss per token in nats and bits, windowed and carried."""
    unit = ckpt.read_config(run_dir)["task_config"].get("unit", "char")
    per = "char" if unit == "char" else "word"
    return (
        f"{int(metrics['tokens'])} {per}s: loss {metrics['loss']:.4f} nats/{per} "
        f"({metrics['bits']:.4f} bits/{per}), perplexity {metrics['perplexity']:.3f}, "
        f"windows of {ckpt.read_config(run_dir)['task_config']['seq_len']} from a zero state\n"
        f"state carried through the text: {metrics['loss_carried']:.4f} nats/{per} "
        f"({metrics['bits_carried']:.4f} bits/{per})"
    )


SPEC = TaskSpec(
    NAME,
    "",
    CharLMConfig,
    DEFAULT_TRAIN,
    train,
    format_fit,
    load_predictor,
    examples=(
        "rnnkit data fetch tiny-shakespeare            # once: the data set, sha256 checked",
        "rnnkit train charlm --text tiny-shakespeare --out runs/shakespeare",
        "rnnkit train charlm --text notes.txt --cell gru --hidden-size 256 --max-time 5m",
        "rnnkit train charlm --config charlm.toml --seed 2     # flags override the file",
        "rnnkit train charlm --resume runs/shakespeare --max-time 20m",
    ),
)
