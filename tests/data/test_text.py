"""Reading text files safely, vocabularies, the train/validation split."""

from __future__ import annotations

import pytest
import torch

from rnnkit.data.text import UNK, Vocab, read_text, split_train_valid
from rnnkit.errors import RnnkitError


def test_read_text_errors_say_what_and_where(tmp_path):
    with pytest.raises(RnnkitError, match="does not exist"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(RnnkitError, match="is a directory"):
        read_text(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(RnnkitError, match="is empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    with pytest.raises(RnnkitError, match="looks binary .*byte offset 8"):
        read_text(tmp_path / "bin")
    (tmp_path / "latin.txt").write_bytes("caf\u00e9 ol\u00e9".encode("latin-1"))
    with pytest.raises(
        RnnkitError, match=r"not valid utf-8: byte 0xe9 at byte offset 3.*--encoding"
    ):
        read_text(tmp_path / "latin.txt")
    assert read_text(tmp_path / "latin.txt", encoding="latin-1") == "caf\u00e9 ol\u00e9"
    with pytest.raises(RnnkitError, match="unknown encoding"):
        read_text(tmp_path / "latin.txt", encoding="klingon")


def test_char_vocab_round_trip_and_unknown_character():
    vocab = Vocab.build("hello world\n")
    assert vocab.tokens == sorted(set("hello world\n"))
    ids = vocab.encode("low\nhole")
    assert ids.dtype == torch.int64 and vocab.decode(ids) == "low\nhole"
    with pytest.raises(RnnkitError, match=r"prompt has the character 'Z' .* line 2, column 3"):
        vocab.encode("he\nllZo", "the prompt")
    assert Vocab.from_json(vocab.to_json()).tokens == vocab.tokens


def test_word_vocab_maps_rare_and_unseen_words_to_unk():
    text = "the cat sat. the cat ran.\nthe dog sat."
    vocab = Vocab.build(text, unit="word", min_count=2)
    assert vocab.tokens[:2] == [UNK, "\n"] and set(vocab.tokens[2:4]) == {".", "the"}
    assert "dog" not in vocab.index and "ran" not in vocab.index
    ids = vocab.encode("the zebra sat.")
    assert vocab.decode(ids) == f"the {UNK} sat."
    assert len(Vocab.build(text, unit="word", max_size=3)) == 3
    assert vocab.decode(vocab.encode("the cat sat.\nthe cat")) == "the cat sat.\nthe cat"


def test_split_train_valid():
    train, valid = split_train_valid("abcdefghij", 0.1)
    assert (train, valid) == ("abcdefghi", "j")
    with pytest.raises(RnnkitError, match=r"in \(0, 1\)"):
        split_train_valid("abc", 1.0)


def test_tinyshakespeare_reads_as_documented(dataset):
    text = read_text(dataset("tiny-shakespeare") / "tinyshakespeare.txt")
    assert len(text) == 1_115_394 and len(Vocab.build(text)) == 65
    train, valid = split_train_valid(text, 0.1)
    assert len(valid) == 111_539 and train + valid == text
