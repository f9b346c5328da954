"""Polyphonic music: next-frame modelling of piano rolls, and composing playable MIDI.

Data: the JSB chorales JSON (official train/valid/test split) or a folder of MIDI files (split
80/10/10), as piano rolls of 88 keys (`rnnkit.data.music`).
Model: `FrameModel`, a recurrent layer over the frames with an independent-Bernoulli head or a
NADE head that models the keys of a frame jointly (``head``).
Training batches: ``batch`` pieces of similar lengths from a random place in the length order,
each optionally transposed by a random shift in [-``transpose``, ``transpose``] semitones; the loss
is the negative log-likelihood per frame of every frame, the first one included (from the start
step, so the model can also begin a piece on its own).
Metric: negative log-likelihood per frame in nats, the Bernoulli NLL summed over the 88 keys,
averaged over the frames of the split, each frame given the frames before it and the first frame
of each piece not scored (as in Boulanger-Lewandowski et al. 2012 and Bai et al. 2018, whose
code predicts frames 2..T from frames 1..T-1). ``nll_all_frames`` also scores the first frame.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.data.music import (
    KEYS,
    MAX_FRAMES,
    MusicData,
    midi_bytes,
    pad_rolls,
    read_midi,
    read_music,
    roll_png,
    transpose_roll,
)
from rnnkit.errors import RnnkitError
from rnnkit.io import atomic_write_bytes
from rnnkit.layers import IMPLS
from rnnkit.models.frames import HEADS, FrameModel
from rnnkit.models.heads import bernoulli_nll, check_sampling
from rnnkit.predictor import Predictor, Result, check_inputs
from rnnkit.tasks.common import format_fit, train_task
from rnnkit.tasks.spec import TaskSpec
from rnnkit.training.options import choice, path
from rnnkit.training.runs import TrainedRun, load_run
from rnnkit.training.trainer import FitResult, StepOutput, TrainConfig

NAME = "music"


@dataclass
class MusicConfig:
    """Everything that rebuilds the data pipeline and the model (stored in config.json).

    Attributes:
        data: JSB chorales JSON (train/valid/test), a folder of MIDI files, or a data set.
        steps_per_quarter: MIDI folders: frames per quarter note.
        cell: The recurrent cell.
        hidden: Hidden units per layer.
        layers: Recurrent layers.
        dropout: Dropout on the recurrent outputs.
        input_dropout: Dropout on the input frames.
        weight_dropout: DropConnect on the recurrent weights.
        head: bernoulli: independent keys; nade: the keys of a frame jointly.
        nade_hidden: Hidden units of the NADE head.
        impl: The recurrence's implementation: rnnkit's BPTT engine, torch's kernel, or auto.
        batch: Pieces per step.
        transpose: Random transposition of the training pieces, +- this many semitones (0-12).
    """

    data: str = path("jsb-chorales")
    steps_per_quarter: int = 1
    cell: str = choice("lstm", ("lstm", "gru", "rnn"))
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.3
    input_dropout: float = 0.1
    weight_dropout: float = 0.5
    head: str = choice("bernoulli", HEADS)
    nade_hidden: int = 128
    impl: str = choice("auto", IMPLS)
    batch: int = 8
    transpose: int = 0

    def check(self) -> None:
        if not self.data:
            raise RnnkitError(
                "no music to train on: give --data FILE.json, a folder of MIDI files or a "
                "data set (jsb-chorales)"
            )
        if self.head not in HEADS:
            raise RnnkitError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        for name in ("steps_per_quarter", "hidden", "layers", "nade_hidden", "batch"):
            if getattr(self, name) < 1:
                raise RnnkitError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0 <= self.transpose <= 12:
            raise RnnkitError(f"transpose must be 0..12 semitones, got {self.transpose}")


#: training defaults of `rnnkit train music` (JSB chorales: 229 training pieces, ~29 steps an
#: epoch at batch 8; the best validation model is kept, see `read_run`)
DEFAULT_TRAIN = TrainConfig(
    lr=2e-3, warmup_steps=50, clip=1.0, max_steps=6000, eval_every=200, log_every=50, patience=10
)


class MusicTask:
    """The task object the trainer drives (see `rnnkit.training.trainer`)."""

    name = NAME

    def __init__(self, config: MusicConfig, data: MusicData | None = None) -> None:
        config.check()
        self.cfg = config
        self.data = data or read_music(config.data, config.steps_per_quarter)
        self.steps_per_epoch = math.ceil(len(self.data.train) / config.batch)
        self.by_length = sorted(self.data.train, key=len)

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def save_assets(self, run_dir: Path) -> None:
        pass  # the config names the data; nothing else to keep

    def build_model(self) -> FrameModel:
        return build_model(self.cfg)

    def train_batch(self, step: int, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        """``batch`` training pieces of similar lengths (consecutive in length order, from a
        random place, wrapping around), each randomly transposed: frames (T, B, 88), lengths.
        Similar lengths keep the padding, and so the time per step, small."""
        pieces, B, t = self.by_length, min(self.cfg.batch, len(self.by_length)), self.cfg.transpose
        start = int(torch.randint(0, len(pieces), (1,), generator=rng))
        shifts = torch.randint(-t, t + 1, (B,), generator=rng).tolist()
        chosen = [pieces[(start + i) % len(pieces)] for i in range(B)]
        return pad_rolls([transpose_roll(roll, shift) for roll, shift in zip(chosen, shifts)])

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor], state: Any) -> StepOutput:
        frames, lengths = batch
        total, count = nll_sum(model(frames, lengths), frames, lengths, skip_first=False)
        return StepOutput(total / count, None, count)

    def evaluate(self, model: nn.Module, full: bool) -> dict[str, float]:
        return evaluate_rolls(model, self.data.valid)


def build_model(cfg: MusicConfig) -> FrameModel:
    """The next-frame model of ``cfg`` over the 88 piano keys."""
    options = {"weight_dropout": cfg.weight_dropout} if cfg.weight_dropout else {}
    return FrameModel(cfg.cell, KEYS, cfg.hidden, cfg.layers, cfg.dropout, cfg.input_dropout,
                      cfg.head, cfg.nade_hidden, cfg.impl, **options)  # fmt: skip


def nll_sum(
    logits: Tensor, frames: Tensor, lengths: Tensor, skip_first: bool = True
) -> tuple[Tensor, int]:
    """Summed negative log-likelihood (nats) of the frames within ``lengths``, and their count.

    logits, frames (T, B, K); lengths (B,). Each frame's NLL is the Bernoulli NLL summed over
    the K keys; ``skip_first`` leaves each piece's first frame unscored (the benchmark's
    convention). NLL per frame = sum / count.
    """
    steps = torch.arange(frames.shape[0]).unsqueeze(1)  # (T, 1)
    scored = (steps < lengths.unsqueeze(0)) & (steps >= int(skip_first))  # (T, B)
    return bernoulli_nll(logits, frames)[scored].sum(), int(scored.sum())


def evaluate_rolls(model: nn.Module, rolls: list[Tensor], batch: int = 32) -> dict[str, float]:
    """NLL per frame of ``rolls`` (each (T, 88)): ``loss`` (first frames not scored, the
    benchmark figure), ``nll_all_frames`` (all scored) and ``frames`` (frames scored in loss)."""
    was_training = model.training
    model.eval()
    sums = {True: 0.0, False: 0.0}
    counts = {True: 0, False: 0}
    rolls = sorted(rolls, key=len)  # little padding
    with torch.no_grad():
        for i in range(0, len(rolls), batch):
            frames, lengths = pad_rolls(rolls[i : i + batch])
            logits = model(frames, lengths)
            for skip in (True, False):
                total, count = nll_sum(logits, frames, lengths, skip)
                sums[skip], counts[skip] = sums[skip] + float(total), counts[skip] + count
    model.train(was_training)
    if counts[True] == 0:
        raise RnnkitError("every piece has a single frame; nothing to score")
    return {"loss": sums[True] / counts[True], "nll_all_frames": sums[False] / counts[False],
            "frames": float(counts[True])}  # fmt: skip


# --- rebuilding a trained run (rnnkit eval / compose) ------------------------------------------


def read_run(run_dir: str | Path, checkpoint: str = "best") -> TrainedRun[MusicConfig]:
    """A music run (`rnnkit.training.runs.load_run`); ``checkpoint`` "best" (the best
    validation NLL, falling back to the last if there was no evaluation) or "last"."""
    return load_run(run_dir, NAME, MusicConfig, lambda cfg, _: build_model(cfg), checkpoint)


# --- a trained run composing on request (rnnkit.load) ------------------------------------------

#: pieces composed together in one batch (`MusicPredictor.predict`)
COMPOSE_BATCH = 32
#: `MusicPredictor.compose`'s settings and their defaults
COMPOSE_DEFAULTS = {"frames": 64, "prime": None, "seed": 1, "temperature": 1.0, "tempo": 80.0}


@dataclass
class Composition(Result):
    """A composed piece.

    Fields: ``piano_roll`` ((``prime_frames`` + ``frames``) x K lists of 0/1, K = 88 piano keys
    from A0; a frame per ``1 / steps_per_quarter`` quarter note; the primer first), ``midi``
    (the bytes of that roll as a standard MIDI file at ``tempo``; base64 in `to_dict`),
    ``prime_frames`` (frames of the primer), ``frames`` (frames composed after it), ``notes``
    (note onsets in the roll) and ``tempo`` (quarter notes per minute).
    """

    piano_roll: list[list[int]]
    midi: bytes
    prime_frames: int
    frames: int
    notes: int
    tempo: float

    def summary(self) -> str:
        return (f"{self.prime_frames} primer + {self.frames} composed frames, {self.notes} "
                f"notes at {self.tempo:g} quarter notes per minute ({len(self.midi)} bytes of "
                "MIDI)")  # fmt: skip


@dataclass
class _Request:
    """One piece to compose: checked settings and the primer roll (T0, K) (T0 = 0: none)."""

    frames: int
    primer: Tensor
    seed: int
    temperature: float
    tempo: float


class MusicPredictor(Predictor):
    """A trained music run: ``compose`` a piece (from nothing or after a primer) as a piano
    roll and MIDI bytes; ``predict`` composes a batch of pieces. Every piece draws with its own
    generator (seeded by ``seed``), so one predictor serves any number of threads, and the same
    seed gives the same MIDI bytes as ``rnnkit compose RUN --out F.mid --seed S``."""

    task = NAME
    takes = "a primer MIDI file, or compose's settings (a dict; frames=32,seed=7 as an argument)"

    def __init__(self, run_dir: str | Path, checkpoint: str = "best") -> None:
        run = read_run(run_dir, checkpoint)
        self.model, self.cfg = run.model, run.settings
        super().__init__(run_dir, run.config, checkpoint)

    def graph(self):
        """What `rnnkit export` records: the step composing the next frame, the state in and
        out (`rnnkit.tasks.music_export`)."""
        from rnnkit.tasks.music_export import export_graph

        return export_graph(self, build_model, COMPOSE_DEFAULTS["tempo"])

    def compose(
        self,
        frames: int = 64,
        prime: str | os.PathLike | list[list[int]] | Tensor | None = None,
        seed: int = 1,
        temperature: float = 1.0,
        tempo: float = 80.0,
    ) -> Composition:
        """``frames`` new frames after ``prime`` (a MIDI file, or a piano roll T0 x K of 0/1
        such as a `Composition`'s; None: from nothing), drawn with ``seed`` at ``temperature``
        (0: each key's likelier value); the MIDI plays at ``tempo`` quarter notes per minute."""
        settings = {"frames": frames, "prime": prime, "seed": seed, "temperature": temperature,
                    "tempo": tempo}  # fmt: skip
        return self._compose([self._request(settings)])[0]

    def predict(self, inputs: Sequence[Any]) -> list[Composition]:
        """A `Composition` per input: a dict of `compose`'s keyword arguments, or the path of a
        primer MIDI file (composed after with the defaults); the pieces run as batches."""
        requests = []
        for item in check_inputs(inputs, self.takes):
            if isinstance(item, (str, os.PathLike)):
                item = {"prime": item}
            if not isinstance(item, dict):
                raise RnnkitError(f"a music run takes {self.takes}, got {type(item).__name__}")
            requests.append(self._request(item))
        return self._compose(requests)

    def parse(self, args: Sequence[str]) -> list[str | dict[str, Any]]:
        """Each argument a primer MIDI path, or settings ``frames=32,seed=7,prime=a.mid``."""
        return [_parse_settings(a) if "=" in a else a for a in super().parse(args)]

    def _request(self, settings: dict[str, Any]) -> _Request:
        """``settings`` (compose's keyword arguments, some or all) checked, the primer read."""
        unknown = sorted(set(settings) - set(COMPOSE_DEFAULTS))
        if unknown:
            raise RnnkitError(f"compose takes {', '.join(COMPOSE_DEFAULTS)}; not "
                              f"{', '.join(map(str, unknown))}")  # fmt: skip
        s = {**COMPOSE_DEFAULTS, **settings}
        frames, seed, temperature, tempo = s["frames"], s["seed"], s["temperature"], s["tempo"]
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
            raise RnnkitError(f"frames must be an integer in 1..{MAX_FRAMES}, got {frames!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RnnkitError(f"seed must be an integer, got {seed!r}")
        for name, value in (("temperature", temperature), ("tempo", tempo)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RnnkitError(f"{name} must be a number, got {value!r}")
        check_sampling(float(temperature), None, None)
        if not 0 < tempo < math.inf:
            raise RnnkitError(f"tempo must be > 0 quarter notes per minute, got {tempo}")
        primer = self._primer(s["prime"])
        return _Request(frames, primer, seed, float(temperature), float(tempo))

    def _primer(self, prime: Any) -> Tensor:
        """The primer roll (T0, K) of a MIDI path or a 0/1 roll (lists or a tensor); (0, K)
        for None."""
        keys = self.model.keys
        if prime is None:
            return torch.zeros(0, keys)
        if isinstance(prime, (str, os.PathLike)):
            return read_midi(prime, self.cfg.steps_per_quarter)
        try:
            roll = torch.as_tensor(prime, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            roll = None  # ragged lists, or not numbers
        if roll is None or roll.dim() != 2 or roll.shape[1] != keys or len(roll) > MAX_FRAMES:
            raise RnnkitError(f"prime must be a MIDI file or a piano roll of up to {MAX_FRAMES} "
                              f"frames x {keys} keys of 0/1, got {_shape_of(prime)}")  # fmt: skip
        if len(roll) == 0 or not bool(((roll == 0) | (roll == 1)).all()):
            raise RnnkitError(f"a primer piano roll needs frames of {keys} 0/1 values")
        return roll

    def _compose(self, requests: list[_Request]) -> list[Composition]:
        """The requests run as batches of similar primer lengths."""
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].primer))
        results: list[Composition | None] = [None] * len(requests)
        for start in range(0, len(order), COMPOSE_BATCH):
            chunk = order[start : start + COMPOSE_BATCH]
            rolls = self._draw([requests[i] for i in chunk])
            for i, roll in zip(chunk, rolls):
                results[i] = self._composition(roll, requests[i])
        return results

    @torch.inference_mode()
    def _draw(self, requests: list[_Request]) -> list[Tensor]:
        """Each request's primer and new frames (T0 + n, K), the requests run as one batch."""
        primers, lengths = pad_rolls([r.primer for r in requests])  # (T0, B, K), (B,)
        drawn = self.model.stream(
            max(r.frames for r in requests),
            primers if primers.shape[0] else None,
            batch=len(requests),
            temperature=[r.temperature for r in requests],
            generator=[torch.Generator().manual_seed(r.seed) for r in requests],
            lengths=lengths if primers.shape[0] else None,
        )
        new = torch.stack([frame for frame, _ in drawn])  # (n_max, B, K)
        return [torch.cat([r.primer.to(new.dtype), new[: r.frames, b]])
                for b, r in enumerate(requests)]  # fmt: skip

    def _composition(self, roll: Tensor, request: _Request) -> Composition:
        midi = midi_bytes(roll, request.tempo, self.cfg.steps_per_quarter)
        return Composition(roll.to(torch.int64).tolist(), midi, len(request.primer),
                           request.frames, count_onsets(roll), request.tempo)  # fmt: skip


def count_onsets(roll: Tensor) -> int:
    """Notes starting in ``roll`` (T, K): keys on in the first frame or off the frame before."""
    return int(torch.cat([roll[:1], (roll[1:] - roll[:-1]).clamp(min=0)]).sum())


#: how `MusicPredictor.parse` reads each setting of compose from a string
SETTING_TYPES = {"frames": int, "prime": str, "seed": int, "temperature": float, "tempo": float}


def _parse_settings(arg: str) -> dict[str, Any]:
    """``frames=32,seed=7,prime=a.mid`` -> compose's keyword arguments (numbers converted)."""
    settings: dict[str, Any] = {}
    for part in arg.split(","):
        name, _, value = (x.strip() for x in part.partition("="))
        if name not in SETTING_TYPES or not value:
            raise RnnkitError(f"{part!r}: give NAME=VALUE, NAME one of {', '.join(SETTING_TYPES)}")
        try:
            settings[name] = SETTING_TYPES[name](value)
        except ValueError:
            raise RnnkitError(f"{part!r}: {name} takes a number") from None
    return settings


def _shape_of(value: Any) -> str:
    """How ``value`` is shaped, for an error message: "a tensor of (2, 3)", "a list of 2"."""
    if isinstance(value, Tensor):
        return f"a tensor of {tuple(value.shape)}"
    return f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__


def load_predictor(run_dir: str | Path, checkpoint: str = "best") -> MusicPredictor:
    """The `MusicPredictor` of a run (`rnnkit.load`)."""
    return MusicPredictor(run_dir, checkpoint)


# --- what the command line calls --------------------------------------------------------------


def train(
    flags: dict[str, Any],
    config_file: str | None = None,
    out: str | None = None,
    resume: str | None = None,
) -> FitResult:
    """Train (or resume) a music model from command-line ``flags`` (None: not given), a TOML
    ``config_file`` and the defaults (`MusicConfig`, `DEFAULT_TRAIN`)."""
    return train_task(NAME, MusicConfig, MusicTask, DEFAULT_TRAIN, flags, config_file, out,
                      resume)  # fmt: skip


def evaluate_file(
    run_dir: str, data: str | None = None, split: str = "test", checkpoint: str = "best"
) -> dict[str, float]:
    """NLL per frame of a trained run on ``split`` of its own data, or of ``data`` (a JSB-style
    JSON or a folder of MIDI files) if given; see `evaluate_rolls`. Adds ``pieces``."""
    run = read_run(run_dir, checkpoint)
    model, cfg = run.model, run.settings
    music = read_music(data or cfg.data, cfg.steps_per_quarter)
    rolls = music.split(split)
    return {**evaluate_rolls(model, rolls), "pieces": float(len(rolls))}


def eval_report(run_dir: str, metrics: dict[str, float]) -> str:
    """One line for `rnnkit eval`: the NLL per frame and what it was measured on."""
    return (
        f"{int(metrics['pieces'])} pieces, {int(metrics['frames'])} frames scored: "
        f"NLL {metrics['loss']:.4f} nats per frame (first frame of each piece not scored; "
        f"{metrics['nll_all_frames']:.4f} with it)"
    )


def compose(
    run_dir: str,
    out: str,
    frames: int = 64,
    tempo: float = 80.0,
    prime: str | None = None,
    seed: int = 1,
    temperature: float = 1.0,
    checkpoint: str = "best",
) -> dict[str, Any]:
    """Compose ``frames`` new frames with a trained run, after the frames of the MIDI file
    ``prime`` if given, and write them (primer included) as a MIDI file ``out`` at ``tempo``
    quarter notes per minute, and as a piano-roll PNG beside it (``out`` with ``.png``).

    Returns the paths written and counts: ``prime_frames``, ``frames``, ``notes`` (onsets).
    """
    out_path = Path(out)
    if out_path.suffix.lower() not in (".mid", ".midi"):
        raise RnnkitError(f"--out must name a .mid file, got {out}")
    if not out_path.parent.is_dir():
        raise RnnkitError(f"folder {out_path.parent} does not exist; create it first")
    if frames < 1 or not tempo > 0:
        raise RnnkitError(f"--frames must be >= 1 and --tempo > 0, got {frames} and {tempo}")
    composition = MusicPredictor(run_dir, checkpoint).compose(frames, prime, seed, temperature,
                                                              tempo)  # fmt: skip
    atomic_write_bytes(out_path, composition.midi)
    png = out_path.with_suffix(".png")
    title = f"{Path(run_dir).name}: {frames} frames composed" + (f" after {prime}" if prime else "")
    roll = torch.tensor(composition.piano_roll, dtype=torch.float32)
    atomic_write_bytes(png, roll_png(roll, title, prime=composition.prime_frames))
    return {"midi": str(out_path), "png": str(png), "prime_frames": composition.prime_frames,
            "frames": frames, "notes": composition.notes}  # fmt: skip


SPEC = TaskSpec(
    NAME,
    "The validation loss is the negative log-likelihood per frame (nats, summed over the keys).",
    MusicConfig,
    DEFAULT_TRAIN,
    train,
    format_fit,
    load_predictor,
    examples=(
        "rnnkit data fetch jsb-chorales                # once: the data set, sha256 checked",
        "rnnkit train music --out runs/jsb             # --data jsb-chorales",
        "rnnkit train music --head nade",
        "rnnkit train music --data my_midi_folder/ --steps-per-quarter 2 --max-time 10m",
    ),
)
