"""Captioning end to end: Fashion-MNIST files, scenes and captions, the CNN encoder, a tiny run,
`rnnkit caption`, bad input. Needs the Debian package dataset-fashion-mnist (scripts/test
installs it when run as root)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.data import images as fm
from rnnkit.errors import RnnkitError
from rnnkit.models.vision import ConvEncoder
from rnnkit.tasks import caption as cap

TINY = ["--channels", "8", "--embed", "8", "--decoder-hidden", "16", "--batch", "8",
        "--beam", "2", "--valid-scenes", "16", "--eval-scenes", "8", "--test-scenes", "12",
        "--max-steps", "4", "--eval-every", "2", "--log-every", "2", "--warmup", "1",
        "--progress", "none"]  # fmt: skip


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    data += struct.pack(f">{array.ndim}I", *array.shape)
    data += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    """60 training pictures of constant value 1..60, 20 test pictures of 101..120; a picture's
    label is its value mod 10, so a scene's cells tell which pictures it used."""
    folder = tmp_path_factory.mktemp("fashion")
    splits = (("train", np.arange(1, 61), True), ("t10k", np.arange(101, 121), False))
    for prefix, values, gz in splits:
        pictures = np.repeat(values.astype(np.uint8), 28 * 28).reshape(-1, 28, 28)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{'.gz' if gz else ''}", pictures, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{'.gz' if gz else ''}", values % 10, gz)
    return folder


def cell_values(pixels: np.ndarray) -> list[int]:
    """The constant value of each non-empty 28x28 cell of a fake scene, left to right."""
    cells = [pixels[:, i : i + 28] for i in range(0, pixels.shape[1], 28)]
    return [int(c[0, 0]) for c in cells if c.any()]


# --- data -----------------------------------------------------------------------------------------


def test_idx_files_gzip_or_not_and_damaged(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert (fm.read_idx(write_idx(tmp_path / "a.gz", array)) == array).all()
    assert (fm.read_idx(write_idx(tmp_path / "a", array, gz=False)) == array).all()
    (tmp_path / "cut").write_bytes((tmp_path / "a").read_bytes()[:-1])
    with pytest.raises(RnnkitError, match="do not fit the shape"):
        fm.read_idx(tmp_path / "cut")
    (tmp_path / "bad").write_bytes(b"PK\3\4 not idx")
    with pytest.raises(RnnkitError, match="not an IDX file"):
        fm.read_idx(tmp_path / "bad")


def test_fashion_mnist_is_installed_and_read():
    images, labels = fm.load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert sorted(set(labels.tolist())) == list(range(10)) and len(fm.CLASSES) == 10
    assert fm.load_fashion_mnist("test")[0].shape == (10000, 28, 28)


@pytest.mark.parametrize(
    "labels, text",
    [
        ([7], "a sneaker"),
        ([9], "an ankle boot"),
        ([7, 8], "a sneaker to the left of a bag"),
        ([7, 8, 6], "a sneaker to the left of a bag and a shirt"),
        ([0, 1, 9, 3], "a t-shirt to the left of a trouser and an ankle boot and a dress"),
    ],
)
def test_caption_grammar(labels, text):
    assert fm.caption_of(labels) == text
    assert fm.parse_caption(text) == labels
    vocab = cap.Vocabulary(fm.caption_vocabulary())
    ids = vocab.encode(text)
    assert fm.UNK not in ids and min(ids) > fm.EOS and vocab.decode(ids) == text


def test_captions_parse_back_and_wrong_ones_do_not():
    rng = np.random.default_rng(0)
    for _ in range(200):
        labels = rng.integers(0, 10, rng.integers(1, 5)).tolist()
        assert fm.parse_caption(fm.caption_of(labels)) == labels
    for text in ["", "a", "a sneaker and a bag", "a sneaker to the left of", "sneaker", "a hat"]:
        assert fm.parse_caption(text) is None


def test_scenes_place_items_left_to_right_deterministically(fake_data):
    images, labels = fm.load_fashion_mnist("train", fake_data)
    counts = set()
    for seed in range(40):
        pixels, items = fm.compose_scene(images, labels, np.random.default_rng(seed))
        assert pixels.shape == (28, 112) and pixels.dtype == np.uint8
        values = cell_values(pixels)
        assert [v % 10 for v in values] == items and 1 <= len(items) <= 4
        counts.add(len(items))
        again, same = fm.compose_scene(images, labels, np.random.default_rng(seed))
        assert (again == pixels).all() and same == items
    assert counts == {1, 2, 3, 4}
    pixels, items = fm.compose_scene(images, labels, np.random.default_rng(0), 2, 2, slots=3)
    assert pixels.shape == (28, 84) and len(items) == 2
    with pytest.raises(RnnkitError, match="min_items"):
        fm.compose_scene(images, labels, np.random.default_rng(0), 3, 5)


def test_train_validation_and_test_scenes_use_separate_pictures(fake_data):
    cfg = cap.CaptionConfig(data=str(fake_data), valid_images=10, valid_scenes=30, test_scenes=30)
    task = cap.Caption(cfg)
    images, tgt_in, tgt_out = task.train_batch(0, torch.Generator().manual_seed(0))
    assert images.shape == (64, 28, 112) and tgt_in[:, 0].eq(fm.BOS).all()
    used = {v for img in images for v in cell_values((img * 255).round().byte().numpy())}
    assert used and used <= set(range(1, 51))
    assert {v for p in task.valid.pixels for v in cell_values(p)} <= set(range(51, 61))
    test = cap.held_out_scenes(cfg, task.vocab)
    assert {v for p in test.pixels for v in cell_values(p)} <= set(range(101, 121))
    again = cap.held_out_scenes(cfg, task.vocab)
    assert (again.pixels == test.pixels).all() and again.captions == test.captions
    # the batch of a step depends only on the generator's state: exact resume
    same = task.train_batch(0, torch.Generator().manual_seed(0))
    assert all((a == b).all() for a, b in zip(same, (images, tgt_in, tgt_out)))


def test_scores():
    labels = [[7, 8], [9], [1, 2, 3]]
    right = [fm.caption_of(k) for k in labels]
    assert cap.score_captions(right, labels) == {"bleu": pytest.approx(100.0), "exact": 1.0,
                                                 "items": 1.0}  # fmt: skip
    wrong = [fm.caption_of([7]), "a bag bag", fm.caption_of([1, 2, 4])]
    scores = cap.score_captions(wrong, labels)
    assert scores["exact"] == 0.0 and scores["items"] == pytest.approx(3 / 6)


# --- the encoder ----------------------------------------------------------------------------------


def test_conv_encoder_memory_mask_and_state():
    torch.manual_seed(0)
    encoder = ConvEncoder(1, 16, 3, decoder_hidden=12, decoder_layers=2, decoder_cell="lstm",
                          image_size=(28, 112))  # fmt: skip
    encoded = encoder(torch.rand(5, 28, 112))
    assert encoder.grid(28, 112) == (3, 14)
    assert encoded.memory.shape == (5, 42, 16) and encoded.mask.shape == (5, 42)
    assert encoded.mask.all() and [s.shape for s in encoded.state] == [(2, 5, 12)] * 2
    assert encoder(torch.rand(2, 1, 28, 112)).memory.shape == (2, 42, 16)
    with pytest.raises(RnnkitError, match="the images are 28x56 pixels; this encoder reads 28x112"):
        encoder(torch.rand(2, 28, 56))
    with pytest.raises(RnnkitError, match="takes images"):
        encoder(torch.rand(2, 3, 28, 112))
    free = ConvEncoder(3, 8, 2)  # no image size: any size, no position embedding
    assert free(torch.rand(2, 3, 20, 36)).memory.shape == (2, 5 * 9, 8)


# --- the command line -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "caption"
    result = CliRunner().invoke(main, ["train", "caption", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "test: BLEU" in result.output
    return out


def test_run_writes_test_report_examples_and_attention(run):
    report = json.loads((run / "test.json").read_text())
    assert report["test_size"] == 12 and report["beam"] == 2
    assert 0 <= report["test_bleu"] <= 100 and 0 <= report["test_exact"] <= 1
    assert len((run / "test-captions.txt").read_text().splitlines()) == 12
    for name in ("examples.png", "attention.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "vocab.json").read_text()) == fm.caption_vocabulary()


def test_caption_an_example_then_the_file(run, tmp_path):
    scene, plot = tmp_path / "scene.png", tmp_path / "attention.png"
    args = ["caption", str(run), "--example", str(scene), "--seed", "3", "--plot", str(plot)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    first, predicted = result.output.strip().splitlines()
    assert "true caption: a" in first and plot.read_bytes()[:4] == b"\x89PNG"
    assert fm.read_image(scene).shape == (28, 112)
    result = CliRunner().invoke(main, ["caption", str(run), str(scene), "--beam", "2"])
    assert result.exit_code == 0 and result.output.strip() == predicted


def test_resume_continues_the_run(run, tmp_path):
    result = CliRunner().invoke(
        main, ["train", "caption", "--resume", str(run), "--max-steps", "6"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("6 steps")
    assert json.loads((run / "test.json").read_text())["test_size"] == 12


def one_line_error(args: list[str], *fragments: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    for fragment in fragments:
        assert fragment in result.output


def test_bad_input_exits_2_with_one_line(run, tmp_path):
    missing = tmp_path / "nowhere"
    one_line_error(["train", "caption", "--data", str(missing), *TINY],
                   "no Fashion-MNIST folder", "apt-get install dataset-fashion-mnist")  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(["train", "caption", "--data", str(empty), *TINY],
                   "train-images-idx3-ubyte[.gz] not found", "apt-get install")  # fmt: skip
    wrong = fm.write_image(tmp_path / "wrong.png", np.zeros((28, 56), np.uint8))
    one_line_error(["caption", str(run), str(wrong)], "is 56x28 pixels", "reads 112x28")
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    one_line_error(["caption", str(run), str(text)], "cannot read the image")
    one_line_error(["caption", str(run)], "give an image file to caption")
    one_line_error(["train", "caption", "--min-items", "3", "--max-items", "2", *TINY], "min_items")
