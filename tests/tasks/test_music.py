"""The music task end to end: the NLL metric, training, eval, compose, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mido
import pytest
import torch
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.data.music import midi_bytes, read_midi, roll_from_pitches
from rnnkit.errors import RnnkitError
from rnnkit.tasks import music

CHORDS = [[60, 64, 67], [62, 65, 69], [59, 62, 67], [60, 64, 67, 72]]
TINY = {"hidden": 24, "batch": 4, "nade_hidden": 8, "dropout": 0.0, "input_dropout": 0.0}
QUIET = {"progress": "none", "eval_every": 5, "log_every": 5, "warmup": 2}


def piece(offset: int, length: int) -> list[list[int]]:
    return [CHORDS[(offset + t) % 4] for t in range(length)]


@pytest.fixture(scope="module")
def jsb(tmp_path_factory) -> Path:
    doc = {split: [piece(i, 6 + i % 5) for i in range(n)]
           for split, n in (("train", 10), ("valid", 3), ("test", 4))}  # fmt: skip
    path = tmp_path_factory.mktemp("data") / "tiny.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def run(jsb, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "nade"
    music.train({"data": str(jsb), "head": "nade", **TINY, **QUIET, "max_steps": 10}, out=str(out))
    return out


def test_nll_per_frame_equals_a_hand_computation():
    # two pieces, lengths 3 and 2, two keys; logits chosen so each probability is simple
    frames = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]
    )  # fmt: skip  (T=3, B=2, K=2)
    logits = torch.zeros(3, 2, 2)  # p = 1/2 everywhere ...
    logits[1, 0] = torch.tensor([math.log(3.0), 0.0])  # ... but p(key 0) = 3/4 at t=1 in piece 0
    total, count = music.nll_sum(logits, frames, torch.tensor([3, 2]))
    # scored: piece 0 frames 1, 2 and piece 1 frame 1 (first frames and padding are not)
    by_hand = -(math.log(0.75) + math.log(0.5)) + 2 * math.log(2) + 2 * math.log(2)
    assert count == 3 and float(total) == pytest.approx(by_hand)
    total, count = music.nll_sum(logits, frames, torch.tensor([3, 2]), skip_first=False)
    assert count == 5 and float(total) == pytest.approx(by_hand + 4 * math.log(2))


def test_training_evaluates_the_validation_nll_per_frame(run, jsb):
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["split"] == "valid"]
    assert valid and all(r["frames"] == 3 * 7 - 3 for r in valid)  # lengths 6, 7, 8
    assert valid[-1]["loss"] < valid[0]["loss"] < 88 * math.log(2)
    metrics = music.evaluate_file(str(run))
    assert metrics["pieces"] == 4 and metrics["frames"] == sum(6 + i % 5 - 1 for i in range(4))
    assert music.evaluate_file(str(run), str(jsb), "valid", "best")["loss"] == pytest.approx(
        min(r["loss"] for r in valid if not r.get("final"))
    )


def test_eval_command_reports_the_test_nll(run):
    result = CliRunner().invoke(main, ["eval", str(run)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("4 pieces, 26 frames scored: NLL ")
    bad = CliRunner().invoke(main, ["eval", str(run), "--text", "x.txt"])
    assert bad.exit_code == 2 and "--text does not apply to a 'music' run" in bad.stderr


def test_compose_with_a_fixed_seed_is_reproducible(run, tmp_path):
    args = ["compose", str(run), "--frames", "12", "--tempo", "90", "--seed", "3"]
    runner = CliRunner()
    for name in ("a", "b"):
        result = runner.invoke(main, [*args, "--out", str(tmp_path / f"{name}.mid")])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    other = music.compose(str(run), str(tmp_path / "c.mid"), frames=12, tempo=90, seed=4)
    assert (tmp_path / "c.mid").read_bytes() != (tmp_path / "a.mid").read_bytes()
    midi = mido.MidiFile(tmp_path / "a.mid")  # a real MIDI file: tempo, notes, 12 frames
    assert midi.length <= 12 * 60 / 90 + 1e-3 and other["frames"] == 12


def test_compose_continues_a_primer(run, tmp_path):
    primer = roll_from_pitches(piece(0, 5))[0]
    (tmp_path / "p.mid").write_bytes(midi_bytes(primer))
    made = music.compose(str(run), str(tmp_path / "out.mid"), 8, prime=str(tmp_path / "p.mid"))
    assert made["prime_frames"] == 5
    assert torch.equal(read_midi(tmp_path / "out.mid")[:5], primer)
    with pytest.raises(RnnkitError, match="must name a .mid file"):
        music.compose(str(run), str(tmp_path / "out.wav"))
    with pytest.raises(RnnkitError, match="does not exist"):
        music.compose(str(run), str(tmp_path / "no/such/dir/x.mid"))


def test_resume_continues_and_refuses_a_changed_model(jsb, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    music.train({"data": str(jsb), **TINY, **QUIET, "max_steps": 4}, out=out)
    with pytest.raises(RnnkitError, match="cannot change --hidden-size when resuming"):
        music.train({"hidden": 99}, resume=out)
    resumed = music.train({"data": str(jsb), "max_steps": 6, "progress": "none"}, resume=out)
    assert resumed.step == 6
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "empty"))  # the default data set: absent
    with pytest.raises(RnnkitError, match="data set 'jsb-chorales' is not here; fetch it with "
                       "`rnnkit data fetch jsb-chorales`"):  # fmt: skip
        music.train({"max_steps": 1}, out=str(tmp_path / "other"))
    with pytest.raises(RnnkitError, match="no music to train on: give --data"):
        music.train({"data": "", "max_steps": 1}, out=str(tmp_path / "other"))


def test_the_default_data_is_the_jsb_data_set_of_the_registry(dataset, tmp_path):
    """`rnnkit data import jsb-chorales FILE`, then `rnnkit train music` without --data."""
    jsb = dataset("jsb-chorales")  # imported into the session's $RNNKIT_DATA (or skipped)
    args = ["--hidden-size", "8", "--batch", "4", "--max-steps", "2", "--eval-every", "2",
            "--log-every", "1", "--warmup", "1", "--progress", "none"]  # fmt: skip
    result = CliRunner().invoke(main, ["train", "music", *args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["task_config"]["data"] == str(jsb / "jsb-chorales-quarter.json")


def write_song(path: Path, pitches: list[int]) -> None:
    track = mido.MidiTrack()
    for p in pitches:
        track += [mido.Message("note_on", note=p, velocity=64, time=0),
                  mido.Message("note_off", note=p, velocity=0, time=96)]  # fmt: skip
    mido.MidiFile(ticks_per_beat=96, tracks=[track]).save(path)


def test_bad_input_is_one_line_and_exit_status_2(tmp_path):
    runner = CliRunner()
    train = ["train", "music", "--max-steps", "2", "--progress", "none", "--hidden-size", "8"]
    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, [*train, "--data", str(tmp_path / "empty")])
    assert result.exit_code == 2 and result.stderr.startswith("error: no MIDI files")
    songs = tmp_path / "songs"
    songs.mkdir()
    for i in range(3):
        write_song(songs / f"{i}.mid", [60, 62, 64, 110])  # 110 lies above the keyboard
    out = tmp_path / "run"
    result = runner.invoke(main, [*train, "--data", str(songs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning:") == 3 and "dropped 1 note(s)" in result.stderr
    mido.MidiFile(tracks=[mido.MidiTrack()]).save(songs / "3.mid")  # no notes
    result = runner.invoke(main, [*train, "--data", str(songs)])
    assert result.exit_code == 2 and result.stderr.strip().endswith(
        "3.mid has no notes (drums aside); give a MIDI file with music in it"
    )
    result = runner.invoke(main, ["compose", str(out), "--out", "x.mid", "--prime", "none.mid"])
    assert result.exit_code == 2 and "MIDI file none.mid does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
