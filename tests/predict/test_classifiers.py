"""`rnnkit.load` for the classifiers: structured answers, batches equal to single inputs, JSON,
threads, bad input."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import rnnkit
from rnnkit.cli import main
from rnnkit.errors import RnnkitError
from rnnkit.tasks.classify import Classification

GOOD = ["a wonderful moving film", "great acting and a great story", "i loved it", "superb fun"]
BAD = ["a dull boring mess", "terrible acting , awful story", "i hated it", "tedious junk"]
TINY = ["--hidden-size", "8", "--embed", "8", "--batch", "4", "--min-count", "1", "--folds", "4",
        "--max-steps", "6", "--eval-every", "3", "--log-every", "3", "--warmup", "2",
        "--progress", "none"]  # fmt: skip
TEXTS = ["a wonderful film", "tedious , dull and boring junk with awful acting", "fun", "zzz fun"]


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mr")
    (folder / "rt-polarity.pos").write_text("\n".join(GOOD * 2) + "\n")
    (folder / "rt-polarity.neg").write_text("\n".join(BAD * 2) + "\n")
    out = tmp_path_factory.mktemp("runs") / "mr"
    result = CliRunner().invoke(main, ["train", "sentiment", "--data", str(folder), "--out",
                                       str(out), *TINY])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_sentiment_answers_label_probabilities_and_attention(sentiment_run):
    predictor = rnnkit.load(sentiment_run)
    assert isinstance(predictor, rnnkit.Predictor) and predictor.task == "sentiment"
    results = predictor.predict(TEXTS)
    assert len(results) == len(TEXTS) and all(isinstance(r, Classification) for r in results)
    for text, result in zip(TEXTS, results):
        assert set(result.probabilities) == {"neg", "pos"}
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert result.label == max(result.probabilities, key=result.probabilities.get)
        assert result.tokens == text.split()
        assert len(result.attention) == len(result.tokens)
        assert sum(result.attention) == pytest.approx(1.0, abs=1e-5)
        json.dumps(result.to_dict(), allow_nan=False)


def test_a_batch_answers_what_each_input_answers_alone(sentiment_run):
    predictor = rnnkit.load(sentiment_run)
    together = predictor.predict(TEXTS)
    for text, batched in zip(TEXTS, together):
        (alone,) = predictor.predict([text])
        for c in alone.probabilities:
            assert batched.probabilities[c] == pytest.approx(alone.probabilities[c], abs=1e-5)
        assert batched.attention == pytest.approx(alone.attention, abs=1e-5)


def test_one_predictor_serves_threads(sentiment_run):
    predictor = rnnkit.load(sentiment_run, checkpoint="last")
    expected = [r.to_dict() for r in predictor.predict(TEXTS)]
    answers: list = []

    def ask() -> None:
        for _ in range(5):
            answers.append([r.to_dict() for r in predictor.predict(TEXTS)])

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 20
    for answer in answers:
        for got, want in zip(answer, expected):
            assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)


def test_bad_inputs_are_one_clear_error(sentiment_run, tmp_path):
    predictor = rnnkit.load(sentiment_run)
    with pytest.raises(RnnkitError, match="wrap one input in a list"):
        predictor.predict("a bare string")
    with pytest.raises(RnnkitError, match="at least one input"):
        predictor.predict([])
    with pytest.raises(RnnkitError, match="empty"):
        predictor.predict(["   "])
    with pytest.raises(RnnkitError, match="classifies texts"):
        predictor.predict([3])
    with pytest.raises(RnnkitError, match="checkpoint must be one of"):
        rnnkit.load(sentiment_run, checkpoint="first")
    with pytest.raises(RnnkitError):
        rnnkit.load(tmp_path)


def test_the_predict_command_answers_every_input_in_text_or_json(sentiment_run):
    texts = ["a wonderful film", "dull"]
    result = CliRunner().invoke(main, ["predict", str(sentiment_run), *texts, "--json"])
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.output.splitlines()]
    expected = rnnkit.load(sentiment_run).predict(texts)
    assert [a["label"] for a in answers] == [r.label for r in expected]
    assert answers[0]["tokens"] == ["a", "wonderful", "film"]
    plain = CliRunner().invoke(main, ["predict", str(sentiment_run), *texts])
    assert plain.exit_code == 0 and len(plain.output.splitlines()) == 2


def test_the_predict_command_refuses_what_does_not_apply(sentiment_run):
    for args, message in (([], "give at least one input (a text)"),
                          (["fine", "--horizon", "3"], "--horizon does not apply to sentiment"),
                          (["fine", "--checkpoint", "first"], "Invalid value")):  # fmt: skip
        result = CliRunner().invoke(main, ["predict", str(sentiment_run), *args])
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_export_writes_a_checked_model_and_its_description(sentiment_run, tmp_path, fmt):
    pytest.importorskip("onnxruntime", reason="the export extra: pip install onnxruntime")
    out = tmp_path / fmt
    result = CliRunner().invoke(main, ["export", str(sentiment_run), "--format", fmt, "--out",
                                       str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"to {out / f'model.{fmt}'}" in result.output
    described = json.loads((out / "model.json").read_text())
    assert described["task"] == "sentiment" and described["classes"] == ["neg", "pos"]
    inputs = [(d["name"], d["shape"]) for d in described["inputs"]]
    assert inputs == [("ids", ["T", "B"]), ("lengths", ["B"])]
    assert [d["name"] for d in described["outputs"]] == ["probabilities", "attention"]
    assert (
        "wonderful" in described["vocabulary"] and "the run's texts" in described["check"]["data"]
    )
    checks = described["check"]["lengths"]
    assert [c["steps"] for c in checks] == [12, 30]
    assert all(0 <= c["max_abs_diff"] <= 1e-4 for c in checks)


def test_the_onnx_model_answers_as_the_predictor_does(sentiment_run, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the export extra: pip install onnxruntime")
    from rnnkit.export import export_run
    from rnnkit.tasks.classify import pad

    predictor = rnnkit.load(sentiment_run)
    report = export_run(predictor, "onnx", tmp_path)
    session = ort.InferenceSession(report["path"])
    ids = [predictor.encode_input(t)[0] for t in TEXTS]
    x, lengths = pad(ids)
    probabilities, attention = session.run(None, {"ids": x.numpy(), "lengths": lengths.numpy()})
    for row, expected in enumerate(predictor.predict(TEXTS)):
        got = dict(zip(predictor.classes, probabilities[row].tolist()))
        assert got == pytest.approx(expected.probabilities, abs=1e-5)
        assert attention[: lengths[row], row].tolist() == pytest.approx(
            expected.attention, abs=1e-5
        )


def test_an_export_that_differs_is_refused_and_leaves_nothing(sentiment_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the export extra: pip install onnxruntime")
    from rnnkit import export

    monkeypatch.setattr(export, "TOLERANCE", -1.0)
    with pytest.raises(RnnkitError, match="differs from PyTorch by"):
        export.export_run(rnnkit.load(sentiment_run), "onnx", tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())
