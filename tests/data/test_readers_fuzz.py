"""Fuzzing every reader of user and run files: random bytes, random CSV/TSV/JSON/TOML text, and
valid WAV/MIDI/safetensors files with random bytes overwritten. Each must load or raise
RnnkitError; any other exception, or an example slower than the deadline, fails."""

from __future__ import annotations

import gzip
import json
import tempfile
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnkit.data import audio, images, labelled, music, subword, text, timeseries
from rnnkit.errors import RnnkitError
from rnnkit.evaluation import nab
from rnnkit.training import checkpoint as ckpt
from rnnkit.training import options

FUZZ = settings(
    max_examples=40,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow],
)


def loads_or_refuses(read: Callable[[Path], object], data: bytes, name: str) -> None:
    """Write ``data`` to a file called ``name`` and read it: RnnkitError is the only failure."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "resampled", "notes dropped": allowed
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            read(path)
        except RnnkitError as err:
            assert str(err) and "\n" not in str(err)  # one line for the CLI


def mutate(valid: bytes, edits: list[tuple[int, int]]) -> bytes:
    """``valid`` with byte ``i % len`` set to ``b`` for each (i, b) of ``edits``."""
    data = bytearray(valid)
    for i, b in edits:
        data[i % len(data)] = b
    return bytes(data)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8)
CELL = st.text(st.sampled_from("0123456789-:.,;\"' \tabeNnTtx\n\r"), max_size=12)


def csv_text(separator: str) -> st.SearchStrategy[bytes]:
    """A random table: a header that may or may not have the wanted columns, random rows."""
    header = st.lists(st.sampled_from(["t", "x", "y", "text", "label", "", "t"]), min_size=1,
                      max_size=4)  # fmt: skip
    rows = st.lists(st.lists(CELL, min_size=0, max_size=5), max_size=12)
    return st.builds(
        lambda h, rs: "\n".join(separator.join(r) for r in [h, *rs]).encode(), header, rows
    )


# --- text, labelled text -------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["utf-8", "latin-1", "utf-16", "nope"]))
def test_read_text(data, encoding):
    loads_or_refuses(lambda p: text.read_text(p, encoding), data, "a.txt")


GZIP = st.binary(max_size=300).map(lambda b: gzip.compress(b, mtime=0))


@FUZZ
@given(st.one_of(GZIP, st.tuples(GZIP, EDITS).map(lambda g: mutate(*g)),
                 GZIP.flatmap(lambda g: st.integers(0, len(g)).map(lambda n: g[:n]))))  # fmt: skip
def test_read_text_gzip(data):
    loads_or_refuses(text.read_text, data, "a.txt.gz")


@FUZZ
@given(st.one_of(csv_text(","), st.binary(max_size=200)))
def test_read_labelled_csv(data):
    loads_or_refuses(labelled.read_labelled, data, "a.csv")


@FUZZ
@given(csv_text("\t"))
def test_read_labelled_tsv(data):
    loads_or_refuses(labelled.read_labelled, data, "a.tsv")


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["unit", "tokens", "unk", "files", "bytes"]), inner,
                      max_size=3),
)  # fmt: skip
DEEP_JSON = st.integers(1, 5000).flatmap(
    lambda n: st.sampled_from([b"[" * n, b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n])
)  # nesting past Python's recursion limit, closed or not
JSON_BYTES = st.one_of(
    st.binary(max_size=200), JSON_VALUE.map(lambda v: json.dumps(v).encode()), DEEP_JSON
)


@FUZZ
@given(JSON_BYTES)
def test_vocab_load(data):
    loads_or_refuses(text.Vocab.load, data, "vocab.json")


WINDOWS = st.dictionaries(
    st.sampled_from(["c/a.csv", "x"]),
    st.lists(st.lists(st.one_of(st.sampled_from(["2014-01-01", "2014-01-02 10:00", "", "x"]),
                                st.integers(), st.none()), max_size=3), max_size=3)
    | JSON_VALUE,
)  # fmt: skip


@FUZZ
@given(st.one_of(JSON_BYTES, WINDOWS.map(lambda v: json.dumps(v).encode())))
def test_nab_read_windows(data):
    loads_or_refuses(lambda p: nab.read_windows(p, "c/a.csv"), data, "windows.json")


@FUZZ
@given(JSON_VALUE)
def test_scaler_from_dict(data):
    try:
        timeseries.Scaler.from_dict(data)
    except RnnkitError as err:
        assert "\n" not in str(err)


# --- CSV time series -------------------------------------------------------------------------


@FUZZ
@given(st.one_of(csv_text(","), st.binary(max_size=200)), st.sampled_from(timeseries.FILL_POLICIES),
       st.booleans())  # fmt: skip
def test_read_csv(data, fill, regular):
    loads_or_refuses(lambda p: timeseries.read_csv(p, "t", fill=fill, regular=regular), data,
                     "a.csv")  # fmt: skip


# --- WAV ------------------------------------------------------------------------------------------


def valid_wav() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = audio.write_wav(Path(tmp) / "a.wav", np.sin(np.arange(400) / 5.0) * 0.5, 8000)
        return path.read_bytes()


WAV = valid_wav()


@FUZZ
@given(st.one_of(st.binary(max_size=200), EDITS.map(lambda e: mutate(WAV, e)),
                 st.integers(0, len(WAV)).map(lambda n: WAV[:n])))  # fmt: skip
def test_read_wav(data):
    loads_or_refuses(lambda p: audio.read_wav(p, 8000), data, "a.wav")


# --- music: JSB JSON, MIDI ------------------------------------------------------------------------

PITCH = st.one_of(st.integers(-10, 200), st.floats(), st.just(10**400), st.text(max_size=2))
PIECE = st.lists(st.lists(PITCH, max_size=4), max_size=4)
SPLITS = st.dictionaries(
    st.sampled_from(["train", "valid", "test", "x"]), st.lists(PIECE, max_size=3)
)


@FUZZ
@given(st.one_of(st.binary(max_size=200), SPLITS.map(lambda d: json.dumps(d).encode())))
def test_read_jsb_json(data):
    loads_or_refuses(music.read_jsb_json, data, "jsb.json")


MIDI = music.midi_bytes(torch.eye(88)[:12:3].repeat_interleave(2, 0), tempo=90)


@FUZZ
@given(st.one_of(st.binary(max_size=200), EDITS.map(lambda e: mutate(MIDI, e)),
                 st.integers(0, len(MIDI)).map(lambda n: MIDI[:n])), st.integers(1, 4))  # fmt: skip
def test_read_midi(data, steps_per_quarter):
    loads_or_refuses(lambda p: music.read_midi(p, steps_per_quarter), data, "a.mid")


def valid_idx() -> bytes:
    header = bytes([0, 0, 0x08, 3]) + np.array([2, 3, 4], ">u4").tobytes()
    return gzip.compress(header + bytes(range(24)), mtime=0)


IDX = valid_idx()


@FUZZ
@given(st.one_of(st.binary(max_size=200), EDITS.map(lambda e: mutate(IDX, e)),
                 st.integers(0, len(IDX)).map(lambda n: IDX[:n])))  # fmt: skip
def test_read_idx(data):
    loads_or_refuses(images.read_idx, data, "train-images-idx3-ubyte.gz")


SPM = subword.Subword.learn(["the cat sat on the mat", "a dog ran"] * 5, 300).model


@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the 250 kB model
@FUZZ
@given(st.one_of(st.binary(max_size=200), EDITS.map(lambda e: mutate(SPM, e)),
                 st.integers(0, len(SPM)).map(lambda n: SPM[:n])))  # fmt: skip
def test_subword_load(data):
    loads_or_refuses(subword.Subword.load, data, "src.spm")


# --- run files and settings --------------------------------------------------------------------

TENSORS = ckpt.tensors_to_bytes({"w": torch.arange(6.0).view(2, 3)}, {"step": 3})


@FUZZ
@given(st.one_of(st.binary(max_size=200), EDITS.map(lambda e: mutate(TENSORS, e)),
                 st.integers(0, len(TENSORS)).map(lambda n: TENSORS[:n])))  # fmt: skip
def test_read_tensors(data):
    loads_or_refuses(ckpt.read_tensors, data, "model.safetensors")


KEY_VALUES = st.lists(
    st.tuples(st.sampled_from(["lr", "max-time", "a.b", "x y"]), CELL), max_size=4
)
TOML = KEY_VALUES.map(lambda kv: "\n".join(f"{k} = {v}" for k, v in kv).encode())


@FUZZ
@given(st.one_of(st.binary(max_size=200), TOML))
def test_read_toml(data):
    loads_or_refuses(options.read_toml, data, "settings.toml")


@FUZZ
@given(JSON_BYTES)
def test_read_config_and_manifest(data):
    def read(path: Path) -> None:
        (path.parent / ckpt.CONFIG).write_bytes(data)
        ckpt.read_config(path.parent)
        ckpt.read_manifest(path)

    loads_or_refuses(read, data, ckpt.MANIFEST)
