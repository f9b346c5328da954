"""Audio: reading WAV files, log-mel and MFCC features, SpecAugment masks, and the Free Spoken
Digit Dataset (FSDD) with its splits and its joined digit strings for CTC.

Features are computed by librosa (its mel filterbank and DCT; nothing hand-written here):

    wave (N,) float32 at ``sample_rate`` Hz
      -> STFT, window ``win_ms``, hop ``hop_ms`` (centred frames: T = 1 + N // hop)
      -> ``n_mels`` mel bands -> log(power + 1e-10)        "logmel": (T, n_mels)
      -> DCT, first ``n_mfcc`` coefficients                 "mfcc":   (T, n_mfcc)
      -> per-utterance normalisation: each feature to mean 0 and standard deviation 1 over T

Reading (`read_wav`): uncompressed PCM WAV (8/16/24/32-bit), mono. A stereo file, an empty or
truncated file, or one without samples is a `RnnkitError`. A file at another sample rate is
**resampled** (librosa, soxr) to the rate asked for, with a warning.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnkit.errors import RnnkitError

#: the registry's name of the Free Spoken Digit Dataset (`--data fsdd`: its recordings folder)
FSDD = "fsdd"
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
_PCM = {1: np.uint8, 2: np.int16, 4: np.int32}
MIN_RATE, MAX_RATE = 1000, 384_000  # sample rates (Hz) a WAV file may declare
MAX_WAV_BYTES = 1 << 30
"""Bytes of one WAV file (1 GiB, three hours of 16-bit mono at 48 kHz): an FSDD digit is 10 kB."""


def read_wav(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """The samples of a mono PCM WAV file as float32 in [-1, 1], shape (N,), at ``sample_rate``
    (resampled, with a warning, if the file has another rate). See the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise RnnkitError(f"audio file {path} does not exist; check the path")
    size = path.stat().st_size
    if size > MAX_WAV_BYTES:
        raise RnnkitError(f"{path} holds {size:,} bytes, more than the {MAX_WAV_BYTES:,} rnnkit "
                          "reads from one recording; cut it into shorter recordings")  # fmt: skip
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            declared = f.getnframes()
            data = f.readframes(min(declared, size))  # a header may declare more than is there
    except (wave.Error, EOFError, RuntimeError, ValueError, OverflowError, struct.error) as err:
        raise RnnkitError(f"{path} is not a readable PCM WAV file ({err or 'empty'}); give a "
                          "mono 16-bit PCM .wav (e.g. convert with: sox in.x -c 1 out.wav)"
                          ) from None  # fmt: skip
    if not MIN_RATE <= rate <= MAX_RATE:
        raise RnnkitError(f"{path} declares {rate} samples per second; a recording is read at "
                          f"{MIN_RATE} to {MAX_RATE} Hz (is the file damaged?)")  # fmt: skip
    if channels != 1:
        raise RnnkitError(f"{path} has {channels} channels; give a mono recording (e.g. mix it "
                          "down with: sox in.wav -c 1 out.wav)")  # fmt: skip
    frames = len(data) // (width * channels)
    if frames < declared:
        raise RnnkitError(f"{path} is truncated: its header declares {declared} samples, the "
                          f"file holds {frames}; re-export or re-copy the recording")  # fmt: skip
    if frames == 0:
        raise RnnkitError(f"{path} holds no samples; give a non-empty recording")
    samples = _pcm_to_float(data, width)
    if rate != sample_rate:
        import librosa

        warnings.warn(f"{path.name} is at {rate} Hz; resampled to {sample_rate} Hz", stacklevel=2)
        samples = librosa.resample(samples, orig_sr=rate, target_sr=sample_rate)
    return samples.astype(np.float32)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> Path:
    """Write samples (N,) mono or (N, channels), floats in [-1, 1], as a 16-bit PCM WAV."""
    samples = np.asarray(samples, dtype=np.float32)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1 if samples.ndim == 1 else samples.shape[1])
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return Path(path)


def _pcm_to_float(data: bytes, width: int) -> np.ndarray:
    """PCM bytes of ``width`` bytes per sample -> float32 in [-1, 1]."""
    if width == 3:  # 24-bit: pad each sample to 4 bytes, little-endian
        raw = np.frombuffer(data, np.uint8).reshape(-1, 3)
        padded = np.zeros((len(raw), 4), np.uint8)
        padded[:, 1:] = raw
        return padded.view("<i4").ravel().astype(np.float32) / 2.0**31
    if width not in _PCM:
        raise RnnkitError(f"{width * 8}-bit PCM is not supported; give 16-bit PCM")
    values = np.frombuffer(data, _PCM[width]).astype(np.float32)
    if width == 1:  # unsigned 8-bit
        return (values - 128.0) / 128.0
    return values / float(2 ** (8 * width - 1))


@dataclass
class FeatureConfig:
    """How a wave becomes features (stored in a run's config.json)."""

    sample_rate: int = 8000
    kind: str = "logmel"
    n_mels: int = 40
    n_mfcc: int = 13
    win_ms: float = 25.0
    hop_ms: float = 10.0

    def check(self) -> None:
        if self.kind not in ("logmel", "mfcc"):
            raise RnnkitError(f"features must be 'logmel' or 'mfcc', got {self.kind!r}")
        if self.sample_rate < 1000 or self.n_mels < 1 or self.n_mfcc < 1:
            raise RnnkitError(f"bad feature settings {asdict(self)}")
        if self.kind == "mfcc" and self.n_mfcc > self.n_mels:
            raise RnnkitError(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")

    @property
    def size(self) -> int:
        """F, features per frame."""
        return self.n_mels if self.kind == "logmel" else self.n_mfcc

    @property
    def hop(self) -> int:
        """Samples between frames."""
        return round(self.sample_rate * self.hop_ms / 1000)


def features(wave_: np.ndarray, cfg: FeatureConfig) -> Tensor:
    """Normalised features (T, F) float32 of a wave (N,), T = 1 + N // hop; see the module
    docstring. Deterministic: the same wave gives the same features."""
    import librosa

    win = round(cfg.sample_rate * cfg.win_ms / 1000)
    n_fft = 1 << (win - 1).bit_length()
    mel = librosa.feature.melspectrogram(
        y=wave_, sr=cfg.sample_rate, n_fft=n_fft, hop_length=cfg.hop, win_length=win,
        n_mels=cfg.n_mels, fmin=20.0, fmax=cfg.sample_rate / 2,
    )  # fmt: skip
    out = np.log(mel + 1e-10)  # (n_mels, T)
    if cfg.kind == "mfcc":
        out = librosa.feature.mfcc(S=out, n_mfcc=cfg.n_mfcc)
    out = (out - out.mean(1, keepdims=True)) / (out.std(1, keepdims=True) + 1e-5)
    return torch.from_numpy(np.ascontiguousarray(out.T, dtype=np.float32))


def spec_augment(
    x: Tensor, generator: torch.Generator, freq_masks: int = 2, freq_width: int = 6,
    time_masks: int = 2, time_width: int = 10,
) -> Tensor:  # fmt: skip
    """SpecAugment-style masking (Park et al. 2019) of normalised features (T, F): up to
    ``freq_masks`` bands of up to ``freq_width`` features and ``time_masks`` spans of up to
    ``time_width`` frames set to 0 (the mean). Returns a new tensor; randomness from
    ``generator``."""
    x = x.clone()
    steps, size = x.shape
    for width, masks, extent, dim in ((freq_width, freq_masks, size, 1),
                                      (time_width, time_masks, steps, 0)):  # fmt: skip
        for _ in range(masks):
            w = int(torch.randint(0, min(width, extent) + 1, (), generator=generator))
            start = int(torch.randint(0, extent - w + 1, (), generator=generator))
            x.narrow(dim, start, w).zero_()
    return x


# --- the Free Spoken Digit Dataset -------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """One FSDD file ``{digit}_{speaker}_{index}.wav``."""

    path: str
    digit: int
    speaker: str
    index: int


def fsdd_recordings(folder: str | os.PathLike) -> list[Recording]:
    """Every ``{digit}_{speaker}_{index}.wav`` in ``folder``, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RnnkitError(f"{folder} is not a folder; give the FSDD recordings folder "
                          f"(or the registry's data set: --data {FSDD})")  # fmt: skip
    found = []
    for path in sorted(folder.iterdir()):
        match = _FSDD_NAME.match(path.name)
        if match:
            digit, speaker, index = match.groups()
            found.append(Recording(str(path), int(digit), speaker, int(index)))
    if not found:
        raise RnnkitError(f"{folder} has no files named like 3_jackson_12.wav (digit_speaker_"
                          "index.wav); give the FSDD recordings folder")  # fmt: skip
    return found


def fsdd_split(recordings: list[Recording], split: str) -> tuple[list[Recording], list[Recording]]:
    """(train, test): ``split`` "standard" (index 0-4 is the test set) or "speaker:NAME" (NAME's
    recordings are the test set, the other speakers' train)."""
    if split == "standard":
        return [r for r in recordings if r.index >= 5], [r for r in recordings if r.index < 5]
    if split.startswith("speaker:"):
        name = split.split(":", 1)[1]
        if name not in {r.speaker for r in recordings}:
            raise RnnkitError(f"no recordings of speaker {name!r}; speakers: "
                              f"{', '.join(sorted({r.speaker for r in recordings}))}")  # fmt: skip
        return [r for r in recordings if r.speaker != name], [
            r for r in recordings if r.speaker == name
        ]
    raise RnnkitError(f"split must be 'standard' or 'speaker:NAME', got {split!r}")


def join_digits(
    waves: list[np.ndarray], sample_rate: int, generator: torch.Generator,
    gap_ms: tuple[float, float] = (50.0, 250.0), noise: float = 1e-3,
) -> np.ndarray:  # fmt: skip
    """One utterance from single-digit waves: each wave's peak scaled to a common level and the
    waves joined by silences of a random length in ``gap_ms`` (also before and after), filled
    with faint Gaussian noise (amplitude ``noise``) so the log features stay finite."""
    pieces = []
    for w in waves:
        pieces += [_silence(gap_ms, sample_rate, generator, noise), 0.5 * w / (abs(w).max() + 1e-9)]
    pieces.append(_silence(gap_ms, sample_rate, generator, noise))
    return np.concatenate(pieces).astype(np.float32)


def _silence(
    gap_ms: tuple[float, float], sample_rate: int, generator: torch.Generator, noise: float
) -> np.ndarray:
    low, high = (round(ms * sample_rate / 1000) for ms in gap_ms)
    n = int(torch.randint(low, high + 1, (), generator=generator))
    return (noise * torch.randn(n, generator=generator)).numpy()


def load_features(recordings: list[Recording], cfg: FeatureConfig) -> list[Tensor]:
    """The features (T_i, F) of each recording, read at ``cfg.sample_rate``."""
    return [features(read_wav(r.path, cfg.sample_rate), cfg) for r in recordings]


def wave_input(item: Any, sample_rate: int, task: str) -> np.ndarray:
    """The wave (N,) float32 of a predictor's input: a WAV file (a str or Path, read with
    `read_wav`, resampled to ``sample_rate`` with a warning) or a waveform already at
    ``sample_rate`` (a 1-D float numpy array or tensor, samples in [-1, 1])."""
    if isinstance(item, (str, os.PathLike)):
        if not str(item).strip():
            raise RnnkitError(f"an empty path; a {task} run takes WAV files or waveforms")
        return read_wav(item, sample_rate)
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray):
        raise RnnkitError(f"a {task} run takes WAV paths or waveforms (1-D float arrays at "
                          f"{sample_rate} Hz), got {type(item).__name__}")  # fmt: skip
    if item.ndim != 1 or item.size == 0 or not np.issubdtype(item.dtype, np.floating):
        raise RnnkitError(f"a waveform is a non-empty 1-D float array of samples in [-1, 1] at "
                          f"{sample_rate} Hz (mono), got {item.dtype} of shape "
                          f"{tuple(item.shape)}")  # fmt: skip
    if not np.isfinite(item).all():
        raise RnnkitError("the waveform holds NaN or infinite samples")
    return item.astype(np.float32)
