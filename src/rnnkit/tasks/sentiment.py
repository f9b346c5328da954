"""Sentiment (and any text classification): labelled sentences -> classes.

Data: `rnnkit.data.labelled` (the MR files, a CSV/TSV with a text and a label column, or a folder
per class). The examples are dealt into ``folds`` stratified folds (seed ``split_seed``); fold
``fold`` is the test set, and ``valid_fraction`` of the rest validates (best checkpoint, early
stopping). With ``--cv`` every fold is the test set once (k-fold cross-validation).
Tokens: words and punctuation (`rnnkit.data.text.tokenize_words`), lower-cased by default; the
vocabulary keeps the training part's words seen ``min_count`` times or more, the rest map to
``<unk>``; it is saved with the run as ``vocab.json``.
Model: `SequenceClassifier` on word embeddings (no pretrained vectors), trained from scratch.
Metric: accuracy (and the cross-entropy loss) on the test fold.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnkit.data.batching import stratified_folds
from rnnkit.data.labelled import read_labelled
from rnnkit.data.text import Vocab, tokenize_words
from rnnkit.errors import RnnkitError
from rnnkit.io import atomic_write_json
from rnnkit.models.classifier import POOLINGS
from rnnkit.tasks import classify
from rnnkit.tasks.classify import ClassifierSettings, ClassifyTask, Split
from rnnkit.tasks.common import stamp
from rnnkit.tasks.spec import Flag, TaskSpec
from rnnkit.training.options import choice, path
from rnnkit.training.runs import load_run
from rnnkit.training.trainer import TrainConfig

NAME = "sentiment"
VOCAB = "vocab.json"


@dataclass
class SentimentConfig(ClassifierSettings):
    """Everything that rebuilds the data split and the model (stored in config.json).

    Attributes:
        data: MR folder (rt-polarity.pos/.neg), a CSV/TSV, a folder per class, or a data set.
        text_col: CSV/TSV: the text column.
        label_col: CSV/TSV: the label column.
        encoding: Encoding of the files.
        lowercase: Lowercase the texts.
        min_count: Keep words seen this often; others become <unk>.
        max_vocab: Keep at most this many words (the most frequent).
        embed: Word embedding size.
        word_dropout: Training words turned <unk> at this rate; 0: off.
        folds: Stratified folds.
        fold: The fold that tests (one run).
        split_seed: Seed of the folds and of the validation part.
    """

    data: str = path("mr")
    text_col: str = "text"
    label_col: str = "label"
    encoding: str = "utf-8"
    lowercase: bool = True
    min_count: int = 2
    max_vocab: int = 30000
    embed: int = 300
    word_dropout: float = 0.0
    folds: int = 10
    fold: int = 0
    split_seed: int = 0
    hidden: int = 100
    batch: int = 50
    bucket: int = 4
    pooling: str = choice("attention", POOLINGS)
    dropout: float = 0.5

    def check(self) -> None:
        self.check_model()
        if not self.data:
            raise RnnkitError("no texts to train on: give --data (a CSV/TSV file, a folder or a "
                              "data set: mr)")  # fmt: skip
        if self.folds < 2 or not 0 <= self.fold < self.folds:
            raise RnnkitError(f"need folds >= 2 and 0 <= fold < folds, got fold {self.fold} of "
                              f"{self.folds}")  # fmt: skip
        if self.min_count < 1 or self.max_vocab < 2 or self.embed < 1:
            raise RnnkitError("min_count and embed must be >= 1, max_vocab >= 2")
        if not 0.0 <= self.word_dropout < 1.0:
            raise RnnkitError(f"word_dropout must be in [0, 1), got {self.word_dropout}")


#: training defaults of `rnnkit train sentiment` (MR: 9,596 training sentences per fold)
DEFAULT_TRAIN = TrainConfig(lr=4e-3, weight_decay=0.01, warmup_steps=50, clip=1.0,
                            max_epochs=8, eval_every=60, log_every=20, patience=8,
                            monitor="accuracy", monitor_mode="max")  # fmt: skip


def words(text: str, lowercase: bool) -> list[str]:
    """The tokens of one text."""
    return tokenize_words(text.lower() if lowercase else text)


def encode(vocab: Vocab, text: str, lowercase: bool) -> torch.Tensor:
    """(T,) token ids of ``text``; an empty text (no words) is a `RnnkitError`."""
    if not text.strip():
        raise RnnkitError("the text is empty; give a sentence to classify")
    return vocab.encode(text.lower() if lowercase else text)


def make_task(cfg: SentimentConfig) -> ClassifyTask:
    """Read and split the data, build the vocabulary on the training part, encode."""
    cfg.check()
    data = read_labelled(cfg.data, cfg.text_col, cfg.label_col, cfg.encoding)
    folds = stratified_folds(data.labels, cfg.folds, cfg.split_seed)
    texts = {"test": [], "rest": []}
    for text, label, f in zip(data.texts, data.labels, folds):
        texts["test" if f == cfg.fold else "rest"].append((text, label))
    rest = Split(list(range(len(texts["rest"]))), torch.tensor([y for _, y in texts["rest"]]))
    train, valid = classify.hold_out(rest, cfg.valid_fraction, cfg.split_seed + 1)
    counts = Counter(w for i in train.items for w in words(texts["rest"][i][0], cfg.lowercase))
    vocab = Vocab.from_counts(counts, cfg.min_count, cfg.max_vocab)

    def encoded(pairs: list[tuple[str, int]], index: list[int] | None = None) -> Split:
        chosen = [pairs[i] for i in index] if index is not None else pairs
        items = [encode(vocab, t, cfg.lowercase) for t, _ in chosen]
        return Split(items, torch.tensor([y for _, y in chosen], dtype=torch.long))

    splits = {
        "train": encoded(texts["rest"], train.items),
        "valid": encoded(texts["rest"], valid.items),
        "test": encoded(texts["test"]),
    }

    def save_vocab(run_dir: Path) -> None:
        atomic_write_json(run_dir / VOCAB, vocab.to_json())

    model_input = {"vocab_size": len(vocab), "embed": cfg.embed}
    augment = word_dropout(vocab.index[vocab.unk], cfg.word_dropout) if cfg.word_dropout else None
    return ClassifyTask(NAME, cfg, model_input, data.classes, splits, augment, save_vocab)


def word_dropout(unk: int, rate: float) -> classify.Augment:
    """Word dropout (Iyyer et al. 2015): each training word becomes ``unk`` with ``rate``."""

    def drop(ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return ids.masked_fill(torch.rand(ids.shape, generator=generator) < rate, unk)

    return drop


def train(
    flags: dict[str, Any], config_file: str | None = None, out: str | None = None,
    resume: str | None = None, cv: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Train and test one fold (a run), or with ``cv`` every fold into ``out`` (default
    runs/sentiment-cv-DATE-TIME) and summarise; returns the test report or the summary."""

    def run(extra: dict[str, Any], run_out: str | None) -> dict[str, Any]:
        values = {**flags, **extra}
        return classify.train_and_test(NAME, SentimentConfig, make_task, DEFAULT_TRAIN, values,
                                       config_file, run_out, resume)  # fmt: skip

    if not cv:
        return run({}, out)
    if resume is not None or flags.get("fold") is not None:
        raise RnnkitError("--cv trains every fold anew: drop --resume and --fold")
    folds = flags.get("folds") or SentimentConfig.folds
    base = Path(out) if out else Path("runs") / stamp("sentiment-cv")
    return classify.partitioned({f"fold-{k:02d}": k for k in range(folds)}, "fold", base, run)


def _class_names(saved: Any) -> list[str]:
    if not (isinstance(saved, list) and saved and all(isinstance(c, str) for c in saved)):
        raise RnnkitError("no list of class names")
    return saved


class SentimentPredictor(classify.ClassifierPredictor):
    """A trained sentiment run: ``predict(["a text", ...])`` -> a `Classification` per text,
    with the attention weight of each word (``tokens``) for a run that pools by attention."""

    task = NAME
    takes = "a text"

    def __init__(self, run_dir: str | Path, checkpoint: str = "best") -> None:
        def build(cfg: SentimentConfig, parts: dict[str, Any]) -> torch.nn.Module:
            classes, words = len(parts["classes"]), len(parts[VOCAB])
            return classify.build_classifier(cfg, classes, vocab_size=words, embed=cfg.embed)

        run = load_run(run_dir, NAME, SentimentConfig, build, checkpoint,
                       files={VOCAB: Vocab.load}, entries={"classes": _class_names})  # fmt: skip
        self.vocab, self.cfg = run.parts[VOCAB], run.settings
        super().__init__(run_dir, run.config, checkpoint, run.model, run.parts["classes"])

    def encode_input(self, item: Any) -> tuple[torch.Tensor, list[str]]:
        if not isinstance(item, str):
            raise RnnkitError(f"a sentiment run classifies texts, got {type(item).__name__}")
        ids = encode(self.vocab, item, self.cfg.lowercase)
        return ids, words(item, self.cfg.lowercase)

    def unknown(self, x: torch.Tensor) -> list[bool]:
        unk = self.vocab.index[self.vocab.unk]
        return [i == unk for i in x.tolist()]

    def graph(self) -> classify.Graph:
        """What `rnnkit export` records: (ids (T, B), lengths (B,)) -> probabilities (B, C)
        and attention (T, B), checked on the run's own texts where its data is here."""
        try:
            texts = read_labelled(self.cfg.data, self.cfg.text_col, self.cfg.label_col,
                                  self.cfg.encoding).texts[:64]  # fmt: skip
            source = f"the run's texts ({self.cfg.data})"
        except (RnnkitError, OSError):
            texts = [" ".join(self.vocab.tokens[1:40])]
            source = f"the run's vocabulary (its data {self.cfg.data} is not here)"
        examples = [x for t in texts if (x := self._ids(t)) is not None]
        words_of = "words and punctuation (rnnkit.data.text.tokenize_words)"
        tokenizer = {"lowercase": self.cfg.lowercase, "unit": "word", "tokens": words_of}
        vocabulary = {"vocabulary": self.vocab.tokens, "unk": self.vocab.unk}
        return classify.classifier_graph(self, examples, source,
                                         {**vocabulary, "tokenizer": tokenizer})  # fmt: skip

    def _ids(self, text: str) -> torch.Tensor | None:
        """The ids of a text of the run's data, None for one without words."""
        return encode(self.vocab, text, self.cfg.lowercase) if text.strip() else None


def load_predictor(run_dir: str | Path, checkpoint: str = "best") -> SentimentPredictor:
    """The `SentimentPredictor` of a run (`rnnkit.load`)."""
    return SentimentPredictor(run_dir, checkpoint)


SPEC = TaskSpec(
    NAME,
    "",
    SentimentConfig,
    DEFAULT_TRAIN,
    train,
    classify.format_result,
    load_predictor,
    out=f"runs/{NAME}-DATE-TIME; with --cv, the folder of its runs runs/sentiment-cv-DATE-TIME",
    extras=(Flag("cv", "Cross-validate: every fold tests once (runs in --out); mean and std."),),
    examples=(
        "rnnkit data fetch mr                          # once: the data set, sha256 checked",
        "rnnkit train sentiment --out runs/mr          # --data mr",
        "rnnkit train sentiment --cv --out runs/mr-cv",
        "rnnkit train sentiment --data reviews.csv --text-col review --label-col stars",
    ),
)
