"""The charlm task end to end: overfitting, exact resume, evaluation, sampling, settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rnnkit.errors import RnnkitError
from rnnkit.tasks import charlm
from rnnkit.training.options import parse_duration
from rnnkit.training.trainer import Trainer

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved.\n"
)
TINY = {"hidden": 48, "layers": 1, "embed": 16, "seq_len": 24, "batch": 8, "dropout": 0.0}
QUIET = {"progress": "none", "eval_every": 50, "warmup": 5}


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT * 3)
    return path


def train(text_file, out, **flags):
    return charlm.train({"text": str(text_file), **TINY, **QUIET, **flags}, out=str(out))


def test_a_tiny_model_overfits_a_short_text(tmp_path, text_file):
    # one stream read in chunks with the state carried: every character has all its context
    flags = {"batching": "stream", "batch": 1, "log_every": 20, "hidden": 64, "lr": 1e-2}
    result = train(text_file, tmp_path / "run", max_steps=300, **flags)
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[0] > 2.5 and train_losses[-1] < 0.05  # from ~ln(V) to memorised
    assert result.final["loss"] < 1.0  # the validation part repeats text seen in training
    assert result.final["bits"] == pytest.approx(result.final["loss"] / 0.6931471805599453)


def test_stream_batching_resumes_exactly(tmp_path, text_file, monkeypatch):
    flags = {"max_steps": 12, "batching": "stream", "eval_every": 4, "log_every": 1}
    straight = train(text_file, tmp_path / "a", **flags)
    original = Trainer.fit

    def pause_at_5(self):
        self.callbacks.append(lambda t, r: r["step"] == 5 and t.request_stop())
        return original(self)

    monkeypatch.setattr(Trainer, "fit", pause_at_5)
    assert train(text_file, tmp_path / "b", **flags).step == 5
    monkeypatch.undo()
    resumed = charlm.train({"progress": "none"}, resume=str(tmp_path / "b"))
    assert resumed.step == 12 and resumed.final == straight.final
    losses = [
        [json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in "ab"
    ]
    assert losses[0] == losses[1]


def test_settings_file_with_flag_overrides(tmp_path, text_file):
    toml = tmp_path / "s.toml"
    toml.write_text(
        f'text = "{text_file}"\nhidden = 24\nmax-time = "1m"\nlayers = 1\nseq_len = 8\n'
    )
    result = charlm.train({"hidden": 20, "max_steps": 2, **QUIET}, str(toml), str(tmp_path / "r"))
    config = json.loads((tmp_path / "r/config.json").read_text())
    assert config["task_config"]["hidden"] == 20 and config["task_config"]["layers"] == 1
    assert config["train"]["max_time"] == 60.0 and result.step == 2
    toml.write_text("hiden = 3\n")
    with pytest.raises(RnnkitError, match="unknown setting\\(s\\) hiden"):
        charlm.train({}, str(toml), str(tmp_path / "r2"))
    with pytest.raises(RnnkitError, match="cannot change --hidden-size when resuming"):
        charlm.train({"hidden": 99}, resume=str(tmp_path / "r"))


def test_durations():
    assert parse_duration("15m") == 900 and parse_duration("1h30m") == 5400
    assert parse_duration("90") == 90 and parse_duration("2.5s") == 2.5
    with pytest.raises(RnnkitError, match="cannot read the duration 'soon'"):
        parse_duration("soon")


def test_sample_and_eval_of_a_run(tmp_path, text_file):
    train(text_file, tmp_path / "run", max_steps=30)
    run = str(tmp_path / "run")
    a = "".join(charlm.sample(run, "First", 40, seed=5))
    b = "".join(charlm.sample(run, "First", 40, seed=5))
    assert a == b and a.startswith("First") and len(a) == 45
    assert "".join(charlm.sample(run, "First", 40, seed=6)) != a
    default = "".join(charlm.sample(run, None, 10))
    assert len(default) == 10  # the line break it starts from is not echoed
    metrics = charlm.evaluate_file(run, str(text_file), split="valid")
    whole = charlm.evaluate_file(run, str(text_file))
    assert metrics["tokens"] == len(TEXT * 3) - round(len(TEXT * 3) * 0.9) - 1
    assert whole["tokens"] == len(TEXT * 3) - 1 and metrics["loss"] > 0
    with pytest.raises(RnnkitError, match=r"prompt has the character '\$'"):
        list(charlm.sample(run, "Speak$", 5))


def test_word_unit_uses_the_same_path(tmp_path, text_file):
    result = train(text_file, tmp_path / "w", unit="word", seq_len=8, max_steps=5)
    vocab = json.loads((tmp_path / "w/vocab.json").read_text())
    assert (
        vocab["unit"] == "word" and vocab["tokens"][0] == "<unk>" and "Citizen" in vocab["tokens"]
    )
    assert result.final["loss"] > 0
    text = "".join(charlm.sample(str(tmp_path / "w"), "First zebra", 5))
    assert text.startswith("First zebra")  # unknown words map to <unk> instead of failing


def test_text_too_short_for_the_window(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("abc" * 10)
    with pytest.raises(RnnkitError, match="fewer than --seq-len \\+ 2"):
        charlm.train({"text": str(short), **TINY}, out=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()
