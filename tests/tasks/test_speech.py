"""Spoken digits and CTC end to end on a tiny FSDD-like folder of tones; bad WAVs exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.data.audio import write_wav


def tone(freq: float, seconds: float = 0.3, rate: int = 8000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype("f4")


LOOP = ["--max-steps", "4", "--eval-every", "2", "--log-every", "2", "--warmup", "1",
        "--progress", "none"]  # fmt: skip
SMALL = ["--hidden-size", "8", "--num-layers", "1", "--batch", "4", *LOOP]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """2 speakers x 10 digits x recordings 0-8: a tone per digit, a pitch per speaker."""
    folder = tmp_path_factory.mktemp("fsdd")
    for s, speaker in enumerate(("ann", "bob")):
        for d in range(10):
            for i in range(9):
                wave_ = tone(200 + 150 * d + 40 * s, 0.12 + 0.01 * i)
                write_wav(folder / f"{d}_{speaker}_{i}.wav", wave_, 8000)
    return folder


@pytest.fixture(scope="module")
def run(recordings, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "digits"
    args = ["train", "speech-digits", "--data", str(recordings), "--out", str(out), *SMALL]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "test (best checkpoint, 100 examples): accuracy" in result.output
    return out


def test_digits_run_and_predict(run, recordings):
    assert json.loads((run / "test.json").read_text())["test_size"] == 100
    result = CliRunner().invoke(main, ["predict", str(run), str(recordings / "3_ann_0.wav")])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"\d 0\.\d{3}  \(0 0\.\d{3}, .*\)\n", result.output)


def test_leave_one_speaker_out_runs_every_speaker(recordings, tmp_path):
    out = tmp_path / "loso"
    args = ["train", "speech-digits", "--data", str(recordings), "--loso", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, *SMALL])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["partitions"]) == ["speaker-ann", "speaker-bob"]
    assert all(p["test_size"] == 90 for p in summary["partitions"].values())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_wav(p, np.zeros((800, 2)), 8000), "2 channels; give a mono"),
        (lambda p: p.write_bytes(b""), "not a readable PCM WAV file"),
        (lambda p: p.write_bytes(write_wav(p, tone(300), 8000).read_bytes()[:900]), "is truncated"),
    ],
    ids=["stereo", "empty", "truncated"],
)
def test_bad_wavs_exit_2_with_one_line(run, tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    result = CliRunner().invoke(main, ["predict", str(run), str(path)])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_other_sample_rate_is_resampled(run, tmp_path):
    path = write_wav(tmp_path / "hi.wav", tone(650, 0.2, 16000), 16000)
    result = CliRunner().invoke(main, ["predict", str(run), str(path)])
    assert result.exit_code == 0 and "resampled to 8000 Hz" in result.output


def test_ctc_trains_tests_and_transcribes(recordings, tmp_path):
    out = tmp_path / "ctc"
    args = ["train", "speech-ctc", "--data", str(recordings), "--out", str(out),
            "--hidden-size", "8", "--num-layers", "1", "--batch", "2", "--max-digits", "3",
            "--test-size", "3", "--valid-size", "2", *LOOP]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "digit error rate" in result.output and (out / "alignment.png").is_file()
    report = json.loads((out / "test.json").read_text())
    assert report["test_size"] == 3 and report["test_der_beam"] >= 0
    said = CliRunner().invoke(main, ["transcribe", str(out), str(recordings / "3_ann_0.wav")])
    assert said.exit_code == 0 and re.fullmatch(r"\d*\n", said.output)


def test_missing_data_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["train", "speech-digits", "--data", str(tmp_path), *LOOP])
    assert result.exit_code == 2 and "no files named like 3_jackson_12.wav" in result.output


def test_real_fsdd_names_and_standard_split(dataset):
    from rnnkit.data import audio

    found = audio.fsdd_recordings(dataset("fsdd") / "recordings")
    train, test = audio.fsdd_split(found, "standard")
    assert len(found) == 2500 and len(test) == 250 and len(train) == 2250
    assert audio.read_wav(found[0].path, 8000).ndim == 1
