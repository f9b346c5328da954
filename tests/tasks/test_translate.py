"""Translation end to end on a tiny slice of Multi30k: files, training, translate, bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.data.parallel import read_parallel
from rnnkit.errors import RnnkitError

TINY = ["--src-vocab", "400", "--tgt-vocab", "400", "--embed", "8", "--hidden-size", "8",
        "--decoder-hidden", "16", "--batch", "8", "--beam", "2", "--max-steps", "4",
        "--eval-every", "2", "--log-every", "2", "--warmup", "1", "--progress", "none"]  # fmt: skip


def lines(path: Path, count: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(count)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, dataset) -> dict[str, Path]:
    """180 sentence pairs of Multi30k's validation files (the data set through the registry)."""
    multi30k = dataset("multi30k")
    folder = tmp_path_factory.mktemp("multi30k")
    files = {}
    for split, count in (("train", 160), ("val", 20)):
        for lang in ("en", "de"):
            sentences = lines(multi30k / f"val.{lang}.gz", count)
            files[f"{split}.{lang}"] = folder / f"{split}.{lang}"
            files[f"{split}.{lang}"].write_text("\n".join(sentences) + "\n")
    return files


def train_args(corpus: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train", "translate", "--src", str(corpus["train.en"]), "--tgt",
            str(corpus["train.de"]), "--valid-src", str(corpus["val.en"]), "--valid-tgt",
            str(corpus["val.de"]), "--out", str(out), *TINY, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "en-de"
    extra = ["--test-src", str(corpus["val.en"]), "--test-tgt", str(corpus["val.de"])]
    result = CliRunner().invoke(main, train_args(corpus, out, *extra))
    assert result.exit_code == 0, result.output
    assert "test: BLEU" in result.output
    return out


def test_run_keeps_subword_models_and_test_report(run):
    assert (run / "src.spm").is_file() and (run / "tgt.spm").is_file()
    report = json.loads((run / "test.json").read_text())
    assert report["test_size"] == 20 and report["beam"] == 2 and 0 <= report["test_bleu"] <= 100
    outputs = (run / "test-translations.txt").read_text().splitlines()
    assert len(outputs) == 20


def test_translate_a_sentence_a_file_and_a_plot(run, corpus, tmp_path):
    result = CliRunner().invoke(main, ["translate", str(run), "A man rides a bike ☃."])
    assert result.exit_code == 0, result.output  # unknown characters: byte fallback
    png = tmp_path / "attention.png"
    result = CliRunner().invoke(
        main, ["translate", str(run), "A dog runs.", "--beam", "1", "--plot", str(png)]
    )
    assert result.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    args = ["translate", str(run), "--file", str(corpus["val.en"]), "--ref", str(corpus["val.de"])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == 21 and "BLEU" in result.output.splitlines()[-1]


def test_long_sentences_are_cut_with_a_warning(corpus, tmp_path):
    result = CliRunner().invoke(main, train_args(corpus, tmp_path / "r", "--max-len", "6"))
    assert result.exit_code == 0, result.output
    assert "longer than max_len = 6 subword pieces were truncated" in result.output


def write(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def test_parallel_files_must_align(tmp_path):
    src = write(tmp_path / "a.en", ["one", "two", "three"])
    with pytest.raises(RnnkitError, match=r"a.en has 3 lines, .*b.de has 2"):
        read_parallel(src, write(tmp_path / "b.de", ["eins", "zwei"]))
    with pytest.raises(RnnkitError, match="line 2 is empty"):
        read_parallel(src, write(tmp_path / "c.de", ["eins", " ", "drei"]))
    assert read_parallel(src, write(tmp_path / "d.de", ["eins", "zwei", "drei"]))[1] == (
        "two",
        "zwei",
    )


@pytest.mark.parametrize(
    "tgt_rows, message",
    [(["eins", "zwei"], "different line counts"), (["eins", "", "drei"], "line 2 is empty")],
    ids=["line-counts", "empty-line"],
)
def test_bad_parallel_files_exit_2_with_one_line(tmp_path, tgt_rows, message):
    src = write(tmp_path / "s.en", ["one", "two", "three"])
    tgt = write(tmp_path / "t.de", tgt_rows)
    args = ["train", "translate", "--src", str(src), "--tgt", str(tgt), *TINY]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_translate_errors(run, tmp_path):
    result = CliRunner().invoke(main, ["translate", str(run)])
    assert result.exit_code == 2 and "give a sentence to translate" in result.output
    empty = write(tmp_path / "e.en", ["fine", "  "])
    result = CliRunner().invoke(main, ["translate", str(run), "--file", str(empty)])
    assert result.exit_code == 2 and "empty sentence" in result.output
    result = CliRunner().invoke(main, ["translate", str(tmp_path), "hello"])
    assert result.exit_code == 2


def test_only_newlines_break_lines_and_damaged_models_are_named(tmp_path):
    src = write(tmp_path / "u.en", ["one\u2028still one", "two"])
    tgt = write(tmp_path / "u.de", ["eins", "zwei"])
    assert read_parallel(src, tgt)[0] == ("one\u2028still one", "eins")
    from rnnkit.data.subword import Subword

    (tmp_path / "bad.spm").write_bytes(b"not a model")
    with pytest.raises(RnnkitError, match="is damaged"):
        Subword.load(tmp_path / "bad.spm")


@pytest.mark.parametrize(
    "flags, message",
    [(["--dropout", "1.5"], "dropout must be in [0, 1)"),
     (["--teacher-forcing", "1.5"], "teacher_forcing must be in [0, 1]")],
    ids=["dropout", "teacher-forcing"],
)  # fmt: skip
def test_bad_settings_exit_2_before_any_work(corpus, tmp_path, flags, message):
    result = CliRunner().invoke(main, train_args(corpus, tmp_path / "r", *flags))
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "r").exists()


def test_ref_needs_file(run):
    result = CliRunner().invoke(main, ["translate", str(run), "A dog.", "--ref", "x.de"])
    assert result.exit_code == 2 and "--ref goes with --file" in result.output
