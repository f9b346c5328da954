"""Speech to text with CTC: a recording of a string of digits in, the digits out.

Data: utterances of ``min_digits``..``max_digits`` digits built on the fly by joining real FSDD
recordings of one speaker with short silences (`rnnkit.data.audio.join_digits`). Recordings 0-4 of
each digit and speaker make the test utterances, 5-7 the validation ones, 8-49 the training ones
(the standard split, with validation carved from the training part). The validation and test
sets are fixed (seeds of their own: ``valid_size`` and ``test_size`` utterances).
Features: log-mel frames (librosa, 10 ms hop, normalised per utterance), ``stack`` consecutive
frames concatenated (fewer, wider steps), SpecAugment on training utterances (``specaugment``).
Model: a bidirectional LSTM (`SequenceModel`) with a CTC head: 11 classes, blank and 0-9.
Metric: digit error rate (edit distance / reference length) by greedy and prefix-beam decoding.
Prediction: `CTCPredictor` (`rnnkit.load`): WAV files or waveforms -> a `Transcription` each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.data import audio
from rnnkit.data.batching import pad
from rnnkit.errors import RnnkitError
from rnnkit.export import Graph, ragged_batch
from rnnkit.io import atomic_write_json
from rnnkit.layers import IMPLS
from rnnkit.models import ctc
from rnnkit.models.sequence import SequenceModel
from rnnkit.predictor import Predictor, Result, check_inputs
from rnnkit.tasks.classify import EVAL_BATCH
from rnnkit.tasks.common import stamp, train_task
from rnnkit.tasks.spec import TaskSpec
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.options import choice, path
from rnnkit.training.runs import load_run
from rnnkit.training.trainer import StepOutput, TrainConfig

NAME = "speech-ctc"
LABELS = ["_"] + [str(d) for d in range(10)]  # class 0 is the blank
VALID_SEED, TEST_SEED = 1_000_003, 2_000_003


@dataclass
class CTCConfig:
    """Everything that rebuilds the data, the features and the model (config.json).

    Attributes:
        data: FSDD recordings folder ({digit}_{speaker}_{index}.wav) or a data set.
        sample_rate: Recordings are resampled to this rate (Hz).
        n_mels: Mel bands of the log-mel features.
        stack: Feature frames per step.
        specaugment: SpecAugment masks on the training features.
        min_digits: Fewest digits of an utterance (recordings joined).
        max_digits: Most digits of an utterance.
        hidden: LSTM units per direction.
        layers: Bidirectional LSTM layers.
        dropout: Dropout between layers.
        impl: The recurrence's implementation: rnnkit's BPTT engine, torch's kernel, or auto.
        batch: Utterances per step.
        valid_size: Validation utterances.
        test_size: Test utterances.
        beam: Prefix-beam width of the test and of transcribing.
    """

    data: str = path(audio.FSDD)
    sample_rate: int = 8000
    n_mels: int = 40
    stack: int = 3
    specaugment: bool = True
    min_digits: int = 2
    max_digits: int = 6
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.2
    impl: str = choice("auto", IMPLS)
    batch: int = 16
    valid_size: int = 100
    test_size: int = 500
    beam: int = 8

    def check(self) -> None:
        if not self.data:
            raise RnnkitError(f"no recordings: give --data (a folder, or {audio.FSDD})")
        if not 1 <= self.min_digits <= self.max_digits:
            raise RnnkitError(f"need 1 <= min_digits <= max_digits, got {self.min_digits}, "
                              f"{self.max_digits}")  # fmt: skip
        for name in ("stack", "hidden", "layers", "batch", "valid_size", "test_size", "beam"):
            if getattr(self, name) < 1:
                raise RnnkitError(f"{name} must be a positive integer, got {getattr(self, name)}")
        self.feature_config().check()

    def feature_config(self) -> audio.FeatureConfig:
        return audio.FeatureConfig(self.sample_rate, "logmel", self.n_mels)


#: training defaults of `rnnkit train speech-ctc`
DEFAULT_TRAIN = TrainConfig(lr=2e-3, weight_decay=0.01, warmup_steps=100, clip=1.0,
                            max_steps=3000, eval_every=150, log_every=25)  # fmt: skip


def build_model(cfg: CTCConfig) -> SequenceModel:
    """A bidirectional recurrent network with a linear CTC head over the stacked frames."""
    size = cfg.feature_config().size * cfg.stack
    return SequenceModel("lstm", size, cfg.hidden, len(LABELS), cfg.layers, cfg.dropout,
                         cfg.impl, bidirectional=True)  # fmt: skip


def frames(wave: Any, cfg: CTCConfig) -> Tensor:
    """Features of a wave, ``stack`` frames concatenated: (ceil(T / stack), stack * F)."""
    x = audio.features(wave, cfg.feature_config())
    extra = (-len(x)) % cfg.stack
    x = torch.cat([x, x.new_zeros(extra, x.shape[1])])
    return x.reshape(-1, cfg.stack * x.shape[1])


class CTCTask:
    """Digit strings from joined recordings, for the trainer (`rnnkit.training.trainer`)."""

    name = NAME
    steps_per_epoch = None  # utterances are drawn freely

    def __init__(self, cfg: CTCConfig) -> None:
        cfg.check()
        self.cfg = cfg
        recordings = audio.fsdd_recordings(cfg.data)
        self.pools = {"train": {}, "valid": {}, "test": {}}
        for r in recordings:
            part = "test" if r.index < 5 else "valid" if r.index < 8 else "train"
            wave = audio.read_wav(r.path, cfg.sample_rate)
            self.pools[part].setdefault(r.speaker, []).append((r.digit, wave))
        self.fixed = {part: self.utterances(part, size, torch.Generator().manual_seed(seed))
                      for part, size, seed in (("valid", cfg.valid_size, VALID_SEED),
                                               ("test", cfg.test_size, TEST_SEED))}  # fmt: skip

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def save_assets(self, run_dir: Path) -> None:
        pass  # the data are rebuilt from the recordings and the seeds

    def build_model(self) -> SequenceModel:
        return build_model(self.cfg)

    def utterances(self, part: str, n: int, generator: torch.Generator):
        """``n`` utterances of ``part``: (features list, digit lists), one speaker each."""
        speakers = sorted(self.pools[part])
        xs, ys = [], []
        for _ in range(n):
            pool = self.pools[part][speakers[_draw(len(speakers), generator)]]
            count = self.cfg.min_digits + _draw(self.cfg.max_digits - self.cfg.min_digits + 1,
                                                generator)  # fmt: skip
            chosen = [pool[_draw(len(pool), generator)] for _ in range(count)]
            wave = audio.join_digits([w for _, w in chosen], self.cfg.sample_rate, generator)
            xs.append(frames(wave, self.cfg))
            ys.append([d for d, _ in chosen])
        return xs, ys

    def train_batch(self, step: int, rng: torch.Generator):
        xs, ys = self.utterances("train", self.cfg.batch, rng)
        if self.cfg.specaugment:
            xs = [audio.spec_augment(x, rng, 2, 8, 2, 6) for x in xs]
        return xs, ys

    def loss(self, model: nn.Module, batch: Any, state: Any) -> StepOutput:
        xs, ys = batch
        x, lengths = pad(xs)
        log_probs = model(x, lengths=lengths)[0].log_softmax(-1)  # (T, B, K)
        loss = ctc.ctc_loss(log_probs, lengths, [[d + 1 for d in y] for y in ys])
        return StepOutput(loss, tokens=int(lengths.sum()))

    def evaluate(self, model: nn.Module, full: bool) -> dict[str, float]:
        """Validation CTC loss and greedy digit error rate."""
        return score(model, *self.fixed["valid"], beam=0)


def posteriors(model: nn.Module, xs: list[Tensor]) -> list[Tensor]:
    """Per-utterance log-probabilities (T_i, K), in eval mode."""
    x, lengths = pad(xs)
    log_probs = model(x, lengths=lengths)[0].log_softmax(-1)
    return [log_probs[: int(n), b] for b, n in enumerate(lengths)]


@torch.no_grad()
def score(model: nn.Module, xs: list[Tensor], ys: list[list[int]], beam: int) -> dict[str, float]:
    """CTC loss and digit error rate (greedy; with ``beam`` > 0 also prefix beam search)."""
    totals = {"loss": 0.0, "greedy": 0, "beam": 0}
    for i in range(0, len(xs), 64):
        chunk_x, chunk_y = xs[i : i + 64], ys[i : i + 64]
        x, lengths = pad(chunk_x)
        log_probs = model(x, lengths=lengths)[0].log_softmax(-1)
        targets = [[d + 1 for d in y] for y in chunk_y]
        totals["loss"] += float(ctc.ctc_loss(log_probs, lengths, targets)) * len(chunk_x)
        for b, target in enumerate(targets):
            lp = log_probs[: int(lengths[b]), b]
            totals["greedy"] += ctc.edit_distance(ctc.greedy_decode(lp), target)
            if beam:
                totals["beam"] += ctc.edit_distance(ctc.prefix_beam_search(lp, beam), target)
    digits = sum(len(y) for y in ys)
    out = {"loss": totals["loss"] / len(xs), "der_greedy": totals["greedy"] / digits}
    return {**out, "der_beam": totals["beam"] / digits} if beam else out


def decode(log_probs: Tensor, beam: int) -> str:
    """The digits of one utterance's (T, K) log-probabilities: prefix beam search of width
    ``beam``, greedy for 0."""
    labels = ctc.prefix_beam_search(log_probs, beam) if beam else ctc.greedy_decode(log_probs)
    return "".join(LABELS[k] for k in labels)


def _draw(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(0, n, (), generator=generator))


# --- what the command line calls ----------------------------------------------------------------


def train(
    flags: dict[str, Any], config_file: str | None = None, out: str | None = None,
    resume: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train (or resume) a CTC recogniser, then score its best checkpoint on the test
    utterances (greedy and beam digit error rates, ``test.json``) and draw one alignment
    (``alignment.png``)."""
    made: list[CTCTask] = []

    def make(cfg: CTCConfig) -> CTCTask:
        made.append(CTCTask(cfg))
        return made[-1]

    out = out or (None if resume else str(Path("runs") / stamp(NAME)))
    result = train_task(NAME, CTCConfig, make, DEFAULT_TRAIN, flags, config_file, out, resume)
    task = made[-1]
    model = ckpt.load_trained(task.build_model, result.run_dir, "best")
    report = score(model, *task.fixed["test"], beam=task.cfg.beam)
    report = {f"test_{k}": v for k, v in report.items()}
    report.update(test_size=len(task.fixed["test"][0]), steps=result.step, elapsed=result.elapsed)
    atomic_write_json(result.run_dir / "test.json", report)
    draw_alignment(model, task, result.run_dir / "alignment.png")
    return {**report, "run_dir": str(result.run_dir)}


def draw_alignment(model: nn.Module, task: CTCTask, path: Path) -> None:
    """The first test utterance's features and the model's CTC posteriors."""
    from rnnkit.diagnostics.plots import plot_ctc_alignment

    x, y = task.fixed["test"][0][0], task.fixed["test"][1][0]
    with torch.no_grad():
        log_probs = posteriors(model, [x])[0]
    title = f"reference {''.join(map(str, y))}, greedy {decode(log_probs, 0)}"
    half = x[:, : task.cfg.n_mels]  # the first of each stack of frames
    plot_ctc_alignment(half, log_probs, LABELS, path, title)


@dataclass
class Transcription(Result):
    """A CTC recogniser's answer for one recording.

    text: the digits said, decoded from the posteriors (greedy, or prefix beam search).
    posteriors: T lists of C floats, the probability of each output symbol at each step (a
        step is ``stack`` feature frames, ``stack * 10`` ms); each list sums to 1.
    symbols: the C output symbols in the order of a posterior list, the blank ("_") first.
    """

    text: str
    posteriors: list[list[float]]
    symbols: list[str]

    def summary(self) -> str:
        return self.text


class CTCPredictor(Predictor):
    """A trained speech-ctc run: ``predict([wav_path_or_waveform, ...])`` -> a `Transcription`
    per recording, decoded with the run's beam width (``beam`` of `predict`: another width, 0
    greedy)."""

    task = NAME
    takes = "a WAV file or a waveform"

    def __init__(self, run_dir: str | Path, checkpoint: str = "best") -> None:
        run = load_run(run_dir, NAME, CTCConfig, lambda cfg, _: build_model(cfg), checkpoint)
        self.model, self.cfg = run.model, run.settings
        super().__init__(run_dir, run.config, checkpoint)

    def predict(self, inputs: Sequence[Any], beam: int | None = None) -> list[Transcription]:
        """One `Transcription` per input, the inputs run as batches of similar lengths."""
        width = self.cfg.beam if beam is None else beam
        if isinstance(width, bool) or not isinstance(width, int) or width < 0:
            raise RnnkitError(f"beam must be an integer >= 0 (0: greedy), got {width!r}")
        xs = [frames(audio.wave_input(item, self.cfg.sample_rate, NAME), self.cfg)
              for item in check_inputs(inputs, self.takes)]  # fmt: skip
        order = sorted(range(len(xs)), key=lambda i: len(xs[i]))
        results: list[Transcription | None] = [None] * len(xs)
        with torch.inference_mode():
            for start in range(0, len(order), EVAL_BATCH):
                chunk = order[start : start + EVAL_BATCH]
                for i, log_probs in zip(chunk, posteriors(self.model, [xs[i] for i in chunk])):
                    results[i] = self._result(log_probs, width)
        return results

    def _result(self, log_probs: Tensor, width: int) -> Transcription:
        """The transcription of one utterance's (T, C) log-probabilities."""
        return Transcription(decode(log_probs, width), log_probs.exp().tolist(), list(LABELS))

    def graph(self) -> Graph:
        """What `rnnkit export` records: (frames (T, B, stack * F), lengths (B,)) ->
        log_probs (T, B, C) over `LABELS` (blank first), checked on the run's recordings; a
        client computes the frames as `frames` does and decodes (model.json: ``features``)."""
        try:
            recordings = audio.fsdd_recordings(self.cfg.data)[:8]
        except RnnkitError as err:
            raise RnnkitError(f"the export is checked on the run's recordings: {err}") from None
        examples = [frames(audio.wave_input(r.path, self.cfg.sample_rate, NAME), self.cfg)
                    for r in recordings]  # fmt: skip

        def samples(steps: int) -> dict[str, Tensor]:
            return dict(zip(("frames", "lengths"), ragged_batch(examples, steps)))

        axes = {"frames": {0: "T", 1: "B"}, "lengths": {0: "B"}, "log_probs": {0: "T", 1: "B"}}
        features = {"sample_rate": self.cfg.sample_rate, "stack": self.cfg.stack,
                    **asdict(self.cfg.feature_config())}  # fmt: skip
        metadata = {"symbols": list(LABELS), "blank": LABELS[0], "features": features}
        source = f"the run's recordings ({self.cfg.data})"
        return Graph(_LogPosteriors(self.model), samples(7), ["log_probs"], axes, metadata,
                     samples, source)  # fmt: skip


class _LogPosteriors(nn.Module):
    """(frames (T, B, F), lengths (B,)) -> log-probabilities (T, B, C) of the CTC symbols."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.model(x, lengths=lengths)[0].log_softmax(-1)


def load_predictor(run_dir: str | Path, checkpoint: str = "best") -> CTCPredictor:
    """The `CTCPredictor` of a run (`rnnkit.load`)."""
    return CTCPredictor(run_dir, checkpoint)


def transcribe(run_dir: str, wav: str, beam: int | None = None, checkpoint: str = "best") -> str:
    """The digits said in ``wav`` (prefix beam search of width ``beam``, 0: greedy; None: the
    run's width), as `rnnkit transcribe` prints them."""
    (result,) = CTCPredictor(run_dir, checkpoint).predict([wav], beam)
    return result.summary()


def format_report(report: dict[str, Any]) -> str:
    """The line `rnnkit train speech-ctc` prints after training."""
    return (f"test ({report['test_size']} utterances): digit error rate "
            f"{100 * report['test_der_greedy']:.2f}% greedy, {100 * report['test_der_beam']:.2f}% "
            f"prefix beam; alignment in {report['run_dir']}/alignment.png")  # fmt: skip


SPEC = TaskSpec(
    NAME,
    "",
    CTCConfig,
    DEFAULT_TRAIN,
    train,
    format_report,
    load_predictor,
    examples=("rnnkit train speech-ctc --out runs/ctc   # --data fsdd (rnnkit data fetch fsdd)",),
)
