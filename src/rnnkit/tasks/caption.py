"""Image captioning: a CNN encoder and translation's attention decoder, on Fashion-MNIST scenes.

Data: real Fashion-MNIST pictures (`rnnkit.data.images`), 1 to 4 of them side by side on a
28 x 112 strip, captioned from their labels, left to right: "a sneaker to the left of a bag and
a shirt". No captioned-image data set installs here, so the captions are made from the labels;
the pictures are real. Training scenes are composed on the fly (from the trainer's generator, so
resuming is exact) from the first 55,000 training pictures; validation scenes (a fixed set of
``valid_scenes``) from the last ``valid_images`` training pictures; test scenes (a fixed set of
``test_scenes``) from the 10,000 test pictures, never seen in training.
Model: `rnnkit.models.vision.ConvEncoder` (conv + ReLU + pool stages, the feature map as memory,
position embeddings, a bridge of the mean feature) and `rnnkit.models.seq2seq.AttentionDecoder`
in a `Seq2Seq`, with the captions' word ids (0 pad, 1 unknown, 2 begin, 3 end, then the words).
Metrics: ``loss`` is the validation cross-entropy per word (teacher forcing); ``bleu`` sacrebleu's
corpus BLEU of the greedy captions of the first ``eval_scenes`` validation scenes (all of them,
with beam search, at the end); ``exact`` the fraction of captions exactly right; ``items`` the
fraction of the scenes' items named right at their place (a missing or extra item is wrong).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu
import torch
from torch import Tensor, nn

from rnnkit.data import images as fm
from rnnkit.data.images import SIDE
from rnnkit.data.tokens import BOS, EOS, PAD, UNK, pad_ids
from rnnkit.errors import RnnkitError
from rnnkit.io import atomic_write_bytes, atomic_write_json, read_json
from rnnkit.models.seq2seq import (
    ATTENTIONS,
    CELLS,
    AttentionDecoder,
    Hypothesis,
    Seq2Seq,
    target_loss,
    teacher_forced_loss,
)
from rnnkit.models.vision import ConvEncoder
from rnnkit.predictor import Predictor, check_inputs
from rnnkit.tasks.common import train_task
from rnnkit.tasks.seq2seq import Translation, check_beam, translation_of
from rnnkit.tasks.spec import TaskSpec
from rnnkit.training.options import choice, path
from rnnkit.training.runs import load_run
from rnnkit.training.trainer import StepOutput, TrainConfig

NAME = "caption"
VOCAB = "vocab.json"
POSITIVE = ("valid_images", "valid_scenes", "eval_scenes", "test_scenes", "channels", "stages",
            "embed", "decoder_hidden", "decoder_layers", "batch", "beam")  # fmt: skip
MAX_WORDS = 3  # the longest class name ("ankle boot") with its article


@dataclass
class CaptionConfig:
    """Everything that rebuilds the scenes and the model (stored in config.json).

    Attributes:
        data: Fashion-MNIST folder (IDX files, gzip'd or not), or the data set fashion-mnist;
            none: /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist).
        slots: 28-pixel cells of a scene (its width).
        min_items: Fewest items in a scene.
        max_items: Most items in a scene.
        valid_images: Training pictures kept for validation scenes.
        valid_scenes: Validation scenes.
        eval_scenes: Validation scenes captioned at each evaluation.
        test_scenes: Test scenes (Fashion-MNIST test pictures) scored after training.
        scene_seed: Seed of the validation and test scenes.
        channels: Feature maps of the last conv stage.
        stages: Conv + ReLU + pool stages.
        cell: The decoder's recurrent cell.
        embed: Word embedding size.
        decoder_hidden: Decoder units.
        decoder_layers: Decoder layers.
        attention: Bahdanau (additive) or Luong (dot, general).
        dropout: Dropout.
        label_smoothing: Label smoothing of the words.
        batch: Scenes per step.
        beam: Beam size of the final evaluation.
        length_penalty: Beam search's length normalisation exponent.
    """

    data: str = path()
    slots: int = 4
    min_items: int = 1
    max_items: int = 4
    valid_images: int = 5000
    valid_scenes: int = 1000
    eval_scenes: int = 500
    test_scenes: int = 1000
    scene_seed: int = 1234
    channels: int = 64
    stages: int = 3
    cell: str = choice("gru", CELLS)
    embed: int = 64
    decoder_hidden: int = 256
    decoder_layers: int = 1
    attention: str = choice("additive", ATTENTIONS)
    dropout: float = 0.1
    label_smoothing: float = 0.0
    batch: int = 64
    beam: int = 3
    length_penalty: float = 0.6

    def check(self) -> None:
        fm.check_scene_settings(self.min_items, self.max_items, self.slots)
        for name in POSITIVE:
            if getattr(self, name) < 1:
                raise RnnkitError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise RnnkitError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.dropout < 1.0:
            raise RnnkitError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.length_penalty < 0:
            raise RnnkitError(f"length_penalty must be >= 0, got {self.length_penalty}")

    @property
    def scene_size(self) -> tuple[int, int]:
        """(height, width) of a scene in pixels."""
        return SIDE, SIDE * self.slots

    @property
    def max_len(self) -> int:
        """Words of the longest caption, plus room for a few wrong ones."""
        return MAX_WORDS * self.max_items + 4 + (self.max_items - 2) + 4


#: training defaults of `rnnkit train caption`
DEFAULT_TRAIN = TrainConfig(lr=2e-3, warmup_steps=100, clip=1.0, max_steps=3000, eval_every=250,
                            log_every=50)  # fmt: skip


class Vocabulary:
    """The caption words (`rnnkit.data.images.caption_vocabulary`): ids <-> text."""

    def __init__(self, words: list[str]) -> None:
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, UNK) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids if i not in (PAD, BOS, EOS))

    def names(self, ids: list[int]) -> list[str]:
        """The word of each id (special ids included: one name per id)."""
        return [self.words[i] for i in ids]


class Scenes:
    """A fixed set of scenes: pixels (N, H, W) uint8, labels, captions and their word ids."""

    def __init__(self, pixels: np.ndarray, labels: list[list[int]], vocab: Vocabulary) -> None:
        self.pixels, self.labels = pixels, labels
        self.captions = [fm.caption_of(k) for k in labels]
        self.ids = [vocab.encode(c) for c in self.captions]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: range | list[int]) -> tuple[Tensor, Tensor, Tensor]:
        return scene_batch(self.pixels[index], [self.ids[i] for i in index])


def to_images(pixels: np.ndarray) -> Tensor:
    """uint8 pixels (B, H, W) -> float images in [0, 1]."""
    return torch.from_numpy(np.asarray(pixels, dtype=np.float32) / 255.0)


def scene_batch(pixels: np.ndarray, ids: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """images (B, H, W), tgt_in (B, T) = BOS + words, tgt_out (B, T) = words + EOS."""
    tgt_in = pad_ids([[BOS, *row] for row in ids])
    tgt_out = pad_ids([[*row, EOS] for row in ids])
    return to_images(pixels), tgt_in, tgt_out


def scene_sets(cfg: CaptionConfig):
    """The picture pools: (train images, labels), (validation images, labels), the test pool."""
    images, labels = fm.load_fashion_mnist("train", cfg.data or None)
    if cfg.valid_images >= len(images):
        raise RnnkitError(f"valid_images ({cfg.valid_images}) must leave some of the "
                          f"{len(images)} training pictures to train on")  # fmt: skip
    cut = len(images) - cfg.valid_images
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def fixed_scenes(pool, count: int, seed: int, cfg: CaptionConfig, vocab: Vocabulary) -> Scenes:
    """``count`` scenes from the pictures ``pool``, the same for the same seed."""
    pixels, labels = fm.compose_scenes(*pool, count, np.random.default_rng(seed), cfg.min_items,
                                       cfg.max_items, cfg.slots)  # fmt: skip
    return Scenes(pixels, labels, vocab)


def held_out_scenes(cfg: CaptionConfig, vocab: Vocabulary) -> Scenes:
    """The held-out test scenes: Fashion-MNIST test pictures, seed ``scene_seed + 1``."""
    pool = fm.load_fashion_mnist("test", cfg.data or None)
    return fixed_scenes(pool, cfg.test_scenes, cfg.scene_seed + 1, cfg, vocab)


class Caption:
    """The task object the trainer drives (see `rnnkit.training.trainer`)."""

    name = NAME
    steps_per_epoch = None  # scenes are composed freely

    def __init__(self, cfg: CaptionConfig) -> None:
        cfg.check()
        self.cfg = cfg
        self.vocab = Vocabulary(fm.caption_vocabulary())
        self.train_pool, valid_pool = scene_sets(cfg)
        self.valid = fixed_scenes(valid_pool, cfg.valid_scenes, cfg.scene_seed, cfg, self.vocab)

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def save_assets(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / VOCAB, self.vocab.words)

    def build_model(self) -> Seq2Seq:
        return build_model(self.cfg, len(self.vocab))

    def train_batch(self, step: int, rng: torch.Generator) -> tuple[Tensor, ...]:
        """``batch`` new scenes from the training pictures, drawn from ``rng``."""
        seed = int(torch.randint(0, 2**62, (1,), generator=rng))
        c = self.cfg
        pixels, labels = fm.compose_scenes(*self.train_pool, c.batch, np.random.default_rng(seed),
                                           c.min_items, c.max_items, c.slots)  # fmt: skip
        return scene_batch(pixels, [self.vocab.encode(fm.caption_of(k)) for k in labels])

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...], state: Any) -> StepOutput:
        images, tgt_in, tgt_out = batch
        logits, _ = model(images, None, tgt_in)
        loss = target_loss(logits, tgt_out, PAD, self.cfg.label_smoothing)
        return StepOutput(loss, None, int((tgt_out != PAD).sum()))

    def evaluate(self, model: nn.Module, full: bool) -> dict[str, float]:
        count = len(self.valid) if full else min(len(self.valid), self.cfg.eval_scenes)
        beam = self.cfg.beam if full else 1
        found = caption_pixels(model, self.valid.pixels[:count], beam, self.cfg)
        hypotheses = [self.vocab.decode(best.tokens) for best, *_ in found]
        return {
            "loss": valid_loss(model, self.valid, self.cfg.batch),
            **score_captions(hypotheses, self.valid.labels[:count]),
        }


def build_model(cfg: CaptionConfig, vocab_size: int) -> Seq2Seq:
    """`ConvEncoder` and `AttentionDecoder` (see `CaptionConfig`)."""
    encoder = ConvEncoder(1, cfg.channels, cfg.stages, cfg.decoder_hidden, cfg.decoder_layers,
                          cfg.cell, image_size=cfg.scene_size)  # fmt: skip
    decoder = AttentionDecoder(vocab_size, cfg.embed, cfg.decoder_hidden, cfg.channels,
                               cfg.decoder_layers, cfg.cell, cfg.attention, cfg.dropout,
                               padding_idx=PAD)  # fmt: skip
    return Seq2Seq(encoder, decoder, BOS, EOS, PAD)


def valid_loss(model: Seq2Seq, scenes: Scenes, batch: int) -> float:
    """Cross-entropy per word (nats), teacher forcing, no label smoothing."""
    spans = (range(i, min(len(scenes), i + batch)) for i in range(0, len(scenes), batch))
    return teacher_forced_loss(model, ((x, None, i, o) for x, i, o in map(scenes.batch, spans)))


def score_captions(hypotheses: list[str], labels: list[list[int]]) -> dict[str, float]:
    """sacrebleu corpus BLEU (0-100), ``exact`` (fraction of captions exactly right) and
    ``items`` (fraction of the true items named at their place)."""
    references = [fm.caption_of(k) for k in labels]
    right = total = 0
    for text, truth in zip(hypotheses, labels):
        named = fm.parse_caption(text) or []
        right += sum(a == b for a, b in zip(named, truth))
        total += max(len(truth), len(named))
    return {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "exact": sum(h == r for h, r in zip(hypotheses, references)) / max(1, len(references)),
        "items": right / max(1, total),
    }


@torch.no_grad()
def caption_pixels(
    model: Seq2Seq, pixels: np.ndarray, beam: int, cfg: CaptionConfig
) -> list[list[Hypothesis]]:
    """The beam's hypotheses of each scene (pixels (N, H, W) uint8), best first, in order; beam
    1 is greedy decoding. Each hypothesis's attention is (T, h * w)."""
    model.eval()
    out: list[list[Hypothesis]] = []
    for first in range(0, len(pixels), cfg.batch):
        images = to_images(pixels[first : first + cfg.batch])
        out += model.beam_search(images, None, beam, cfg.max_len, cfg.length_penalty)
    return out


# --- trained runs: loading, captioning, testing ------------------------------------------------


def check_image(pixels: np.ndarray, cfg: CaptionConfig, path: str | Path) -> np.ndarray:
    """Refuse an image whose size is not the scenes' the run was trained on."""
    height, width = cfg.scene_size
    if pixels.shape != (height, width):
        raise RnnkitError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels (width x "
                          f"height); this model reads {width}x{height} grayscale scenes, light "
                          f"items on black, as `rnnkit caption RUN --example scene.png` "
                          f"writes them")  # fmt: skip
    return pixels


class CaptionPredictor(Predictor):
    """A trained caption run: ``predict([image, ...], beam=None)`` -> a `Translation` per image
    (beam None: the run's beam size; 1: greedy decoding). An image is a picture file (PNG, as
    `rnnkit caption` reads it) or grayscale pixels (H, W) uint8, of the run's scene size."""

    task = NAME
    takes = "an image file or (H, W) uint8 pixels"

    def __init__(self, run_dir: str | Path, checkpoint: str = "best") -> None:
        def build(cfg: CaptionConfig, parts: dict[str, Any]) -> Seq2Seq:
            return build_model(cfg, len(parts[VOCAB]))

        files = {VOCAB: lambda path: Vocabulary(read_json(path))}
        run = load_run(run_dir, NAME, CaptionConfig, build, checkpoint, files=files)
        self.model, self.vocab, self.cfg = run.model, run.parts[VOCAB], run.settings
        super().__init__(run_dir, run.config, checkpoint)
        self.grid = list(self.model.encoder.grid(*self.cfg.scene_size))

    def graph(self):
        """What `rnnkit export` records: the encoder and the decoder's step, which a client
        chains (`rnnkit.tasks.seq2seq_export`)."""
        from rnnkit.tasks.seq2seq_export import caption_chain

        return caption_chain(self)

    def pixels_of(self, image: Any, number: int = 1) -> np.ndarray:
        """The checked pixels (H, W) uint8 of an image file or array (input ``number``)."""
        if isinstance(image, (str, os.PathLike)):
            if not str(image):
                raise RnnkitError(f"input {number} is an empty path, not an image file")
            return check_image(fm.read_image(image), self.cfg, image)
        if not isinstance(image, np.ndarray):
            raise RnnkitError(f"a caption run takes image files or (H, W) uint8 arrays, got "
                              f"{type(image).__name__} (input {number})")  # fmt: skip
        if image.ndim != 2 or image.dtype != np.uint8:
            raise RnnkitError(f"input {number}: pixels must be grayscale (H, W) uint8, got "
                              f"{image.dtype} of shape {image.shape}")  # fmt: skip
        return check_image(image, self.cfg, f"input {number}")

    def predict(self, inputs: Sequence[Any], beam: int | None = None) -> list[Translation]:
        """One `Translation` (a caption) per image; the images run as batches."""
        images = check_inputs(inputs, self.takes)
        pixels = np.stack([self.pixels_of(image, n) for n, image in enumerate(images, 1)])
        beam = check_beam(beam, self.cfg.beam)
        with torch.inference_mode():
            found = caption_pixels(self.model, pixels, beam, self.cfg)
        return [translation_of(h, self.vocab.decode, self.vocab.names, grid=self.grid)
                for h in found]  # fmt: skip


def load_predictor(run_dir: str | Path, checkpoint: str = "best") -> CaptionPredictor:
    """The `CaptionPredictor` of a run (`rnnkit.load`)."""
    return CaptionPredictor(run_dir, checkpoint)


def caption(
    run_dir: str, image: str | None = None, example: str | None = None, beam: int | None = None,
    plot: str | None = None, seed: int = 0, checkpoint: str = "best",
) -> str:  # fmt: skip
    """What `rnnkit caption` prints: the caption of the picture file ``image``; or, with
    ``example``, write a test scene (Fashion-MNIST test pictures, drawn with ``seed``) to that
    PNG and caption it. ``plot``: a PNG of where each word looked."""
    predictor = CaptionPredictor(run_dir, checkpoint)
    cfg = predictor.cfg
    if (image is None) == (example is None):
        raise RnnkitError("give an image file to caption, or --example OUT.png (not both)")
    check_beam(beam, cfg.beam)
    lines = []
    if example is not None:
        pool = fm.load_fashion_mnist("test", cfg.data or None)
        pixels, labels = fm.compose_scene(*pool, np.random.default_rng(seed), cfg.min_items,
                                          cfg.max_items, cfg.slots)  # fmt: skip
        fm.write_image(example, pixels)
        lines.append(f"wrote {example}: a test scene of {cfg.scene_size[1]}x{cfg.scene_size[0]} "
                     f"pixels; true caption: {fm.caption_of(labels)}")  # fmt: skip
        source = example
    else:
        pixels = predictor.pixels_of(image)
        source = image
    [result] = predictor.predict([pixels], beam)
    lines.append(result.summary())
    if plot is not None:
        plot_words(pixels, result, cfg.stages, plot, f"{Path(source).name}: {result.text}")
    return "\n".join(lines)


def plot_words(
    pixels: np.ndarray, result: Translation, stages: int, path: str | Path, title: str
) -> Path:
    """The scene under each word's attention (`rnnkit.diagnostics.plots.plot_image_attention`);
    ``stages`` pooling stages of the encoder make a cell 2 ** stages pixels wide."""
    from rnnkit.diagnostics.plots import plot_image_attention

    h, w = result.grid
    maps = torch.tensor(result.attention, dtype=torch.float32).reshape(-1, h, w)
    return plot_image_attention(pixels, maps, result.target_tokens, path, title, region=2**stages)


def test_report(task: Caption, run_dir: Path, checkpoint: str = "best") -> dict[str, Any]:
    """Scores of ``checkpoint`` on the test scenes (beam search); writes ``test.json``,
    ``test-captions.txt`` (prediction TAB truth), ``examples.png`` and ``attention.png``."""
    from rnnkit.diagnostics.plots import plot_captioned_images

    predictor = CaptionPredictor(run_dir, checkpoint)
    cfg = predictor.cfg
    scenes = held_out_scenes(cfg, predictor.vocab)
    started = time.time()
    results = predictor.predict(list(scenes.pixels), cfg.beam)
    outputs = [r.text for r in results]
    report = {f"test_{k}": v for k, v in score_captions(outputs, scenes.labels).items()}
    report.update(test_size=len(scenes), beam=cfg.beam, checkpoint=checkpoint,
                  decode_seconds=round(time.time() - started, 1))  # fmt: skip
    atomic_write_json(run_dir / "test.json", report)
    rows = [f"{o}\t{r}" for o, r in zip(outputs, scenes.captions)]
    atomic_write_bytes(run_dir / "test-captions.txt", "\n".join(rows).encode() + b"\n")
    shown = min(8, len(scenes))
    plot_captioned_images(scenes.pixels[:shown], outputs[:shown], run_dir / "examples.png",
                          f"test scenes: predicted (beam {cfg.beam}) / true caption",
                          scenes.captions[:shown])  # fmt: skip
    pick = max(range(len(scenes)), key=lambda i: (len(scenes.labels[i]), -i))  # most items
    plot_words(scenes.pixels[pick], results[pick], cfg.stages, run_dir / "attention.png",
               f"test scene {pick}: {outputs[pick]}")  # fmt: skip
    return report


def train(
    flags: dict[str, Any], config_file: str | None = None, out: str | None = None,
    resume: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train (or resume) a captioning model; then score its best checkpoint on the test scenes.
    Returns the fit's summary and the test report."""
    made: list[Caption] = []

    def make_task(cfg: CaptionConfig) -> Caption:
        made.append(Caption(cfg))
        return made[-1]

    result = train_task(NAME, CaptionConfig, make_task, DEFAULT_TRAIN, flags, config_file, out,
                        resume)  # fmt: skip
    summary = {"run_dir": str(result.run_dir), "steps": result.step, "elapsed": result.elapsed,
               "stop_reason": result.stop_reason, "valid": result.final}  # fmt: skip
    if result.stop_reason not in ("interrupted", "diverged"):
        summary.update(test_report(made[-1], result.run_dir))
    return summary


def format_report(summary: dict[str, Any]) -> str:
    """The lines `rnnkit train caption` prints at the end."""
    valid = summary.get("valid") or {}
    lines = [f"{summary['steps']} steps in {summary['elapsed'] / 60:.1f} min "
             f"({summary['stop_reason']}); run in {summary['run_dir']}"]  # fmt: skip
    if valid:
        lines.append(f"validation: loss {valid['loss']:.3f}  BLEU {valid['bleu']:.2f}  exact "
                     f"{100 * valid['exact']:.1f}%  items {100 * valid['items']:.1f}%")  # fmt: skip
    if "test_bleu" in summary:
        lines.append(f"test: BLEU {summary['test_bleu']:.2f}  exact "
                     f"{100 * summary['test_exact']:.1f}%  items "
                     f"{100 * summary['test_items']:.1f}% ({summary['test_size']} scenes, "
                     f"beam {summary['beam']})")  # fmt: skip
    return "\n".join(lines)


SPEC = TaskSpec(
    NAME,
    "",
    CaptionConfig,
    DEFAULT_TRAIN,
    train,
    format_report,
    load_predictor,
    examples=(
        "rnnkit train caption --out runs/caption",
        "rnnkit caption runs/caption --example scene.png --plot attention.png",
        "rnnkit caption runs/caption scene.png",
    ),
)
