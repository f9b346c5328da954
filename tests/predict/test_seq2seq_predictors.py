"""`rnnkit.load` for translation and captioning: `Translation` answers (hypotheses ranked by their
length-normalised log-probability, attention rows), batches equal to single inputs for greedy
and beam decoding, the CLI's output, JSON, bad input."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import rnnkit
from rnnkit.cli import main
from rnnkit.data import images as fm
from rnnkit.data.tokens import BOS, EOS
from rnnkit.errors import RnnkitError
from rnnkit.models.seq2seq import gnmt_penalty
from rnnkit.tasks.caption import CaptionPredictor, to_images
from rnnkit.tasks.seq2seq import Translation
from rnnkit.tasks.translate import TranslatePredictor

TRANSLATE = ["--src-vocab", "400", "--tgt-vocab", "400", "--embed", "8", "--hidden-size", "8",
             "--decoder-hidden", "16", "--batch", "8", "--beam", "2", "--max-steps", "4",
             "--eval-every", "2", "--log-every", "2", "--warmup", "1",
             "--progress", "none"]  # fmt: skip
CAPTION = ["--channels", "8", "--embed", "8", "--decoder-hidden", "16", "--batch", "8",
           "--beam", "2", "--valid-scenes", "8", "--eval-scenes", "8", "--test-scenes", "4",
           "--max-steps", "4", "--eval-every", "2", "--log-every", "2", "--warmup", "1",
           "--progress", "none"]  # fmt: skip
SENTENCES = ["A dog runs.", "Two young men in red shirts are playing football on a green "
             "field while a crowd watches them from the stands.", "A woman",
             "Kids play ☃ outside."]  # fmt: skip
FIELDS = {"text", "hypotheses", "source_tokens", "target_tokens", "attention", "grid"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: intra-op threads only slow them down (and the cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def translate_run(tmp_path_factory, dataset) -> Path:
    """A tiny run trained on 120 pairs of Multi30k's validation files."""
    multi30k = dataset("multi30k")
    folder = tmp_path_factory.mktemp("pairs")
    for lang in ("en", "de"):
        with gzip.open(multi30k / f"val.{lang}.gz", "rt", encoding="utf-8") as f:
            (folder / lang).write_text("".join(itertools.islice(f, 120)))
    out = tmp_path_factory.mktemp("runs") / "en-de"
    args = ["train", "translate", "--src", str(folder / "en"), "--tgt", str(folder / "de"),
            "--out", str(out), *TRANSLATE]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "caption"
    result = CliRunner().invoke(main, ["train", "caption", "--out", str(out), *CAPTION])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def scenes(caption_run) -> list[np.ndarray]:
    """Four test scenes (H, W) uint8 of 1 to 4 items."""
    predictor = CaptionPredictor(caption_run)
    pool = fm.load_fashion_mnist("test")
    rng = np.random.default_rng(5)
    return [fm.compose_scene(*pool, rng, n, n, predictor.cfg.slots)[0] for n in (1, 4, 2, 3)]


def teacher_forced_score(model, src, lengths, ids: list[int], finished: bool, alpha: float):
    """The length-normalised log-probability of ``ids`` (+ EOS if finished), by teacher forcing."""
    targets = [*ids, EOS] if finished else ids
    logits, _ = model(src, lengths, torch.tensor([[BOS, *targets[:-1]]]))
    logp = torch.log_softmax(logits[0], -1)[torch.arange(len(targets)), targets].sum()
    return float(logp) / gnmt_penalty(len(targets), alpha)


def check_translation(result: Translation, source_width: int | None) -> None:
    """What every answer must be: fields, ranked hypotheses, attention rows, strict JSON."""
    assert isinstance(result, Translation) and result.summary() == result.text
    scores = [h["score"] for h in result.hypotheses]
    assert result.hypotheses[0]["text"] == result.text and 1 <= len(scores) <= 2
    assert scores == sorted(scores, reverse=True) and all(-math.inf < s <= 0 for s in scores)
    assert len(result.attention) == len(result.target_tokens)
    for row in result.attention:
        assert len(row) == source_width and min(row) >= 0
        assert sum(row) == pytest.approx(1.0, abs=1e-5)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert set(data) == FIELDS and data["attention"] == result.attention


def assert_same(batched: Translation, alone: Translation) -> None:
    assert batched.text == alone.text and batched.target_tokens == alone.target_tokens
    assert batched.source_tokens == alone.source_tokens
    assert [h["text"] for h in batched.hypotheses] == [h["text"] for h in alone.hypotheses]
    for b, a in zip(batched.hypotheses, alone.hypotheses):
        assert b["score"] == pytest.approx(a["score"], abs=1e-5)
    assert np.allclose(batched.attention, alone.attention, atol=1e-5, rtol=0)


# --- translation ----------------------------------------------------------------------------------


def test_translations_answer_pieces_hypotheses_and_attention(translate_run):
    predictor = rnnkit.load(translate_run)
    assert isinstance(predictor, TranslatePredictor) and predictor.task == "translate"
    results = predictor.predict(SENTENCES)  # the run's beam, 2
    for sentence, result in zip(SENTENCES, results):
        ids = predictor.src_spm.encode(sentence) + [EOS]
        assert result.source_tokens == [predictor.src_spm.processor.id_to_piece(i) for i in ids]
        assert result.source_tokens[-1] == "</s>" and result.grid is None
        check_translation(result, len(ids))
        target = [predictor.tgt_spm.processor.piece_to_id(p) for p in result.target_tokens]
        assert predictor.tgt_spm.decode(target) == result.text


def test_scores_are_the_normalised_log_probability_and_greedy_is_greedy(translate_run):
    predictor = TranslatePredictor(translate_run)
    model, cfg = predictor.model, predictor.cfg
    for beam in (1, 2):
        for sentence, result in zip(SENTENCES, predictor.predict(SENTENCES, beam=beam)):
            src = torch.tensor([predictor.src_spm.encode(sentence) + [EOS]])
            lengths = torch.tensor([src.shape[1]])
            ids = [predictor.tgt_spm.processor.piece_to_id(p) for p in result.target_tokens]
            limit = min(2 * cfg.max_len, 2 * src.shape[1] + 10)
            expected = teacher_forced_score(model, src, lengths, ids, len(ids) < limit,
                                            cfg.length_penalty)  # fmt: skip
            assert result.hypotheses[0]["score"] == pytest.approx(expected, abs=1e-4)
            if beam == 1:  # the model's own greedy decoding, tokens and attention
                [tokens], [attention] = model.greedy(src, lengths, limit, return_attention=True)
                assert ids == tokens and len(result.hypotheses) == 1
                assert np.allclose(result.attention, attention.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("beam", [1, 2], ids=["greedy", "beam"])
def test_a_batch_translates_as_each_sentence_alone(translate_run, beam):
    predictor = rnnkit.load(translate_run)
    together = predictor.predict(SENTENCES, beam=beam)
    for sentence, batched in zip(SENTENCES, together):
        (alone,) = predictor.predict([sentence], beam=beam)
        assert_same(batched, alone)
    for batched, reordered in zip(together, reversed(predictor.predict(SENTENCES[::-1], beam))):
        assert_same(batched, reordered)


def test_one_predictor_serves_threads(translate_run):
    predictor = rnnkit.load(translate_run, checkpoint="last")
    expected = [r.to_dict() for r in predictor.predict(SENTENCES[:3])]
    answers: list = []

    def ask() -> None:
        for _ in range(2):
            answers.append([r.to_dict() for r in predictor.predict(SENTENCES[:3])])

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 6
    for answer in answers:
        for got, want in zip(answer, expected):
            assert got["text"] == want["text"]
            assert np.allclose(got["attention"], want["attention"], atol=1e-6, rtol=0)


def test_the_command_prints_the_predictors_text(translate_run, tmp_path):
    predictor = rnnkit.load(translate_run)
    for beam in ("1", "2"):
        result = CliRunner().invoke(main, ["translate", str(translate_run), SENTENCES[1],
                                           "--beam", beam])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert result.output == predictor.predict([SENTENCES[1]], int(beam))[0].text + "\n"
    file = tmp_path / "in.en"
    file.write_text("\n".join(SENTENCES) + "\n")
    result = CliRunner().invoke(main, ["translate", str(translate_run), "--file", str(file)])
    assert result.output.splitlines() == [r.text for r in predictor.predict(SENTENCES)]


def test_bad_sentences_are_one_clear_error(translate_run, tmp_path):
    predictor = rnnkit.load(translate_run)
    for inputs, message in [
        ("a bare string", "wrap one input in a list"),
        ([], "at least one input"),
        (["fine", "  "], "input 2 is an empty sentence"),
        ([b"bytes"], r"translates sentences \(str\), got bytes"),
        ([None], "got NoneType"),
    ]:
        with pytest.raises(RnnkitError, match=message) as error:
            predictor.predict(inputs)
        assert "\n" not in str(error.value)
    for beam in (0, 1.5, True, "2"):
        with pytest.raises(RnnkitError, match="beam must be a positive integer"):
            predictor.predict(["A dog."], beam=beam)
    result = CliRunner().invoke(main, ["translate", str(translate_run), "A dog.", "--beam", "0"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    with pytest.raises(RnnkitError, match="checkpoint must be one of"):
        rnnkit.load(translate_run, checkpoint="first")
    with pytest.raises(RnnkitError):
        rnnkit.load(tmp_path)


# --- captioning -----------------------------------------------------------------------------------


def test_captions_answer_words_grid_and_attention(caption_run, scenes, tmp_path):
    predictor = rnnkit.load(caption_run)
    assert isinstance(predictor, CaptionPredictor) and predictor.task == "caption"
    h, w = predictor.model.encoder.grid(*predictor.cfg.scene_size)
    path = fm.write_image(tmp_path / "scene.png", scenes[1])
    results = predictor.predict([*scenes, str(path), path])
    for result in results:
        assert result.source_tokens is None and result.grid == [h, w]
        check_translation(result, h * w)
        ids = [predictor.vocab.index[word] for word in result.target_tokens]
        assert predictor.vocab.decode(ids) == result.text
    assert results[4].to_dict() == results[5].to_dict()  # a path, as str or Path
    assert_same(results[4], results[1])  # the file holds exactly the pixels


def test_caption_scores_are_the_normalised_log_probability(caption_run, scenes):
    predictor = CaptionPredictor(caption_run)
    cfg = predictor.cfg
    for beam in (1, 2):
        for pixels, result in zip(scenes, predictor.predict(scenes, beam)):
            ids = [predictor.vocab.index[word] for word in result.target_tokens]
            expected = teacher_forced_score(predictor.model, to_images(pixels[None]), None, ids,
                                            len(ids) < cfg.max_len, cfg.length_penalty)  # fmt: skip
            assert result.hypotheses[0]["score"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("beam", [1, 2], ids=["greedy", "beam"])
def test_a_batch_captions_as_each_image_alone(caption_run, scenes, beam):
    predictor = rnnkit.load(caption_run)
    for pixels, batched in zip(scenes, predictor.predict(scenes, beam=beam)):
        (alone,) = predictor.predict([pixels], beam=beam)
        assert_same(batched, alone)


def test_the_caption_command_prints_the_predictors_text(caption_run, tmp_path):
    scene = tmp_path / "scene.png"
    args = ["caption", str(caption_run), "--example", str(scene), "--seed", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    predicted = result.output.strip().splitlines()[-1]
    assert predicted == rnnkit.load(caption_run).predict([scene])[0].text


def test_bad_images_are_one_clear_error(caption_run, tmp_path):
    predictor = rnnkit.load(caption_run)
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    for inputs, message in [
        (np.zeros((28, 112), np.uint8), "wrap one input in a list"),
        ([], "at least one input"),
        ([tmp_path / "missing.png"], "no image file"),
        ([text], "cannot read the image"),
        ([""], "input 1 is an empty path"),
        ([np.zeros((28, 56), np.uint8)], "input 1 is 56x28 pixels"),
        ([np.zeros((28, 112), np.float32)], "must be grayscale \\(H, W\\) uint8, got float32"),
        ([np.zeros((28, 112, 3), np.uint8)], "of shape \\(28, 112, 3\\)"),
        ([torch.zeros(28, 112)], "image files or \\(H, W\\) uint8 arrays, got Tensor"),
    ]:
        with pytest.raises(RnnkitError, match=message) as error:
            predictor.predict(inputs)
        assert "\n" not in str(error.value)
    with pytest.raises(RnnkitError, match="beam must be a positive integer"):
        predictor.predict([np.zeros((28, 112), np.uint8)], beam=0)
