"""Sentiment end to end on tiny data: layouts, training, predict --explain, CV, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.data.batching import draw_batch
from rnnkit.data.labelled import read_labelled
from rnnkit.errors import RnnkitError

GOOD = ["a wonderful moving film", "great acting and a great story", "i loved it", "superb fun"]
BAD = ["a dull boring mess", "terrible acting , awful story", "i hated it", "tedious junk"]
TINY = ["--hidden-size", "8", "--embed", "8", "--batch", "4", "--min-count", "1", "--folds", "4",
        "--max-steps", "6", "--eval-every", "3", "--log-every", "3", "--warmup", "2",
        "--progress", "none"]  # fmt: skip


@pytest.fixture(scope="module")
def mr(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mr")
    (folder / "rt-polarity.pos").write_text("\n".join(GOOD * 2) + "\n\n")
    (folder / "rt-polarity.neg").write_text("\n".join(BAD * 2) + "\n")
    return folder


@pytest.fixture(scope="module")
def run(mr, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mr"
    result = CliRunner().invoke(main, ["train", "sentiment", "--data", str(mr), "--out", str(out),
                                       *TINY])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "test (best checkpoint, 4 examples): accuracy" in result.output
    return out


def test_the_three_layouts_read_the_same_classes(mr, tmp_path):
    pairs = read_labelled(mr)
    assert pairs.classes == ["neg", "pos"] and len(pairs.texts) == 16
    csv = tmp_path / "t.csv"
    csv.write_text('review,stars\n"good, really",pos\nbad,neg\nfine,pos\nugh,neg\n')
    table = read_labelled(csv, "review", "stars")
    assert table.texts[0] == "good, really" and table.labels == [1, 0, 1, 0]
    for c, texts in (("neg", BAD), ("pos", GOOD)):
        (tmp_path / "byclass" / c).mkdir(parents=True)
        for i, text in enumerate(texts):
            (tmp_path / "byclass" / c / f"{i}.txt").write_text(text)
    assert read_labelled(tmp_path / "byclass").classes == ["neg", "pos"]


def test_run_keeps_vocab_and_test_report(run):
    vocab = json.loads((run / "vocab.json").read_text())
    assert vocab["unk"] == "<unk>" and "wonderful" in vocab["tokens"]
    report = json.loads((run / "test.json").read_text())
    assert report["test_size"] == 4 and report["classes"] == ["neg", "pos"]
    assert (run / "confusion.png").stat().st_size > 1000


def test_predict_prints_label_probability_and_attention(run):
    result = CliRunner().invoke(main, ["predict", str(run), "an oddly moving film", "--explain"])
    assert result.exit_code == 0, result.output
    head, *words = result.output.strip().splitlines()
    assert head.split()[0] in ("neg", "pos") and "(neg 0." in head
    assert [w.split()[2] for w in words] == ["an", "oddly", "moving", "film"]
    assert "oddly  (unknown word)" in words[1] and "unknown" not in words[2]
    assert sum(float(w.split()[0]) for w in words) == pytest.approx(1.0, abs=0.01)


def test_cross_validation_reports_mean_and_std(mr, tmp_path):
    out = tmp_path / "cv"
    args = ["train", "sentiment", "--data", str(mr), "--cv", "--out", str(out), *TINY]
    result = CliRunner().invoke(main, [a if a != "6" else "2" for a in args])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["partitions"]) == [f"fold-{k:02d}" for k in range(4)]
    assert "4 partitions: test accuracy" in result.output and "std" in result.output


def bad(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    "content, message",
    [
        ("review,stars\ngood,pos\nbad,neg\n", "has no column(s) 'text', 'label'; its columns are"),
        ("text,label\ngood,pos\nbad,neg\nfine,pos\n", "class(es) 'neg' have a single example"),
        ("text,label\ngood,pos\n,neg\nfine,pos\nugh,neg\n", "line 3: empty text"),
        ("text,label\ngood,pos\nfine,pos\n", "has 1 class(es)"),
    ],
    ids=["columns", "single-example", "empty-text", "one-class"],
)
def test_bad_tables_exit_2_with_one_line(tmp_path, content, message):
    path = bad(tmp_path, "t.csv", content)
    result = CliRunner().invoke(main, ["train", "sentiment", "--data", str(path), *TINY])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_empty_text_and_explain_without_attention(run, tmp_path):
    result = CliRunner().invoke(main, ["predict", str(run), "   "])
    assert result.exit_code == 2 and "the text is empty" in result.output
    with pytest.raises(RnnkitError, match="give a .csv or .tsv file"):
        read_labelled(bad(tmp_path, "x.json", "{}"))


def test_word_dropout_turns_words_unknown_at_its_rate():
    from rnnkit.tasks.sentiment import word_dropout

    drop = word_dropout(unk=0, rate=0.25)
    ids = torch.arange(1, 40001)
    dropped = drop(ids, torch.Generator().manual_seed(0))
    changed = dropped != ids
    assert (dropped[changed] == 0).all()
    assert abs(changed.float().mean().item() - 0.25) < 0.01
    assert torch.equal(drop(ids, torch.Generator().manual_seed(0)), dropped)  # seeded


def test_length_buckets_pad_little_and_reach_every_example():
    """`draw_batch` with bucket 4: batches of similar lengths, every example about equally
    often (the window wraps around the length order, so the ends are not starved)."""
    lengths = torch.randint(1, 60, (1000,)).tolist()
    by_length = sorted(range(1000), key=lambda i: lengths[i])
    rng = torch.Generator().manual_seed(0)
    counts = torch.zeros(1000)
    spreads = []
    for _ in range(4000):
        index = draw_batch(by_length, 25, 4, rng)
        assert len(set(index)) == 25  # without replacement within a batch
        counts[index] += 1
        spreads.append(max(lengths[i] for i in index) - min(lengths[i] for i in index))
    assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.5 * counts.mean()
    assert sorted(spreads)[len(spreads) // 2] <= 8  # a random batch spans about 55
