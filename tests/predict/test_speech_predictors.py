"""`rnnkit.load` for speech-digits and speech-ctc: WAV files or waveforms in, structured answers
out (features as training computes them), batches equal to single recordings, the CLI's lines,
JSON, and bad recordings as one `RnnkitError`."""

from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import rnnkit
from rnnkit.cli import main
from rnnkit.data import audio
from rnnkit.errors import RnnkitError
from rnnkit.models import ctc
from rnnkit.tasks import speech, speech_ctc
from rnnkit.tasks.classify import Classification

RATE = 8000
LOOP = ["--max-steps", "4", "--eval-every", "2", "--log-every", "2", "--warmup", "1",
        "--hidden-size", "8", "--num-layers", "1", "--batch", "2",
        "--progress", "none"]  # fmt: skip
NAMES = ["3_ann_0.wav", "7_bob_8.wav", "0_ann_4.wav", "9_bob_2.wav"]  # 0.12 to 0.20 s


def tone(freq: float, seconds: float, rate: int = RATE) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype("f4")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """2 speakers x 10 digits x recordings 0-8 (0.12 s + 10 ms per index): a tone per digit."""
    folder = tmp_path_factory.mktemp("fsdd")
    for s, speaker in enumerate(("ann", "bob")):
        for d in range(10):
            for i in range(9):
                audio.write_wav(folder / f"{d}_{speaker}_{i}.wav",
                                tone(200 + 150 * d + 40 * s, 0.12 + 0.01 * i), RATE)  # fmt: skip
    return folder


def train(task: str, recordings: Path, out: Path, *extra: str) -> Path:
    args = ["train", task, "--data", str(recordings), "--out", str(out), *LOOP, *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def digits_run(recordings, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "digits"
    return train("speech-digits", recordings, out, "--pooling", "attention")


@pytest.fixture(scope="module")
def ctc_run(recordings, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ctc"
    extra = ["--max-digits", "2", "--test-size", "2", "--valid-size", "2"]
    return train("speech-ctc", recordings, out, *extra)


def paths(recordings: Path) -> list[Path]:
    return [recordings / name for name in NAMES]


def assert_same(got, want, tolerance: float = 1e-6) -> None:
    """Two answers (`Classification` or `Transcription`) equal: the same label or text, their
    numbers within ``tolerance``."""
    got, want = got.to_dict(), want.to_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key in ("probabilities", "attention", "posteriors") and value is not None:
            flat = list(value.values()) if isinstance(value, dict) else value
            other = list(got[key].values()) if isinstance(value, dict) else got[key]
            torch.testing.assert_close(torch.tensor(other), torch.tensor(flat), atol=tolerance,
                                       rtol=0)  # fmt: skip
        else:
            assert got[key] == value, key


# --- speech-digits -------------------------------------------------------------------------------


def test_digits_answer_label_probabilities_and_attention_per_frame(digits_run, recordings):
    predictor = rnnkit.load(digits_run)
    assert isinstance(predictor, speech.SpeechPredictor) and predictor.task == "speech-digits"
    results = predictor.predict([str(p) for p in paths(recordings)])
    hop = predictor.cfg.feature_config().hop
    for path, result in zip(paths(recordings), results):
        assert isinstance(result, Classification) and result.tokens is None
        assert list(result.probabilities) == speech.DIGITS
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert result.label == max(result.probabilities, key=result.probabilities.get)
        frames = 1 + len(audio.read_wav(path, RATE)) // hop
        assert len(result.attention) == frames
        assert sum(result.attention) == pytest.approx(1.0, abs=1e-5)
        json.dumps(result.to_dict(), allow_nan=False)


def test_digits_features_are_the_training_features(digits_run, recordings):
    """Probabilities equal the model's on the features training computes (`load_features`)."""
    predictor = speech.load_predictor(digits_run)
    model, cfg = predictor.model, predictor.cfg
    found = {Path(r.path).name: r for r in audio.fsdd_recordings(recordings)}
    chosen = [found[name] for name in NAMES]
    results = predictor.predict(paths(recordings))
    for x, result in zip(audio.load_features(chosen, cfg.feature_config()), results):
        probs, alpha = model.predict(x.unsqueeze(1))
        assert list(result.probabilities.values()) == pytest.approx(probs[0].tolist(), abs=1e-5)
        assert result.attention == pytest.approx(alpha[:, 0].tolist(), abs=1e-5)


def test_predict_command_prints_the_predictors_answers(digits_run, recordings):
    two = [str(p) for p in paths(recordings)[:2]]
    results = rnnkit.load(digits_run).predict(two)
    for flag, shown in (([], "summary"), (["--explain"], "explained")):
        printed = CliRunner().invoke(main, ["predict", str(digits_run), *two, *flag])
        assert printed.exit_code == 0, printed.output
        assert printed.output == "".join(getattr(r, shown)() + "\n" for r in results)
    first = results[0].explained().splitlines()
    assert first[0].startswith(f"{results[0].label} ") and first[-1].endswith(" frame 12")
    printed = CliRunner().invoke(main, ["predict", str(digits_run), *two, "--json"])
    answers = [json.loads(line) for line in printed.output.splitlines()]
    for answer, result in zip(answers, results):
        assert answer["label"] == result.label and answer["tokens"] is None
        assert answer["attention"] == pytest.approx(result.attention, abs=1e-7)


# --- speech-ctc ----------------------------------------------------------------------------------


def test_ctc_answers_text_posteriors_and_symbols(ctc_run, recordings):
    predictor = rnnkit.load(ctc_run)
    assert isinstance(predictor, speech_ctc.CTCPredictor) and predictor.task == "speech-ctc"
    cfg = predictor.cfg
    for beam in (None, 0, 5):
        for path, result in zip(paths(recordings), predictor.predict(paths(recordings), beam)):
            assert isinstance(result, speech_ctc.Transcription)
            assert result.symbols == ["_", *"0123456789"]
            frames = 1 + len(audio.read_wav(path, RATE)) // cfg.feature_config().hop
            assert len(result.posteriors) == math.ceil(frames / cfg.stack)
            for row in result.posteriors:
                assert len(row) == 11 and sum(row) == pytest.approx(1.0, abs=1e-5)
            log_probs = torch.tensor(result.posteriors).log()
            width = cfg.beam if beam is None else beam
            if width:
                labels = ctc.prefix_beam_search(log_probs, width)
            else:
                labels = ctc.greedy_decode(log_probs)
            assert result.text == "".join(result.symbols[k] for k in labels)
            assert re.fullmatch(r"\d*", result.text) and result.summary() == result.text
            json.dumps(result.to_dict(), allow_nan=False)


def test_ctc_posteriors_are_the_models_on_training_frames(ctc_run, recordings):
    predictor = speech_ctc.load_predictor(ctc_run)
    model, cfg = predictor.model, predictor.cfg
    path = recordings / NAMES[2]
    with torch.no_grad():
        (log_probs,) = speech_ctc.posteriors(model, [speech_ctc.frames(audio.read_wav(path, RATE),
                                                                       cfg)])  # fmt: skip
    (result,) = predictor.predict([path])
    torch.testing.assert_close(torch.tensor(result.posteriors), log_probs.exp(), atol=1e-6,
                               rtol=0)  # fmt: skip


def test_transcribe_and_predict_commands_print_the_predictors_text(ctc_run, recordings):
    predictor = rnnkit.load(ctc_run)
    path = str(recordings / NAMES[0])
    for beam in ([], ["--beam", "0"], ["--beam", "2"]):
        width = int(beam[1]) if beam else None
        printed = CliRunner().invoke(main, ["transcribe", str(ctc_run), path, *beam])
        assert printed.exit_code == 0, printed.output
        assert printed.output == predictor.predict([path], width)[0].text + "\n"
    printed = CliRunner().invoke(main, ["predict", str(ctc_run), path, "--json"])
    assert printed.exit_code == 0, printed.output
    assert_same(speech_ctc.Transcription(**json.loads(printed.output)),
                predictor.predict([path])[0])  # fmt: skip


def test_one_ctc_predictor_serves_threads(ctc_run, recordings):
    predictor = rnnkit.load(ctc_run, checkpoint="last")
    expected = predictor.predict(paths(recordings))
    answers: list = []

    def ask() -> None:
        for _ in range(3):
            answers.append(predictor.predict(paths(recordings)))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 9
    for answer in answers:
        for got, want in zip(answer, expected):
            assert_same(got, want)


# --- both ----------------------------------------------------------------------------------------


def steps(result) -> int:
    """How many steps the model read: attention weights or posterior rows."""
    return len(getattr(result, "attention", None) or result.posteriors)


@pytest.mark.parametrize("run_name", ["digits_run", "ctc_run"])
def test_a_batch_answers_what_each_recording_answers_alone(run_name, request, recordings):
    predictor = rnnkit.load(request.getfixturevalue(run_name))
    together = predictor.predict(paths(recordings))
    assert len({steps(r) for r in together}) > 2  # unequal lengths, padded
    for path, batched in zip(paths(recordings), together):
        (alone,) = predictor.predict([path])
        assert_same(batched, alone, tolerance=1e-5)


@pytest.mark.parametrize("run_name", ["digits_run", "ctc_run"])
def test_a_waveform_answers_what_its_wav_file_answers(run_name, request, recordings):
    predictor = rnnkit.load(request.getfixturevalue(run_name))
    path = recordings / NAMES[1]
    wave = audio.read_wav(path, RATE)
    inputs = [str(path), wave, torch.from_numpy(wave), wave.astype(np.float64)]
    from_file, *from_waves = predictor.predict(inputs)
    for result in from_waves:
        assert_same(result, from_file)


# --- both: bad inputs ----------------------------------------------------------------------------


BAD_FILES = {
    "missing": (lambda p: None, "does not exist"),
    "not a WAV": (lambda p: p.write_text("hello, not audio\n"), "not a readable PCM WAV"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable PCM WAV"),
    "stereo": (lambda p: audio.write_wav(p, np.zeros((800, 2)), RATE), "2 channels"),
}
BAD_INPUTS = [
    ("", "an empty path"),
    (3, "takes WAV paths or waveforms.*got int"),
    (b"RIFF", "got bytes"),
    (np.zeros((800, 2), np.float32), r"1-D float array.*shape \(800, 2\)"),
    (np.zeros(0, np.float32), r"shape \(0,\)"),
    ((np.ones(800) * 1000).astype(np.int16), "got int16"),
    (np.full(800, np.nan, np.float32), "NaN or infinite"),
    (torch.zeros(2, 400), r"shape \(2, 400\)"),
]


@pytest.mark.parametrize("run_name", ["digits_run", "ctc_run"])
def test_bad_inputs_are_one_clear_error(run_name, request, tmp_path):
    predictor = rnnkit.load(request.getfixturevalue(run_name))
    cases = [([item], message) for item, message in BAD_INPUTS]
    cases += [("a.wav", "wrap one input in a list"), ([], "at least one input")]
    for name, (make, message) in BAD_FILES.items():
        path = tmp_path / f"{name}.wav"
        make(path)
        cases.append(([path], message))
    for inputs, message in cases:
        with pytest.raises(RnnkitError, match=message) as caught:
            predictor.predict(inputs)
        assert "\n" not in str(caught.value), str(caught.value)


def test_ctc_beam_must_be_a_width(ctc_run, recordings):
    predictor = rnnkit.load(ctc_run)
    for beam in (-1, 1.5, True, "3"):
        with pytest.raises(RnnkitError, match="beam must be an integer >= 0"):
            predictor.predict([recordings / NAMES[0]], beam)


@pytest.mark.parametrize("run_name", ["digits_run", "ctc_run"])
def test_other_sample_rate_is_resampled_with_a_warning(run_name, request, tmp_path):
    predictor = rnnkit.load(request.getfixturevalue(run_name))
    path = audio.write_wav(tmp_path / "hi.wav", tone(650, 0.2, 16000), 16000)
    with pytest.warns(UserWarning, match="resampled to 8000 Hz"):
        from_file, from_wave = predictor.predict([path, audio.read_wav(path, RATE)])
    assert_same(from_file, from_wave)


def test_speech_digits_export_to_onnx_is_checked_on_its_recordings(digits_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra: pip install onnxruntime")
    result = CliRunner().invoke(main, ["export", str(digits_run), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "model.json").read_text())
    assert described["task"] == "speech-digits" and described["classes"] == list("0123456789")
    assert [d["name"] for d in described["inputs"]] == ["features", "lengths"]
    assert described["features"]["sample_rate"] == RATE
    assert "the run's recordings" in described["check"]["data"]
    assert all(c["max_abs_diff"] <= 1e-4 for c in described["check"]["lengths"])


def test_speech_ctc_export_gives_the_log_posteriors(ctc_run, recordings, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the export extra: pip install onnxruntime")
    from rnnkit.export import export_run
    from rnnkit.tasks.classify import pad
    from rnnkit.tasks.speech_ctc import frames

    predictor = rnnkit.load(ctc_run)
    report = export_run(predictor, "onnx", tmp_path)
    assert report["symbols"][0] == report["blank"] and len(report["symbols"]) == 11
    waves = paths(recordings)[:3]
    xs = [frames(audio.read_wav(p, RATE), predictor.cfg) for p in waves]
    x, lengths = pad(xs)
    session = ort.InferenceSession(report["path"])
    (log_probs,) = session.run(None, {"frames": x.numpy(), "lengths": lengths.numpy()})
    for b, answer in enumerate(predictor.predict(waves)):
        got = np.exp(log_probs[: lengths[b], b])
        np.testing.assert_allclose(got, np.array(answer.posteriors), atol=1e-5)
