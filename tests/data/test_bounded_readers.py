"""Readers of untrusted files stay within bounds and answer malformed input with one line.

Each test is a finding: a 37-byte MIDI file that asked for gigabytes, a gzip bomb inflated before
"looks binary", a 2 MB CSV cell quoted whole in an error, JSON nested too deep or of the wrong
shape giving tracebacks.
"""

from __future__ import annotations

import gzip
import io
import json
import resource
import time
import tracemalloc
from pathlib import Path

import mido
import numpy as np
import pytest
import sentencepiece as spm

from rnnkit.data import audio, bounded, images, labelled, music, subword, text, timeseries
from rnnkit.data.parallel import read_lines
from rnnkit.errors import RnnkitError
from rnnkit.evaluation import nab

DEEP = b"[" * 100_000  # nests deeper than Python's recursion limit
MiB = 1 << 20


def refused(call, *args, match: str = "", **kwargs) -> str:
    """The one-line message of the RnnkitError that ``call(*args, **kwargs)`` raises."""
    with pytest.raises(RnnkitError, match=match) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 500, message
    return message


def rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- MIDI ----------------------------------------------------------------------------------------


def one_note_midi(path: Path, ticks: int, ticks_per_beat: int = 1) -> Path:
    """A MIDI file of one middle C held ``ticks`` ticks (36 bytes for any ticks < 2^28)."""
    track = mido.MidiTrack([mido.Message("note_on", note=60, velocity=64, time=0),
                            mido.Message("note_off", note=60, velocity=0, time=ticks)])  # fmt: skip
    mido.MidiFile(ticks_per_beat=ticks_per_beat, tracks=[track]).save(path)
    return path


@pytest.mark.parametrize("ticks", [2**18, 2**28 - 1])
def test_a_tiny_midi_file_of_one_endless_note_is_refused_before_its_roll(tmp_path, ticks):
    path = one_note_midi(tmp_path / "long.mid", ticks)
    assert path.stat().st_size < 40
    before, start = rss_mb(), time.perf_counter()
    message = refused(music.read_midi, path, match="frames long")
    assert str(path) in message and f"{ticks:,}" in message and f"{music.MAX_FRAMES:,}" in message
    assert time.perf_counter() - start < 2.0 and rss_mb() - before < 200


def test_a_folder_of_endless_notes_is_refused_and_its_total_is_bounded(tmp_path, monkeypatch):
    for name in "abc":
        one_note_midi(tmp_path / f"{name}.mid", 2**28 - 1)
    refused(music.read_music, tmp_path, match="a.mid would be 268,435,455 frames")
    for name in "abc":  # each piece allowed, together too long
        one_note_midi(tmp_path / f"{name}.mid", 999)
    monkeypatch.setattr(music, "MAX_TOTAL_FRAMES", 2500)
    refused(music.read_music, tmp_path, match="c.mid takes the pieces past 2,500 frames")


def test_midi_without_ticks_per_beat_or_too_big_is_refused(tmp_path, monkeypatch):
    refused(music.read_midi, one_note_midi(tmp_path / "zero.mid", 4, ticks_per_beat=0),
            match="SMPTE")  # fmt: skip
    path = one_note_midi(tmp_path / "ok.mid", 4)
    monkeypatch.setattr(music, "MAX_MIDI_BYTES", 20)
    refused(music.read_midi, path, match="more than rnnkit reads from one file")


def test_a_json_piece_longer_than_the_cap_is_refused_before_its_roll(tmp_path, monkeypatch):
    monkeypatch.setattr(music, "MAX_FRAMES", 10)
    piece = [[60]] * 11
    path = tmp_path / "jsb.json"
    path.write_text(json.dumps({"train": [piece], "valid": [[[60]]], "test": [[[60]]]}))
    refused(music.read_jsb_json, path, match=r"train\[0\] would be 11 frames long")


# --- gzip bombs and text caps --------------------------------------------------------------------


def gzip_of_zeros(path: Path, mib: int) -> Path:
    """A gzip file inflating to ``mib`` MiB of zeros: one compressed MiB repeated (members)."""
    path.write_bytes(gzip.compress(bytes(MiB)) * mib)
    return path


def test_a_gzip_bomb_of_zeros_looks_binary_at_its_first_chunk(tmp_path):
    path = gzip_of_zeros(tmp_path / "bomb.txt.gz", 200)
    assert path.stat().st_size < 300_000
    tracemalloc.start()
    try:
        refused(text.read_text, path, match="looks binary .*byte offset 0")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB  # one chunk, not 200 MiB


def test_a_gzip_bomb_of_text_is_refused_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "MAX_TEXT_BYTES", 3 * MiB)
    path = tmp_path / "bomb.txt.gz"
    path.write_bytes(gzip.compress(b"a" * MiB) * 100)
    tracemalloc.start()
    try:
        refused(text.read_text, path, match="more than 3 MiB after gzip decompression")
        refused(read_lines, path, match="more than 3 MiB")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB  # the cap and a chunk or two, not 100 MiB


def test_a_plain_text_file_over_the_cap_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "MAX_TEXT_BYTES", 1000)
    (tmp_path / "a.txt").write_text("a" * 1001)
    refused(text.read_text, tmp_path / "a.txt", match="holds 1,001 bytes")


HELLO = gzip.compress(b"hello", mtime=0)


@pytest.mark.parametrize("data", [b"\x1f\x8bnot gzip", HELLO[:-6], HELLO[:12] + b"\xff" * 20],
                         ids=["header", "truncated", "deflate"])  # fmt: skip
def test_broken_gzip_is_one_line(tmp_path, data):
    (tmp_path / "a.txt.gz").write_bytes(data)
    refused(text.read_text, tmp_path / "a.txt.gz", match="not a readable gzip file")


def test_an_idx_gzip_bomb_is_refused_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IDX_BYTES", 2 * MiB)
    path = gzip_of_zeros(tmp_path / "train-images-idx3-ubyte.gz", 20)
    refused(images.read_idx, path, match="more than 2 MiB after gzip decompression")


def test_a_csv_gzip_bomb_is_refused_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(timeseries, "MAX_CSV_BYTES", MiB)
    path = tmp_path / "a.csv.gz"
    path.write_bytes(gzip.compress(b"t,y\n" + b"2024-01-01,1\n" * 200_000))
    refused(timeseries.read_csv, path, "t", match="more than 1 MiB after gzip decompression")


def test_a_wav_file_over_the_cap_or_declaring_more_than_it_holds_is_refused(tmp_path, monkeypatch):
    path = audio.write_wav(tmp_path / "a.wav", np.zeros(100), 8000)
    data = bytearray(path.read_bytes())
    at = data.find(b"data") + 4
    data[at : at + 4] = (0xFFFFFFF0).to_bytes(4, "little")  # 2 billion samples declared
    path.write_bytes(data)
    refused(audio.read_wav, path, 8000, match="truncated: its header declares 2147483640")
    monkeypatch.setattr(audio, "MAX_WAV_BYTES", 100)
    refused(audio.read_wav, path, 8000, match="more than the 100 rnnkit reads")


# --- long values quoted in messages --------------------------------------------------------------

BIG = "x" * 2_000_000


@pytest.mark.parametrize(
    "csv, match",
    [
        (f"t,y\n2024-01-01,1\n2024-01-02,{BIG}\n2024-01-03,3\n", "non-numeric value 'xxx"),
        (f"t,y\n2024-01-01,1\n{BIG},2\n2024-01-03,3\n", "'xxx.*too long for a timestamp"),
        (f"t,{BIG}\n2024-01-01,1\n2024-01-02,2\n2024-01-03,3\n", "no column 'y'"),
        ("t,y\n2024-01-01,1\n" + "".join(f"2024-01-0{i},{i}\n" for i in range(2, 10)), ""),
    ],
)
def test_a_2_mb_csv_cell_is_cut_in_the_message(tmp_path, csv, match):
    (tmp_path / "a.csv").write_text(csv)
    if not match:  # control: the same reader accepts a plain file
        assert len(timeseries.read_csv(tmp_path / "a.csv", "t", ["y"])) == 9
        return
    assert len(refused(timeseries.read_csv, tmp_path / "a.csv", "t", ["y"], match=match)) < 300


def test_long_names_in_a_labelled_csv_are_cut_in_the_message(tmp_path):
    (tmp_path / "a.csv").write_text(f"{BIG[:100_000]},label\nx,y\n")  # csv's limit: 131,072
    assert len(refused(labelled.read_labelled, tmp_path / "a.csv", match="no column")) < 300
    rows = "".join(f"text {i},{'c' * 1000}{i}\n" for i in range(1000))
    (tmp_path / "b.csv").write_text("text,label\n" + rows)
    message = refused(labelled.read_labelled, tmp_path / "b.csv", match="single example")
    assert "(1000 in all)" in message


# --- JSON: too deep, too big, wrong shape --------------------------------------------------------

VOCAB_OK = {"unit": "char", "tokens": ["a", "b"], "unk": None}


def read_vocab(path: Path) -> text.Vocab:
    return text.Vocab.load(path)


def read_windows(path: Path) -> list:
    return nab.read_windows(path, "cat/a.csv")


JSON_READERS = [music.read_jsb_json, read_vocab, read_windows]


@pytest.mark.parametrize("read", JSON_READERS)
def test_deeply_nested_json_is_one_line(tmp_path, read):
    (tmp_path / "a.json").write_bytes(DEEP)
    refused(read, tmp_path / "a.json", match="nest too deep")


@pytest.mark.parametrize("read", JSON_READERS)
@pytest.mark.parametrize("data", [b"\xff\xfe", b"[1, 2", b"1" * 5000, b'{"a": NaN'])
def test_malformed_json_is_one_line(tmp_path, read, data):
    (tmp_path / "a.json").write_bytes(data)
    refused(read, tmp_path / "a.json", match="not valid JSON")


@pytest.mark.parametrize("read", JSON_READERS)
def test_json_over_the_cap_is_refused(tmp_path, monkeypatch, read):
    monkeypatch.setattr(bounded, "MAX_JSON_BYTES", 100)
    (tmp_path / "a.json").write_text(json.dumps({"pad": "x" * 200}))
    refused(read, tmp_path / "a.json", match="more than rnnkit reads from one file")


@pytest.mark.parametrize(
    "doc, match",
    [
        (["a", "b"], "must be an object"),
        ({"unit": "char", "tokens": [1, 2]}, "token 0 is 1, not a single character"),
        ({"unit": "char", "tokens": "ab"}, "'tokens' must be a non-empty list"),
        ({"unit": "char", "tokens": ["ab"]}, "not a single character"),
        ({"unit": "word", "tokens": [["x"]]}, r"token 0 is \['x'\], not a string"),
        ({"unit": "word", "tokens": ["a", "a"]}, "appears twice"),
        ({"unit": "word", "tokens": ["a"], "unk": "<unk>"}, "'unk' '<unk>' is not one of"),
        ({"unit": [1], "tokens": ["a"]}, "must be an object"),
        (VOCAB_OK, ""),
    ],
)
def test_a_vocab_json_of_the_wrong_shape_is_one_line(tmp_path, doc, match):
    (tmp_path / "vocab.json").write_text(json.dumps(doc))
    if not match:
        assert text.Vocab.load(tmp_path / "vocab.json").tokens == ["a", "b"]
        return
    assert str(tmp_path) in refused(text.Vocab.load, tmp_path / "vocab.json", match=match)


@pytest.mark.parametrize(
    "doc, match",
    [
        ([["2014-01-01", "2014-01-02"]], "must hold a JSON object"),
        (7, "must hold a JSON object"),
        ({"cat/a.csv": 7}, "are not a list"),
        ({"cat/a.csv": [[1, 2]]}, "window 0 of 'cat/a.csv' is \\[1, 2\\]"),
        ({"cat/a.csv": [["2014-01-01"]]}, "not \\[start, end\\] timestamps"),
        ({"cat/a.csv": [["2014-01-01", "x" * 10_000]]}, "not \\[start, end\\]"),
        ({"cat/a.csv": [["2014-01-01", ""]]}, "not \\[start, end\\]"),
        ({"cat/a.csv": [["2014-01-01", "2014-01-02T00:00Z"]]}, "not \\[start, end\\]"),
        ({"other.csv": []}, "no windows for 'cat/a.csv'"),
    ],
)
def test_nab_windows_of_the_wrong_shape_are_one_line(tmp_path, doc, match):
    (tmp_path / "w.json").write_text(json.dumps(doc))
    refused(read_windows, tmp_path / "w.json", match=match)


def test_nab_windows_of_the_right_shape_load(tmp_path):
    (tmp_path / "w.json").write_text(json.dumps({"cat/a.csv": [["2014-01-01", "2014-01-02"]]}))
    assert read_windows(tmp_path / "w.json")[0][1].day == 2


@pytest.mark.parametrize(
    "data",
    [
        [1, 2],
        {"mean": [0.0], "std": [1.0]},
        {"mean": [0.0], "std": [0.0], "log": False},
        {"mean": [0.0, 1.0], "std": [1.0], "log": False},
        {"mean": ["0"], "std": [1.0], "log": False},
        {"mean": [10**400], "std": [1.0], "log": False},
        {"mean": [0.0], "std": [float("nan")], "log": 0},
    ],
)
def test_a_damaged_scaler_is_one_line(data):
    refused(timeseries.Scaler.from_dict, data, match="scaler is damaged")
    ok = timeseries.Scaler.from_dict({"mean": [0], "std": [2.0], "log": False})
    assert ok.inverse(np.array([[1.0]])).item() == 2.0


# --- SentencePiece models ------------------------------------------------------------------------


def test_a_damaged_or_foreign_subword_model_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "src.spm"
    for data in (b"", b"\x0a\x05hello", bytes(range(256))):
        path.write_bytes(data)
        refused(subword.Subword.load, path, match="not a SentencePiece model")
    out = io.BytesIO()  # SentencePiece's own ids: no pad, 0 unknown, 1 begin, 2 end
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world", "a b c"] * 10),
                                   model_writer=out, vocab_size=20, hard_vocab_limit=False,
                                   minloglevel=2, num_threads=1)  # fmt: skip
    path.write_bytes(out.getvalue())
    refused(subword.Subword.load, path, match="without rnnkit's ids")
    monkeypatch.setattr(subword, "MAX_SUBWORD_BYTES", 1000)
    refused(subword.Subword.load, path, match="more than rnnkit reads from one file")
