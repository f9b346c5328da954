"""Piano rolls: the JSB JSON, MIDI in and out (round trip), folders, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import mido
import pytest
import torch

from rnnkit.data import music
from rnnkit.errors import RnnkitError


def roll_of(*frames: list[int]) -> torch.Tensor:
    return music.roll_from_pitches(frames)[0]


def write_json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


def write_midi(path: Path, notes: list[tuple[int, int, int]], channel: int = 0, tpb: int = 96):
    """A one-track MIDI file of (pitch, start tick, end tick) notes."""
    events = sorted([(s, 1, p) for p, s, _ in notes] + [(e, 0, p) for p, _, e in notes])
    track, now = mido.MidiTrack(), 0
    for tick, on, pitch in events:
        kind = "note_on" if on else "note_off"
        track.append(mido.Message(kind, note=pitch, velocity=64 * on, channel=channel,
                                  time=tick - now))  # fmt: skip
        now = tick
    mido.MidiFile(ticks_per_beat=tpb, tracks=[track]).save(path)
    return path


def test_jsb_chorales_official_split(dataset):
    jsb = dataset("jsb-chorales") / "jsb-chorales-quarter.json"
    data = music.read_jsb_json(jsb)
    assert [len(data.train), len(data.valid), len(data.test)] == [229, 76, 77]
    frames = sum(r.shape[0] for r in data.test)
    assert frames == 4725 and all(r.shape[1] == 88 for r in data.test)
    doc = json.loads(jsb.read_text())
    assert music.pitches_from_roll(data.train[0]) == [sorted(f) for f in doc["train"][0]]


def test_json_pitches_outside_the_keyboard_are_dropped_with_a_count(tmp_path):
    path = write_json(tmp_path / "m.json", {"train": [[[60, 10], [109, 64]]], "valid": [[[60]]],
                                            "test": [[[62.0]]]})  # fmt: skip
    with pytest.warns(UserWarning, match="dropped 2 note"):
        data = music.read_jsb_json(path)
    assert music.pitches_from_roll(data.train[0]) == [[60], [64]]
    assert music.pitches_from_roll(data.test[0]) == [[62]]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ('{"train": [], "valid": []}', "lists 'train', 'valid' and 'test'"),
        ('{"train": [], "valid": [[[60]]], "test": [[[60]]]}', "split 'train' has no pieces"),
        ('{"train": [[[60, "C4"]]], "valid": [[[60]]], "test": [[[60]]]}', r"train\[0\]\[0\]"),
        ('{"train": [[]], "valid": [[[60]]], "test": [[[60]]]}', "not a non-empty list"),
    ],
)
def test_bad_json_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(RnnkitError, match=message):
        music.read_jsb_json(path)


def test_midi_written_and_read_back_gives_the_same_roll(tmp_path):
    roll = roll_of([60, 64, 67], [60, 64, 67], [], [59, 62, 67, 108], [21, 60], [60])
    path = tmp_path / "r.mid"
    path.write_bytes(music.midi_bytes(roll, tempo=80))
    assert torch.equal(music.read_midi(path), roll)
    midi = mido.MidiFile(path)
    assert mido.tempo2bpm(next(m.tempo for m in midi.tracks[0] if m.type == "set_tempo")) == 80
    assert midi.length == pytest.approx(6 * 60 / 80)  # six quarter notes at 80 per minute
    # a held run is one note: C4 sounds over frames 0-1, then again over 4-5
    c4 = [m for m in midi.tracks[0] if m.type == "note_on" and m.note == 60]
    assert len(c4) == 2
    path.write_bytes(music.midi_bytes(roll, steps_per_quarter=4))
    assert torch.equal(music.read_midi(path, steps_per_quarter=4), roll)
    silent_end = roll_of([60], [], [])  # written for all 3 frames; read back up to its last note
    path.write_bytes(music.midi_bytes(silent_end, tempo=60))
    assert mido.MidiFile(path).length == pytest.approx(3.0)
    assert torch.equal(music.read_midi(path), silent_end[:1])


def test_reading_midi_quantises_and_skips_drums(tmp_path):
    # 96 ticks per quarter: a note of half a quarter rounds to one frame at 1 step per quarter
    notes = [(60, 0, 192), (64, 96, 130), (67, 200, 290)]
    path = write_midi(tmp_path / "a.mid", notes)
    assert music.pitches_from_roll(music.read_midi(path)) == [[60], [60, 64], [67]]
    assert music.read_midi(path, steps_per_quarter=2).shape == (6, 88)
    drums = write_midi(tmp_path / "drums.mid", notes, channel=9)
    with pytest.raises(RnnkitError, match="has no notes"):
        music.read_midi(drums)


def test_midi_notes_outside_the_keyboard_are_dropped_with_a_count(tmp_path):
    path = write_midi(tmp_path / "a.mid", [(12, 0, 96), (60, 0, 96), (120, 96, 192)])
    with pytest.warns(UserWarning, match=r"dropped 2 note\(s\) outside the 88 piano keys"):
        roll = music.read_midi(path)
    assert music.pitches_from_roll(roll) == [[60]]
    high = write_midi(tmp_path / "b.mid", [(120, 0, 96)])
    with pytest.warns(UserWarning), pytest.raises(RnnkitError, match="no notes within the 88"):
        music.read_midi(high)


def test_bad_midi_files_and_folders_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.mid"
    mido.MidiFile(tracks=[mido.MidiTrack()]).save(empty)
    with pytest.raises(RnnkitError, match="empty.mid has no notes"):
        music.read_midi(empty)
    (tmp_path / "junk.mid").write_bytes(b"this is not MIDI")
    with pytest.raises(RnnkitError, match="junk.mid is not a readable MIDI file"):
        music.read_midi(tmp_path / "junk.mid")
    with pytest.raises(RnnkitError, match="does not exist"):
        music.read_midi(tmp_path / "missing.mid")
    (tmp_path / "none").mkdir()
    with pytest.raises(RnnkitError, match=r"no MIDI files \(.mid, .midi\) in"):
        music.read_music(tmp_path / "none")
    with pytest.raises(RnnkitError, match="is a single MIDI file"):
        music.read_music(empty)


def test_a_midi_folder_is_split_80_10_10(tmp_path):
    for i in range(12):
        (tmp_path / "songs").mkdir(exist_ok=True)
        write_midi(tmp_path / "songs" / f"{i:02d}.MID", [(60 + i, 0, 96 * (i + 1))])
    data = music.read_music(tmp_path / "songs")
    assert [len(data.train), len(data.valid), len(data.test)] == [10, 1, 1]
    lengths = sorted(r.shape[0] for r in data.train + data.valid + data.test)
    assert lengths == list(range(1, 13))
    again = music.read_music(tmp_path / "songs")
    assert all(torch.equal(a, b) for a, b in zip(data.test, again.test))


def test_a_midi_folder_needs_three_files(tmp_path):
    (tmp_path / "songs").mkdir()
    write_midi(tmp_path / "songs" / "a.mid", [(60, 0, 96)])
    with pytest.raises(RnnkitError, match="at least 3 are needed"):
        music.read_music(tmp_path / "songs")


def test_pad_and_transpose():
    frames, lengths = music.pad_rolls([roll_of([60], [62]), roll_of([64])])
    assert frames.shape == (2, 2, 88) and lengths.tolist() == [2, 1]
    assert frames[1, 1].sum() == 0
    up = music.transpose_roll(roll_of([60, 108]), 2)
    assert music.pitches_from_roll(up) == [[62]]  # 110 falls off the keyboard
    assert music.pitches_from_roll(music.transpose_roll(roll_of([22, 60]), -2)) == [[58]]


def test_roll_png_is_a_png():
    assert music.roll_png(roll_of([60, 64], [62]), "t", prime=1)[:8] == b"\x89PNG\r\n\x1a\n"
