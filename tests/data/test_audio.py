"""WAV reading (and its errors), features, SpecAugment, FSDD names and splits, joined digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.data import audio
from rnnkit.errors import RnnkitError


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000, channels: int = 1) -> Path:
    return audio.write_wav(path, samples, rate)


def tone(freq: float, seconds: float = 0.3, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_read_wav_round_trip(tmp_path):
    x = tone(440)
    y = audio.read_wav(write_wav(tmp_path / "a.wav", x), 8000)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() < 1e-4


def test_another_sample_rate_is_resampled_with_a_warning(tmp_path):
    path = write_wav(tmp_path / "hi.wav", tone(440, 0.5, 16000), rate=16000)
    with pytest.warns(UserWarning, match="16000 Hz; resampled to 8000 Hz"):
        y = audio.read_wav(path, 8000)
    assert abs(len(y) - 4000) <= 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_wav(p, np.zeros((800, 2)), channels=2), "2 channels; give a mono"),
        (lambda p: p.write_bytes(b""), "not a readable PCM WAV file"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00"), "not a readable PCM WAV file"),
        (lambda p: write_wav(p, np.zeros(0)), "holds no samples"),
        (lambda p: p.write_bytes(write_wav(p, tone(300)).read_bytes()[:1000]), "is truncated"),
        (lambda p: p.write_text("just text"), "not a readable PCM WAV file"),
    ],
    ids=["stereo", "empty", "header-cut", "no-samples", "truncated", "not-wav"],
)
def test_bad_wavs_are_clear_errors(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(RnnkitError, match=message):
        audio.read_wav(path, 8000)
    with pytest.raises(RnnkitError, match="does not exist"):
        audio.read_wav(tmp_path / "missing.wav", 8000)


@pytest.mark.parametrize("kind, size", [("logmel", 40), ("mfcc", 13)])
def test_features_are_deterministic_normalised_and_shaped(kind, size):
    cfg = audio.FeatureConfig(kind=kind, n_mels=40, n_mfcc=13)
    wave_ = tone(500, 0.5) + 0.01 * np.random.default_rng(0).standard_normal(4000).astype("f4")
    a, b = audio.features(wave_, cfg), audio.features(wave_.copy(), cfg)
    assert a.shape == (1 + 4000 // cfg.hop, size) == (51, size) and a.dtype == torch.float32
    assert torch.equal(a, b)
    torch.testing.assert_close(a.mean(0), torch.zeros(size), atol=1e-4, rtol=0)


def test_spec_augment_masks_follow_the_generator():
    x = torch.randn(50, 20)
    a = audio.spec_augment(x, torch.Generator().manual_seed(3), 2, 5, 2, 8)
    b = audio.spec_augment(x, torch.Generator().manual_seed(3), 2, 5, 2, 8)
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert ((a == 0) | (a == x)).all()


def test_fsdd_names_and_splits(tmp_path):
    for name in ("3_ann_0.wav", "3_ann_7.wav", "4_bob_2.wav", "4_bob_12.wav", "readme.txt"):
        (tmp_path / name).write_bytes(b"")
    found = audio.fsdd_recordings(tmp_path)
    assert [(r.digit, r.speaker, r.index) for r in found] == [
        (3, "ann", 0), (3, "ann", 7), (4, "bob", 12), (4, "bob", 2)]  # fmt: skip
    train, test = audio.fsdd_split(found, "standard")
    assert sorted(r.index for r in test) == [0, 2] and sorted(r.index for r in train) == [7, 12]
    train, test = audio.fsdd_split(found, "speaker:bob")
    assert {r.speaker for r in test} == {"bob"} and {r.speaker for r in train} == {"ann"}
    with pytest.raises(RnnkitError, match="no recordings of speaker 'eve'"):
        audio.fsdd_split(found, "speaker:eve")
    with pytest.raises(RnnkitError, match="no files named like"):
        audio.fsdd_recordings(tmp_path / "..")


def test_join_digits_puts_silences_around_each_digit():
    g = torch.Generator().manual_seed(0)
    joined = audio.join_digits([tone(300, 0.2), tone(600, 0.1)], 8000, g, gap_ms=(50, 50))
    assert len(joined) == 1600 + 800 + 3 * 400
    assert np.abs(joined[:400]).max() < 0.01 and np.abs(joined).max() == pytest.approx(0.5, 0.01)
