"""What the sequence-classification tasks share (sentiment, speech-digits): the model settings,
the task object the trainer drives, test evaluation with a confusion matrix, and partitioned
evaluation (k-fold cross-validation, leave-one-speaker-out) reporting mean and std.

A task module gives `ClassifyTask` its examples, already encoded: ``train``, ``valid`` and
``test`` lists of (T,) token ids or (T, F) features with their labels, the class names, and
optionally an augmentation applied to each training example. Validation (a held-out part of the
training data) drives the best checkpoint and early stopping; the test part is scored once at the
end, with the best checkpoint (`test_report`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.data.batching import draw_batch, pad, stratified_folds
from rnnkit.errors import RnnkitError
from rnnkit.export import Graph, ragged_batch
from rnnkit.io import atomic_write_json
from rnnkit.layers import IMPLS
from rnnkit.models.backbone import CELLS
from rnnkit.models.classifier import POOLINGS, SequenceClassifier
from rnnkit.predictor import Predictor, Result, check_inputs
from rnnkit.tasks.common import train_task
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.options import choice
from rnnkit.training.trainer import StepOutput, TrainConfig

EVAL_BATCH = 256
Augment = Callable[[Tensor, torch.Generator], Tensor]


@dataclass
class ClassifierSettings:
    """The model and batching settings every classification task has (flags of the same names).

    Attributes:
        cell: The recurrent cell.
        hidden: Hidden units per direction.
        layers: Recurrent layers.
        bidirectional: Read the sequence both ways.
        pooling: How the steps' outputs become one vector: the last step's, their mean, their
            maximum, or an attention-weighted sum.
        dropout: Dropout (inputs, between layers, head).
        impl: The recurrence's implementation: rnnkit's BPTT engine, torch's kernel, or auto.
        batch: Examples per step.
        bucket: Draw a batch among BUCKET x batch examples of similar length; 0: any lengths.
        valid_fraction: Training part held out to validate.
    """

    cell: str = choice("lstm", tuple(CELLS))
    hidden: int = 128
    layers: int = 1
    bidirectional: bool = True
    pooling: str = choice("max", POOLINGS)
    dropout: float = 0.3
    impl: str = choice("auto", IMPLS)
    batch: int = 32
    bucket: int = 0
    valid_fraction: float = 0.1

    def check_model(self) -> None:
        if self.cell not in CELLS:
            raise RnnkitError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.pooling not in POOLINGS:
            raise RnnkitError(f"pooling must be one of {', '.join(POOLINGS)}, got "
                              f"{self.pooling!r}")  # fmt: skip
        if self.bucket < 0:
            raise RnnkitError(f"bucket must be >= 0 (0: batches of any lengths), got {self.bucket}")
        for name in ("hidden", "layers", "batch"):
            if getattr(self, name) < 1:
                raise RnnkitError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 < self.valid_fraction < 0.5:
            raise RnnkitError("dropout must be in [0, 1) and valid_fraction in (0, 0.5)")


@dataclass
class Split:
    """Encoded examples and their labels (N,)."""

    items: list[Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, index: list[int]) -> Split:
        return Split([self.items[i] for i in index], self.labels[index])


def hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, held out): a stratified ``fraction`` of ``split`` held out (at least one)."""
    folds = max(2, round(1 / fraction))
    fold = stratified_folds(split.labels.tolist(), folds, seed)
    keep = [i for i, f in enumerate(fold) if f != 0]
    held = [i for i, f in enumerate(fold) if f == 0]
    return split.subset(keep), split.subset(held)


class ClassifyTask:
    """A sequence-classification task for the trainer (see `rnnkit.training.trainer`)."""

    def __init__(
        self, name: str, settings: Any, model_input: dict[str, int], classes: list[str],
        data: dict[str, Split], augment: Augment | None = None,
        assets: Callable[[Path], None] | None = None,
    ) -> None:  # fmt: skip
        self.name, self.settings, self.classes = name, settings, classes
        self.model_input, self.data, self.augment, self.assets = model_input, data, augment, assets
        for split in ("train", "valid"):
            if len(data[split]) == 0:
                raise RnnkitError(f"the {split} set is empty; give more examples")
        self.steps_per_epoch = math.ceil(len(data["train"]) / settings.batch)
        train = data["train"].items
        self.by_length = sorted(range(len(train)), key=lambda i: len(train[i]))

    def config(self) -> dict[str, Any]:
        return {**asdict(self.settings), "classes": self.classes}

    def save_assets(self, run_dir: Path) -> None:
        if self.assets is not None:
            self.assets(run_dir)

    def build_model(self) -> SequenceClassifier:
        return build_classifier(self.settings, len(self.classes), **self.model_input)

    def train_batch(self, step: int, rng: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``batch`` random training examples (augmented): x, lengths, labels (B,)."""
        train = self.data["train"]
        index = draw_batch(self.by_length, self.settings.batch, self.settings.bucket, rng)
        items = [train.items[i] for i in index]
        if self.augment is not None:
            items = [self.augment(x, rng) for x in items]
        return (*pad(items), train.labels[index])

    def loss(self, model: nn.Module, batch: Any, state: Any) -> StepOutput:
        x, lengths, labels = batch
        loss = nn.functional.cross_entropy(model(x, lengths), labels)
        return StepOutput(loss, tokens=int(lengths.sum()))

    def evaluate(self, model: nn.Module, full: bool) -> dict[str, float]:
        """Validation loss (nats) and accuracy."""
        loss, accuracy, _ = evaluate_split(model, self.data["valid"], len(self.classes))
        return {"loss": loss, "accuracy": accuracy}


def build_classifier(
    settings: Any, num_classes: int, vocab_size: int | None = None,
    features: int | None = None, embed: int | None = None,
) -> SequenceClassifier:  # fmt: skip
    """The `SequenceClassifier` of ``settings`` on token ids (``vocab_size``, ``embed``) or on
    ``features`` per step."""
    s = settings
    return SequenceClassifier(
        s.cell, vocab_size or features, s.hidden, num_classes, s.layers, s.dropout, s.impl,
        embedding_size=embed if vocab_size else None, bidirectional=s.bidirectional,
        pooling=s.pooling,
    )  # fmt: skip


@torch.no_grad()
def evaluate_split(model: nn.Module, split: Split, num_classes: int) -> tuple[float, float, Tensor]:
    """Mean cross-entropy (nats), accuracy and the confusion matrix (C, C), rows the true
    class, columns the predicted, over ``split`` (batches of similar lengths)."""
    order = sorted(range(len(split)), key=lambda i: len(split.items[i]))
    total, confusion = 0.0, torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in range(0, len(order), EVAL_BATCH):
        chunk = split.subset(order[i : i + EVAL_BATCH])
        logits = model(*pad(chunk.items))
        total += float(nn.functional.cross_entropy(logits, chunk.labels, reduction="sum"))
        pairs = chunk.labels * num_classes + logits.argmax(-1)
        confusion += torch.bincount(pairs, minlength=num_classes**2).view(num_classes, -1)
    accuracy = float(confusion.diag().sum()) / max(1, len(split))
    return total / max(1, len(split)), accuracy, confusion


def test_report(task: ClassifyTask, run_dir: Path, checkpoint: str = "best") -> dict[str, Any]:
    """Score ``checkpoint`` of a trained run on the task's test split; writes ``test.json`` and
    ``confusion.png`` into the run and returns the report."""
    from rnnkit.diagnostics.plots import plot_confusion

    model = ckpt.load_trained(task.build_model, run_dir, checkpoint)
    loss, accuracy, confusion = evaluate_split(model, task.data["test"], len(task.classes))
    report = {"test_loss": loss, "test_accuracy": accuracy, "test_size": len(task.data["test"]),
              "checkpoint": checkpoint, "classes": task.classes,
              "confusion": confusion.tolist()}  # fmt: skip
    atomic_write_json(run_dir / "test.json", report)
    title = f"{run_dir.name}: test accuracy {100 * accuracy:.1f}%"
    plot_confusion(confusion, task.classes, run_dir / "confusion.png", title)
    return report


def train_and_test(
    name: str, settings_cls: type, make_task: Callable[[Any], ClassifyTask],
    default_train: TrainConfig, flags: dict[str, Any], config_file: str | None,
    out: str | None, resume: str | None,
) -> dict[str, Any]:  # fmt: skip
    """Train one run through `train_task`, then score its best checkpoint on the test split.
    Returns the fit's summary and the test report."""
    made: list[ClassifyTask] = []
    cpu = time.process_time()

    def make(settings: Any) -> ClassifyTask:
        made.append(make_task(settings))
        return made[-1]

    result = train_task(name, settings_cls, make, default_train, flags, config_file, out, resume)
    report = test_report(made[-1], result.run_dir)
    return {"run_dir": str(result.run_dir), "steps": result.step, "elapsed": result.elapsed,
            "cpu_seconds": time.process_time() - cpu,
            "stop_reason": result.stop_reason, "valid": result.final, **report}  # fmt: skip


def partitioned(
    partitions: dict[str, Any], key: str, out: Path, run: Callable[[dict[str, Any], str], dict],
) -> dict[str, Any]:  # fmt: skip
    """Train and test once per partition: ``partitions`` maps a run name to the value of setting
    ``key``; run NAME goes to ``out/NAME``. Writes ``out/summary.json`` with each test accuracy,
    their mean and (sample) standard deviation, and returns it."""
    if (out / "summary.json").exists():
        raise RnnkitError(f"{out} already holds a summary; choose another --out")
    results = {}
    for name, value in partitions.items():
        results[name] = run({key: value}, str(out / name))
        shown = {k: results[name][k] for k in ("test_accuracy", "cpu_seconds")}
        print(f"{name}: test accuracy {100 * shown['test_accuracy']:.2f}% "
              f"({shown['cpu_seconds']:.0f} CPU s)", flush=True)  # fmt: skip
    kept = ("test_accuracy", "test_size", "elapsed", "cpu_seconds", "steps", "run_dir")
    accuracies = [r["test_accuracy"] for r in results.values()]
    summary = {"partitions": {n: {k: r[k] for k in kept} for n, r in results.items()},
               "mean_accuracy": statistics.mean(accuracies),
               "std_accuracy": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
               "cpu_seconds": sum(r["cpu_seconds"] for r in results.values())}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The lines `rnnkit train ... --cv/--loso` prints: mean and std of the test accuracy."""
    n = len(summary["partitions"])
    return (f"{n} partitions: test accuracy {100 * summary['mean_accuracy']:.2f}% mean, "
            f"{100 * summary['std_accuracy']:.2f}% std; {summary['cpu_seconds'] / 60:.1f} "
            "CPU-minutes")  # fmt: skip


def format_result(result: dict[str, Any]) -> str:
    """The lines `rnnkit train` prints: a cross-validation's summary or one run's test."""
    return format_summary(result) if "partitions" in result else format_test(result)


def format_test(result: dict[str, Any]) -> str:
    """The line a single run prints after training: its test accuracy."""
    return (f"test ({result['checkpoint']} checkpoint, {result['test_size']} examples): accuracy "
            f"{100 * result['test_accuracy']:.2f}%, loss {result['test_loss']:.4f}; "
            f"confusion matrix in {result['run_dir']}/confusion.png")  # fmt: skip


@dataclass
class Classification(Result):
    """A classifier's answer: the likeliest ``label``, every class's probability and, for a run
    that pools by attention, the weight of each step (``tokens``: the words read, for text;
    ``unknown``: per word, True if the vocabulary lacks it and the model read ``<unk>``)."""

    label: str
    probabilities: dict[str, float]
    attention: list[float] | None = None
    tokens: list[str] | None = None
    unknown: list[bool] | None = None

    def summary(self) -> str:
        shown = ", ".join(f"{c} {p:.3f}" for c, p in self.probabilities.items())
        return f"{self.label} {self.probabilities[self.label]:.3f}  ({shown})"

    def explained(self) -> str:
        """`summary`, then a line per step: its attention weight as a number and a bar, and
        its token (text) or index (frames)."""
        if self.attention is None:
            raise RnnkitError("--explain shows attention weights; this run pools otherwise "
                              "(train with --pooling attention)")  # fmt: skip
        names = self.tokens or [f"frame {t}" for t in range(len(self.attention))]
        unknown = self.unknown or [False] * len(names)
        lines = [self.summary()]
        for a, name, new in zip(self.attention, names, unknown):
            lines.append(f"{a:.3f} {'#' * round(40 * a):<40} {name}{'  (unknown word)' * new}")
        return "\n".join(lines)


class ClassifierPredictor(Predictor):
    """A trained classifier answering batches: subclasses turn an input into the model's (T,)
    ids or (T, F) features and the tokens to show (`encode_input`)."""

    def __init__(self, run_dir, config, checkpoint, model: nn.Module, classes: list[str]):
        super().__init__(run_dir, config, checkpoint)
        self.model, self.classes = model.eval(), classes

    def encode_input(self, item: Any) -> tuple[Tensor, list[str] | None]:
        """An input as the model reads it, (T,) ids or (T, F) features, and its tokens."""
        raise NotImplementedError

    def unknown(self, x: Tensor) -> list[bool] | None:
        """Per step of an encoded input, True where it stands for a token the run never saw."""
        return None

    def predict(self, inputs: Sequence[Any]) -> list[Classification]:
        """One `Classification` per input, the inputs run as batches of similar lengths."""
        encoded = [self.encode_input(item) for item in check_inputs(inputs, self.takes)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        results: list[Classification | None] = [None] * len(encoded)
        with torch.inference_mode():
            for start in range(0, len(order), EVAL_BATCH):
                chunk = order[start : start + EVAL_BATCH]
                x, lengths = pad([encoded[i][0] for i in chunk])
                probs, alpha = self.model.predict(x, lengths)
                for column, i in enumerate(chunk):
                    weights = None if alpha is None else alpha[: lengths[column], column]
                    results[i] = self._result(probs[column], weights, *encoded[i])
        return results

    def _result(self, probs: Tensor, alpha: Tensor | None, x: Tensor, tokens) -> Classification:
        values = {c: float(p) for c, p in zip(self.classes, probs)}
        label = self.classes[int(probs.argmax())]
        attention = None if alpha is None else [float(a) for a in alpha]
        return Classification(label, values, attention, tokens, self.unknown(x))


class _ClassifierGraph(nn.Module):
    """What a classifier exports: (x (T, B) ids or (T, B, F) features, lengths (B,)) ->
    probabilities (B, C) and, with attention pooling, the attention weights (T, B)."""

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, lengths: Tensor):
        pooled, alpha = self.model.encode(x, lengths)
        probs = torch.softmax(self.model.head(pooled), dim=-1)
        return probs if alpha is None else (probs, alpha)


def classifier_graph(
    predictor: ClassifierPredictor, examples: list[Tensor], source: str, metadata: dict
) -> Graph:
    """The `Graph` of a classifier run, its check inputs cut from ``examples`` (encoded inputs
    of the run's data) by `ragged_batch`."""
    name = "ids" if examples[0].dim() == 1 else "features"
    axes = {name: {0: "T", 1: "B"}, "lengths": {0: "B"}, "probabilities": {0: "B"}}
    outputs = ["probabilities"]
    if predictor.model.pooling == "attention":
        axes["attention"] = {0: "T", 1: "B"}
        outputs.append("attention")

    def samples(steps: int) -> dict[str, Tensor]:
        return dict(zip((name, "lengths"), ragged_batch(examples, steps)))

    inputs = samples(7)
    meta = {"classes": predictor.classes, **metadata}
    return Graph(_ClassifierGraph(predictor.model), inputs, outputs, axes, meta, samples, source)
