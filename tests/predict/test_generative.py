"""`rnnkit.load` for the generative tasks: charlm (generate, stream, next_tokens) and music
(compose): the same text and MIDI bytes as the commands, batches equal to single inputs,
strict JSON, threads, bad input."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import rnnkit
from rnnkit.cli import main
from rnnkit.data.music import KEYS, midi_bytes, read_midi, roll_from_pitches
from rnnkit.errors import RnnkitError
from rnnkit.tasks.charlm import CharLMPredictor, Generation, NextTokens, Token
from rnnkit.tasks.music import Composition, MusicPredictor

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\n"
        "Resolved. resolved.\n") * 3  # fmt: skip
LM = ["--hidden-size", "16", "--num-layers", "1", "--embed", "8", "--batch", "4",
      "--progress", "none", "--eval-every", "10", "--warmup", "2"]  # fmt: skip
PROMPTS = ["First Citizen:\nBefore", "All", "You are all resolved rather", "S"]
CHORDS = [[60, 64, 67], [62, 65, 69], [59, 62, 67], [60, 64, 67, 72]]
MUSIC = ["--hidden-size", "16", "--batch", "4", "--nade-hidden", "8", "--dropout", "0",
         "--input-dropout", "0", "--progress", "none", "--eval-every", "5",
         "--warmup", "2"]  # fmt: skip


def cli(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny runs made with the command line: charlm by characters and by words, music (NADE)."""
    root = tmp_path_factory.mktemp("generative")
    (root / "text.txt").write_text(TEXT)
    chords = {split: [[CHORDS[(i + t) % 4] for t in range(6 + i % 5)] for i in range(n)]
              for split, n in (("train", 10), ("valid", 3), ("test", 4))}  # fmt: skip
    (root / "chords.json").write_text(json.dumps(chords))
    cli("train", "charlm", "--text", root / "text.txt", *LM, "--seq-len", "16", "--max-steps",
        "20", "--out", root / "char")  # fmt: skip
    cli("train", "charlm", "--text", root / "text.txt", *LM, "--unit", "word", "--seq-len", "8",
        "--max-steps", "10", "--out", root / "word")  # fmt: skip
    cli("train", "music", "--data", root / "chords.json", "--head", "nade", *MUSIC,
        "--max-steps", "10", "--out", root / "music")  # fmt: skip
    primer = roll_from_pitches([CHORDS[t % 4] for t in range(5)])[0]
    (root / "primer.mid").write_bytes(midi_bytes(primer))
    return {"char": root / "char", "word": root / "word", "music": root / "music",
            "primer": root / "primer.mid"}  # fmt: skip


def strict_json(result) -> dict:
    return json.loads(json.dumps(result.to_dict(), allow_nan=False))


def one_line_error(call, *fragments: str) -> None:
    with pytest.raises(RnnkitError) as caught:
        call()
    message = str(caught.value)
    assert message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


# --- charlm ------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["char", "word"])
def test_generate_prints_what_rnnkit_sample_prints(runs, unit):
    lm = rnnkit.load(runs[unit], checkpoint="last")
    assert isinstance(lm, CharLMPredictor) and lm.task == "charlm"
    for prompt, length, seed in (("First", 40, 3), ("All: speak", 25, 1), ("You", 0, 2)):
        generation = lm.generate(prompt, max_tokens=length, seed=seed)
        assert isinstance(generation, Generation)
        printed = cli("sample", runs[unit], "--prompt", prompt, "--length", length, "--seed", seed)
        assert printed == generation.summary() + "\n"
        assert generation.prompt == prompt and generation.tokens == length
        assert strict_json(generation) == {"text": generation.text, "prompt": prompt,
                                           "tokens": length}  # fmt: skip
    unprompted = lm.generate(None, max_tokens=30, seed=4)
    assert unprompted.prompt == "" and cli("sample", runs[unit], "--length", 30, "--seed", 4) == (
        unprompted.text + "\n"
    )
    if unit == "char":
        assert len(lm.generate("First", max_tokens=40, seed=3).text) == 40
    assert lm.generate("First", 40, seed=3).text != lm.generate("First", 40, seed=5).text
    best = rnnkit.load(runs[unit]).generate("All", 20, temperature=1.2, top_k=None, top_p=0.9)
    printed = cli("sample", runs[unit], "--prompt", "All", "--length", 20, "--temperature", 1.2,
                  "--top-k", 0, "--top-p", 0.9, "--checkpoint", "best")  # fmt: skip
    assert printed == best.summary() + "\n"


def test_stream_yields_the_generated_text_token_by_token(runs):
    lm = rnnkit.load(runs["char"])
    generation = lm.generate("First", max_tokens=30, temperature=1.0, seed=7)
    tokens = list(lm.stream("First", max_tokens=30, temperature=1.0, seed=7))
    assert all(isinstance(t, Token) for t in tokens) and [t.step for t in tokens] == list(range(30))
    assert "".join(t.text for t in tokens) == generation.text
    assert all(0.0 < t.probability <= 1.0 for t in tokens)
    json.dumps([t.to_dict() for t in tokens], allow_nan=False)
    # each probability is the model's for that token after everything before it: one pass over
    # the whole text gives them, so the carried state is the state of the text read so far
    ids = lm.vocab.encode("First" + generation.text)
    with torch.no_grad():
        logits, _ = lm.model(ids.unsqueeze(1))
    probs = logits[4:-1, 0].softmax(-1).gather(1, ids[5:].unsqueeze(1)).squeeze(1)
    assert [t.probability for t in tokens] == pytest.approx(probs.tolist(), abs=1e-5)
    # lazy: the first tokens arrive before the rest is drawn, and equal the full run's
    first = lm.stream("First", max_tokens=10**9, temperature=1.0, seed=7)
    assert [next(first).text for _ in range(5)] == [t.text for t in tokens[:5]]


def test_next_tokens_are_the_likeliest_continuations(runs):
    lm = rnnkit.load(runs["char"])
    vocab = len(lm.vocab)
    answers = lm.next_tokens(PROMPTS, k=5)
    assert len(answers) == len(PROMPTS) and all(isinstance(a, NextTokens) for a in answers)
    for prompt, answer in zip(PROMPTS, answers):
        assert answer.prompt == prompt and len(answer.tokens) == 5 == len(set(answer.tokens))
        assert set(answer.tokens) <= set(lm.vocab.tokens)
        assert answer.probabilities == sorted(answer.probabilities, reverse=True)
        assert 0.0 < sum(answer.probabilities) <= 1.0 + 1e-6
        strict_json(answer)
    (everything,) = lm.next_tokens(["First"], k=vocab + 10)  # all the vocabulary, no more
    assert len(everything.tokens) == vocab
    assert sum(everything.probabilities) == pytest.approx(1.0, abs=1e-5)
    # the likeliest next token is what temperature 0 draws
    assert lm.generate("First", max_tokens=1, temperature=0.0).text == everything.tokens[0]
    # the probability stream gives the first token is the one next_tokens gives it
    (token,) = lm.stream("First", max_tokens=1, seed=3)
    chance = dict(zip(everything.tokens, everything.probabilities))[token.text]
    assert token.probability == pytest.approx(chance, abs=1e-6)
    words = rnnkit.load(runs["word"]).next_tokens(["First Citizen", "All"], k=3)
    assert all(len(a.tokens) == 3 and " " not in "".join(a.tokens) for a in words)


def test_a_batch_answers_what_each_prompt_answers_alone(runs):
    lm = rnnkit.load(runs["char"])
    together = lm.next_tokens(PROMPTS, k=len(lm.vocab))
    for prompt, batched in zip(PROMPTS, together):
        (alone,) = lm.next_tokens([prompt], k=len(lm.vocab))
        want = dict(zip(alone.tokens, alone.probabilities))
        got = dict(zip(batched.tokens, batched.probabilities))
        assert set(got) == set(want)
        assert all(got[t] == pytest.approx(want[t], abs=1e-5) for t in want)
    generated = lm.predict(PROMPTS)
    assert [g.to_dict() for g in generated] == [lm.generate(p).to_dict() for p in PROMPTS]
    assert all(g.tokens == 200 for g in generated)
    assert lm.parse(["one prompt", "another"]) == ["one prompt", "another"]


def test_one_language_model_serves_threads(runs):
    lm = rnnkit.load(runs["char"])
    expected = {seed: lm.generate("All", 60, seed=seed).text for seed in range(4)}
    suggested = lm.next_tokens(PROMPTS)[0].probabilities
    answers: list = []

    def ask(seed: int) -> None:
        for _ in range(3):
            streamed = "".join(t.text for t in lm.stream("All", 60, seed=seed))
            answers.append((seed, lm.generate("All", 60, seed=seed).text, streamed,
                            lm.next_tokens(PROMPTS)[0].probabilities))  # fmt: skip

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 12
    for seed, text, streamed, probabilities in answers:
        assert text == streamed == expected[seed]
        assert probabilities == pytest.approx(suggested, abs=1e-6)


def test_bad_prompts_and_settings_are_one_clear_error(runs, tmp_path):
    lm = rnnkit.load(runs["char"])
    one_line_error(lambda: lm.predict("a bare prompt"), "wrap one input in a list")
    one_line_error(lambda: lm.predict([]), "at least one input")
    one_line_error(lambda: lm.predict([7]), "text prompts", "int")
    one_line_error(lambda: lm.next_tokens(["All", b"All"]), "text prompts", "bytes")
    one_line_error(lambda: lm.generate(""), "has no tokens")
    one_line_error(lambda: lm.stream("First $"), "the prompt has the character '$'", "column 7")
    one_line_error(lambda: lm.generate("All", max_tokens=-1), "max_tokens")
    one_line_error(lambda: lm.generate("All", temperature=-0.5), "temperature")
    one_line_error(lambda: lm.stream("All", top_k=0), "top_k")
    one_line_error(lambda: lm.generate("All", top_p=1.5), "top_p")
    one_line_error(lambda: lm.generate("All", seed="one"), "seed")
    one_line_error(lambda: lm.next_tokens(["All"], k=0), "k must be")
    one_line_error(lambda: rnnkit.load(runs["char"], checkpoint="first"), "checkpoint")
    one_line_error(lambda: rnnkit.load(tmp_path / "nowhere"), "does not exist")
    one_line_error(lambda: CharLMPredictor(runs["music"]), "not a charlm run")


# --- music -------------------------------------------------------------------------------------


def onsets_by_hand(roll: list[list[int]]) -> int:
    before = [0] * KEYS
    count = 0
    for frame in roll:
        count += sum(1 for key in range(KEYS) if frame[key] and not before[key])
        before = frame
    return count


def test_compose_writes_what_rnnkit_compose_writes(runs, tmp_path):
    composer = rnnkit.load(runs["music"])
    assert isinstance(composer, MusicPredictor) and composer.task == "music"
    for seed, prime in ((3, None), (5, runs["primer"])):
        piece = composer.compose(frames=12, prime=prime, seed=seed, tempo=90.0)
        out = tmp_path / f"piece-{seed}.mid"
        extra = ["--prime", prime] if prime else []
        cli("compose", runs["music"], "--out", out, "--frames", 12, "--tempo", 90, "--seed", seed,
            *extra)  # fmt: skip
        assert out.read_bytes() == piece.midi
        assert torch.equal(read_midi(out), torch.tensor(piece.piano_roll, dtype=torch.float32))
    assert composer.compose(12, seed=3).midi != composer.compose(12, seed=4).midi


def test_a_composition_holds_the_roll_its_midi_and_counts(runs, tmp_path):
    composer = rnnkit.load(runs["music"])
    piece = composer.compose(frames=10, prime=str(runs["primer"]), seed=2, tempo=120.0)
    assert isinstance(piece, Composition)
    assert piece.prime_frames == 5 and piece.frames == 10 and piece.tempo == 120.0
    assert len(piece.piano_roll) == 15 and all(len(f) == KEYS for f in piece.piano_roll)
    assert {v for frame in piece.piano_roll for v in frame} <= {0, 1}
    primer = read_midi(runs["primer"]).to(torch.int64).tolist()
    assert piece.piano_roll[:5] == primer
    assert piece.notes == onsets_by_hand(piece.piano_roll)
    data = strict_json(piece)
    assert base64.b64decode(data["midi"]) == piece.midi and data["piano_roll"] == piece.piano_roll
    (tmp_path / "again.mid").write_bytes(piece.midi)
    assert read_midi(tmp_path / "again.mid").to(torch.int64).tolist() == piece.piano_roll
    # a roll continues like the MIDI file it came from; temperature 0 ignores the seed
    assert composer.compose(10, prime=primer, seed=2, tempo=120.0).midi == piece.midi
    coldest = {composer.compose(8, seed=s, temperature=0.0).midi for s in (1, 2)}
    assert len(coldest) == 1
    assert piece.summary().startswith(f"5 primer + 10 composed frames, {piece.notes} notes")


def test_a_batch_of_pieces_answers_what_each_answers_alone(runs):
    composer = rnnkit.load(runs["music"])
    primer = str(runs["primer"])
    short_primer = read_midi(runs["primer"])[:2].tolist()
    inputs = [{"frames": 9, "seed": 4}, primer, {"frames": 5, "prime": short_primer, "seed": 2},
              {"frames": 14, "temperature": 0.7, "tempo": 100.0, "prime": primer}, {}]  # fmt: skip
    together = composer.predict(inputs)
    alone = [composer.compose(**(item if isinstance(item, dict) else {"prime": item}))
             for item in inputs]  # fmt: skip
    assert [c.frames for c in together] == [9, 64, 5, 14, 64]
    assert [c.prime_frames for c in together] == [0, 5, 2, 5, 0]
    for batched, single in zip(together, alone):
        assert batched.to_dict() == single.to_dict()
    assert composer.parse([primer, "frames=8, seed=2,temperature=0.5"]) == [
        primer, {"frames": 8, "seed": 2, "temperature": 0.5}]  # fmt: skip


def test_one_composer_serves_threads(runs):
    composer = rnnkit.load(runs["music"], checkpoint="last")
    expected = {seed: composer.compose(16, seed=seed).midi for seed in range(3)}
    answers: list = []

    def ask(seed: int) -> None:
        for _ in range(3):
            answers.append((seed, composer.compose(16, seed=seed).midi))

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 9 and all(midi == expected[seed] for seed, midi in answers)


def test_bad_compose_requests_are_one_clear_error(runs, tmp_path):
    composer = rnnkit.load(runs["music"])
    one_line_error(lambda: composer.predict(str(runs["primer"])), "wrap one input in a list")
    one_line_error(lambda: composer.predict([]), "at least one input")
    one_line_error(lambda: composer.predict([3]), "a music run takes", "int")
    one_line_error(lambda: composer.predict([str(tmp_path / "none.mid")]), "does not exist")
    one_line_error(lambda: composer.predict([{"bars": 4}]), "not bars")
    one_line_error(lambda: composer.compose(frames=0), "frames must be")
    one_line_error(lambda: composer.compose(frames=2.5), "frames must be")
    one_line_error(lambda: composer.compose(tempo=0), "tempo")
    one_line_error(lambda: composer.compose(temperature=-1.0), "temperature")
    one_line_error(lambda: composer.compose(seed=None), "seed")
    one_line_error(lambda: composer.compose(prime=[[0, 1]]), f"x {KEYS} keys", "a list of 1")
    one_line_error(lambda: composer.compose(prime=[[0] * KEYS, [1]]), "piano roll")
    one_line_error(lambda: composer.compose(prime=[[2] * KEYS]), "0/1")
    one_line_error(lambda: composer.compose(prime=[]), "0/1")
    one_line_error(lambda: composer.parse(["frames=many"]), "frames takes a number")
    one_line_error(lambda: composer.parse(["bars=4"]), "NAME one of")
    one_line_error(lambda: MusicPredictor(runs["char"]), "not a music run")


@pytest.mark.parametrize("unit", ["char", "word"])
def test_charlm_exports_its_step_function_with_the_state(runs, tmp_path, unit):
    """The ONNX graph reads a prompt, then tokens one at a time, the state carried by the
    client, as the predictor reads them."""
    ort = pytest.importorskip("onnxruntime", reason="the export extra: pip install onnxruntime")
    from rnnkit.export import export_run

    predictor = rnnkit.load(runs[unit])
    report = export_run(predictor, "onnx", tmp_path)
    assert [d["name"] for d in report["inputs"]] == ["ids", "h", "c"]
    assert [d["name"] for d in report["outputs"]] == ["logits", "h_n", "c_n"]
    assert report["vocabulary"] == predictor.vocab.tokens
    session = ort.InferenceSession(report["path"])
    ids = predictor.encode("the cat").unsqueeze(1).numpy()
    layers, hidden = predictor.cfg.layers, predictor.cfg.hidden
    h = c = np.zeros((layers, 1, hidden), dtype=np.float32)
    for t in range(ids.shape[0]):  # one token at a time, the state fed back
        logits, h, c = session.run(None, {"ids": ids[t : t + 1], "h": h, "c": c})
    (expected,) = predictor.next_tokens(["the cat"], k=3)
    probabilities = np.exp(logits[-1, 0] - logits[-1, 0].max())
    probabilities /= probabilities.sum()
    top = np.argsort(-probabilities)[:3]
    assert [predictor.vocab.tokens[i] for i in top] == expected.tokens
    np.testing.assert_allclose(probabilities[top], expected.probabilities, atol=1e-5)
