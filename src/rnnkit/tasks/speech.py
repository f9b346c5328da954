"""Spoken digits: one recording of a digit in, the digit (0-9) out (FSDD).

Data: the Free Spoken Digit Dataset (`rnnkit.data.audio.fsdd_recordings`), 5 speakers x 10 digits
x 50 recordings. ``split`` "standard": recordings 0-4 of each digit and speaker are the test set;
"speaker:NAME": NAME's recordings are the test set and the four other speakers train
(``--loso`` runs every speaker in turn). ``valid_fraction`` of the training recordings
(stratified by digit) validates.
Features: log-mel or MFCC frames (librosa), 25 ms windows every 10 ms, normalised per utterance;
SpecAugment-style time and frequency masks on the training examples (``specaugment``).
Model: `SequenceClassifier` on the feature frames. Metric: accuracy on the test recordings.
Prediction: `SpeechPredictor` (`rnnkit.load`): WAV files or waveforms -> a `Classification` each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rnnkit.data import audio, registry
from rnnkit.errors import RnnkitError
from rnnkit.models.classifier import POOLINGS
from rnnkit.tasks import classify
from rnnkit.tasks.classify import ClassifierSettings, ClassifyTask, Split
from rnnkit.tasks.common import stamp
from rnnkit.tasks.spec import Flag, TaskSpec
from rnnkit.training.options import choice, path
from rnnkit.training.runs import load_run
from rnnkit.training.trainer import TrainConfig

NAME = "speech-digits"
DIGITS = [str(d) for d in range(10)]


@dataclass
class SpeechConfig(ClassifierSettings):
    """Everything that rebuilds the data split, the features and the model (config.json).

    Attributes:
        data: FSDD recordings folder ({digit}_{speaker}_{index}.wav) or a data set.
        split: standard (index 0-4 tests) or speaker:NAME (that speaker tests).
        features: The features of each frame.
        sample_rate: Recordings are resampled to this rate (Hz).
        n_mels: Mel bands.
        n_mfcc: MFCC coefficients.
        specaugment: SpecAugment masks on the training features.
        split_seed: Seed of the validation part.
    """

    data: str = path(audio.FSDD)
    split: str = "standard"
    features: str = choice("mfcc", ("mfcc", "logmel"))
    sample_rate: int = 8000
    n_mels: int = 40
    n_mfcc: int = 20
    specaugment: bool = True
    split_seed: int = 0
    pooling: str = choice("mean", POOLINGS)
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.2

    def check(self) -> None:
        self.check_model()
        if not self.data:
            raise RnnkitError(f"no recordings: give --data (a folder, or {audio.FSDD})")
        self.feature_config().check()

    def feature_config(self) -> audio.FeatureConfig:
        return audio.FeatureConfig(self.sample_rate, self.features, self.n_mels, self.n_mfcc)


#: training defaults of `rnnkit train speech-digits` (2,000 training recordings, 1.8k after
#: validation is held out)
DEFAULT_TRAIN = TrainConfig(lr=3e-3, weight_decay=0.01, warmup_steps=50, clip=1.0,
                            max_epochs=20, eval_every=60, log_every=20, patience=8)  # fmt: skip


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SpecAugment masks scaled to FSDD's short utterances (two bands, two spans)."""
    return audio.spec_augment(x, generator, 2, max(1, x.shape[1] // 8), 2, 8)


def make_task(cfg: SpeechConfig) -> ClassifyTask:
    """Read the recordings, split them, compute the features."""
    cfg.check()
    recordings = audio.fsdd_recordings(cfg.data)
    train, test = audio.fsdd_split(recordings, cfg.split)
    fcfg = cfg.feature_config()

    def encoded(chosen: list[audio.Recording]) -> Split:
        labels = torch.tensor([r.digit for r in chosen], dtype=torch.long)
        return Split(audio.load_features(chosen, fcfg), labels)

    rest, valid = classify.hold_out(encoded(train), cfg.valid_fraction, cfg.split_seed)
    splits = {"train": rest, "valid": valid, "test": encoded(test)}
    return ClassifyTask(NAME, cfg, {"features": fcfg.size}, DIGITS, splits,
                        augment=augment if cfg.specaugment else None)  # fmt: skip


def train(
    flags: dict[str, Any], config_file: str | None = None, out: str | None = None,
    resume: str | None = None, loso: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Train and test one split (a run), or with ``loso`` one run per speaker into ``out``
    (default runs/speech-loso-DATE-TIME) and summarise."""

    def run(extra: dict[str, Any], run_out: str | None) -> dict[str, Any]:
        values = {**flags, **extra}
        return classify.train_and_test(NAME, SpeechConfig, make_task, DEFAULT_TRAIN, values,
                                       config_file, run_out, resume)  # fmt: skip

    if not loso:
        return run({}, out)
    if resume is not None or flags.get("split") is not None:
        raise RnnkitError("--loso trains one run per speaker anew: drop --resume and --split")
    folder = registry.resolve(flags.get("data") or SpeechConfig.data)
    speakers = sorted({r.speaker for r in audio.fsdd_recordings(folder)})
    base = Path(out) if out else Path("runs") / stamp("speech-loso")
    splits = {f"speaker-{s}": f"speaker:{s}" for s in speakers}
    return classify.partitioned(splits, "split", base, run)


class SpeechPredictor(classify.ClassifierPredictor):
    """A trained speech-digits run: ``predict([wav_path_or_waveform, ...])`` -> a
    `Classification` per recording (label "0".."9"), with the attention weight of each feature
    frame (one every ``hop_ms``) for a run that pools by attention."""

    task = NAME
    takes = "a WAV file or a waveform"

    def __init__(self, run_dir: str | Path, checkpoint: str = "best") -> None:
        def build(cfg: SpeechConfig, _: dict) -> torch.nn.Module:
            return classify.build_classifier(cfg, 10, features=cfg.feature_config().size)

        classes = {"classes": lambda saved: saved}  # stored for reading; the digits are fixed
        run = load_run(run_dir, NAME, SpeechConfig, build, checkpoint, entries=classes)
        self.cfg = run.settings
        super().__init__(run_dir, run.config, checkpoint, run.model, DIGITS)

    def encode_input(self, item: Any) -> tuple[torch.Tensor, None]:
        """The (T, F) feature frames of a recording, as training computes them."""
        wave = audio.wave_input(item, self.cfg.sample_rate, NAME)
        return audio.features(wave, self.cfg.feature_config()), None

    def graph(self) -> classify.Graph:
        """What `rnnkit export` records: (features (T, B, F), lengths (B,)) -> probabilities
        (B, 10) and attention (T, B), checked on the run's own recordings; a client computes
        the features as `rnnkit.data.audio.features` does (model.json: ``features``)."""
        try:
            recordings = audio.fsdd_recordings(self.cfg.data)[:8]
        except RnnkitError as err:
            raise RnnkitError(f"the export is checked on the run's recordings: {err}") from None
        examples = [self.encode_input(r.path)[0] for r in recordings]
        features = {"sample_rate": self.cfg.sample_rate, **asdict(self.cfg.feature_config())}
        source = f"the run's recordings ({self.cfg.data})"
        return classify.classifier_graph(self, examples, source, {"features": features})


def load_predictor(run_dir: str | Path, checkpoint: str = "best") -> SpeechPredictor:
    """The `SpeechPredictor` of a run (`rnnkit.load`)."""
    return SpeechPredictor(run_dir, checkpoint)


SPEC = TaskSpec(
    NAME,
    "",
    SpeechConfig,
    DEFAULT_TRAIN,
    train,
    classify.format_result,
    load_predictor,
    out=f"runs/{NAME}-DATE-TIME; with --loso, the folder of its runs runs/speech-loso-DATE-TIME",
    extras=(Flag("loso", "Leave one speaker out, each in turn (runs in --out); mean and std."),),
    examples=(
        "rnnkit data fetch fsdd                        # once: the data set, sha256 checked",
        "rnnkit train speech-digits --out runs/fsdd    # --data fsdd",
        "rnnkit train speech-digits --loso",
    ),
)
