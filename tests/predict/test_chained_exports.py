"""`rnnkit export` of the encoder-decoders (translate, caption: an encoder and a decoder step a
client chains) and of music (the step composing the next frame): the files and model.json, and
clients written here against ONNX Runtime alone decoding and composing what the predictors
answer (greedy translations and captions token for token, a seed's piece frame for frame)."""

from __future__ import annotations

import gzip
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import rnnkit
from rnnkit import export
from rnnkit.cli import main
from rnnkit.data import images as fm
from rnnkit.data.music import midi_bytes, roll_from_pitches
from rnnkit.errors import RnnkitError

ort = pytest.importorskip("onnxruntime", reason="the export extra: pip install onnxruntime")
spm = pytest.importorskip("sentencepiece")

TINY = ["--embed", "8", "--batch", "8", "--beam", "2", "--max-steps", "4", "--eval-every", "2",
        "--log-every", "2", "--warmup", "1", "--progress", "none"]  # fmt: skip
TRANSLATE = ["--src-vocab", "400", "--tgt-vocab", "400", "--hidden-size", "8",
             "--decoder-hidden", "16", "--eval-sentences", "8", *TINY]  # fmt: skip
CAPTION = ["--channels", "8", "--decoder-hidden", "16", "--valid-scenes", "8", "--eval-scenes",
           "8", "--test-scenes", "4", *TINY]  # fmt: skip
MUSIC = ["--hidden-size", "16", "--batch", "4", "--nade-hidden", "8", "--progress", "none",
         "--eval-every", "5", "--warmup", "2", "--max-steps", "10"]  # fmt: skip
CHORDS = [[60, 64, 67], [62, 65, 69], [59, 62, 67], [60, 64, 67, 72]]
SENTENCES = ["A dog runs.", "Two young men in red shirts are playing football on a green field "
             "while a crowd watches them.", "A woman", "Kids play ☃ outside."]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: intra-op threads only slow them down (and the cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(*args) -> None:
    result = CliRunner().invoke(main, ["train", *map(str, args)])
    assert result.exit_code == 0, result.output


def export_cli(run: Path, out: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, dataset) -> Path:
    """120 pairs of Multi30k's validation files, as files ``en`` and ``de``."""
    multi30k = dataset("multi30k")
    folder = tmp_path_factory.mktemp("pairs")
    for lang in ("en", "de"):
        with gzip.open(multi30k / f"val.{lang}.gz", "rt", encoding="utf-8") as f:
            (folder / lang).write_text("".join(itertools.islice(f, 120)))
    return folder


@pytest.fixture(scope="module")
def translate_runs(pairs, tmp_path_factory) -> dict[str, Path]:
    """A GRU run with additive attention, and an LSTM run of two layers each side with dot
    attention (the keys are the memory)."""
    root = tmp_path_factory.mktemp("runs")
    data = ["--src", pairs / "en", "--tgt", pairs / "de"]
    train("translate", *data, "--out", root / "gru", *TRANSLATE)
    train("translate", *data, "--out", root / "lstm", *TRANSLATE, "--cell", "lstm",
          "--attention", "dot", "--num-layers", "2", "--decoder-layers", "2")  # fmt: skip
    return {"gru": root / "gru", "lstm": root / "lstm"}


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory) -> Path:
    if not Path(fm.DEFAULT_DIR).is_dir():
        pytest.skip(f"Fashion-MNIST is absent ({fm.DEFAULT_DIR}): apt-get install "
                    "dataset-fashion-mnist")  # fmt: skip
    out = tmp_path_factory.mktemp("runs") / "caption"
    train("caption", "--out", out, *CAPTION)
    return out


@pytest.fixture(scope="module")
def music_runs(tmp_path_factory) -> dict[str, Path]:
    """A NADE run (LSTM, weight dropout as trained by default) and a Bernoulli GRU run."""
    root = tmp_path_factory.mktemp("music")
    chords = {split: [[CHORDS[(i + t) % 4] for t in range(6 + i % 5)] for i in range(n)]
              for split, n in (("train", 10), ("valid", 3), ("test", 4))}  # fmt: skip
    (root / "chords.json").write_text(json.dumps(chords))
    train("music", "--data", root / "chords.json", "--head", "nade", *MUSIC, "--out", root / "nade")
    train("music", "--data", root / "chords.json", "--cell", "gru", "--num-layers", "2", *MUSIC,
          "--out", root / "bernoulli")  # fmt: skip
    primer = roll_from_pitches([CHORDS[t % 4] for t in range(5)])[0]
    (root / "primer.mid").write_bytes(midi_bytes(primer))
    return {"nade": root / "nade", "bernoulli": root / "bernoulli", "primer": root / "primer.mid"}


# --- a client of the encoder-decoder graphs: ONNX Runtime and numpy only ----------------------


class Decoder:
    """Greedy decoding with the exported graphs, as a client does it (model.json's chain)."""

    def __init__(self, folder: Path) -> None:
        self.meta = json.loads((folder / "model.json").read_text())
        graphs = self.meta["graphs"]
        self.encoder = ort.InferenceSession(str(folder / graphs["encoder"]["file"]))
        self.decoder = ort.InferenceSession(str(folder / graphs["decoder"]["file"]))

    def greedy(self, feed: dict[str, np.ndarray], max_len: list[int]) -> tuple[list, list]:
        """Each input's tokens (cut before eos, or at its ``max_len``) and attention rows."""
        ids, chain = self.meta["special_ids"], self.meta["chain"]
        names = [o.name for o in self.encoder.get_outputs()]
        carried = dict(zip(names, self.encoder.run(None, feed)))
        batch = len(max_len)
        token = np.full(batch, ids["bos"], dtype=np.int64)
        tokens, weights = [[] for _ in range(batch)], [[] for _ in range(batch)]
        done = np.zeros(batch, dtype=bool)
        for step in range(max(max_len)):
            done |= np.array([step >= m for m in max_len])
            if done.all():
                break
            out = dict(zip([o.name for o in self.decoder.get_outputs()],
                           self.decoder.run(None, {"token": token, **carried})))  # fmt: skip
            assert np.isfinite(out["log_probs"]).all()
            np.testing.assert_allclose(np.exp(out["log_probs"]).sum(-1), 1.0, atol=1e-5)
            carried.update({chain["feedback"][n]: v for n, v in out.items() if n.endswith("_n")})
            token = out["log_probs"].argmax(-1)
            for b in np.flatnonzero(~done):
                if token[b] == ids["eos"]:
                    done[b] = True
                else:
                    tokens[b].append(int(token[b]))
                    weights[b].append(out["attention"][b])
        return tokens, weights


def client_translate(folder: Path, sentences: list[str]) -> tuple[list[str], list, list]:
    """Greedy translations of ``sentences`` batched together, by a client of the export."""
    client = Decoder(folder)
    ids = client.meta["special_ids"]
    source = spm.SentencePieceProcessor(model_file=str(folder / "src.spm"))
    target = spm.SentencePieceProcessor(model_file=str(folder / "tgt.spm"))
    limit = client.meta["tokenizer"]["max_source_pieces"]
    rows = [source.encode(s)[:limit] + [ids["eos"]] for s in sentences]
    src = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
    for b, row in enumerate(rows):
        src[b, : len(row)] = row
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    most = client.meta["max_tokens"]  # per source position, extra, at most
    limits = [
        min(most["per_source_position"] * n + most["extra"], most["at_most"]) for n in lengths
    ]
    tokens, weights = client.greedy({"src": src, "src_lengths": lengths}, limits)
    texts = [target.decode([t for t in row if t > ids["eos"]]) for row in tokens]
    return texts, tokens, [[w[:n] for w in rows] for rows, n in zip(weights, lengths)]


# --- translate -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_translate_exports_an_encoder_and_a_decoder_step(translate_runs, tmp_path, kind):
    output = export_cli(translate_runs[kind], tmp_path)
    assert f"to {tmp_path / 'encoder.onnx'}, {tmp_path / 'decoder.onnx'}" in output
    assert "chained: greedy decoding of the first 4 sentences" in output
    assert {p.name for p in tmp_path.iterdir()} == {"encoder.onnx", "decoder.onnx", "model.json",
                                                     "src.spm", "tgt.spm"}  # fmt: skip
    meta = json.loads((tmp_path / "model.json").read_text())
    state = ["h", "c", "feed"] if kind == "lstm" else ["h", "feed"]
    encoder, decoder = meta["graphs"]["encoder"], meta["graphs"]["decoder"]
    assert [d["name"] for d in encoder["inputs"]] == ["src", "src_lengths"]
    assert [d["name"] for d in encoder["outputs"]] == ["memory", "mask", "keys", *state]
    assert [d["name"] for d in decoder["inputs"]] == ["token", "memory", "mask", "keys", *state]
    assert [d["name"] for d in decoder["outputs"]] == [
        "log_probs", "attention", *(f"{n}_n" for n in state)
    ]  # fmt: skip
    assert encoder["inputs"][0]["shape"] == ["B", "S"] and decoder["inputs"][0]["shape"] == ["B"]
    for graph in (encoder, decoder):
        assert [c["steps"] for c in graph["check"]["lengths"]] == [12, 30]
        assert graph["check"]["axis"] == "S"
        assert all(0 <= c["max_abs_diff"] <= 1e-4 for c in graph["check"]["lengths"])
    chained = meta["check"]["chained"]
    assert chained["same_tokens"] and chained["steps"] >= 1 and chained["max_abs_diff"] <= 1e-4
    predictor = rnnkit.load(translate_runs[kind])
    assert meta["target_vocabulary"][5] == predictor.tgt_spm.processor.id_to_piece(5)
    assert len(meta["source_vocabulary"]) == len(predictor.src_spm)
    assert meta["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert meta["chain"]["feedback"] == {f"{n}_n": n for n in state}


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_a_client_of_the_onnx_graphs_translates_as_greedy_decoding_does(
    translate_runs, tmp_path, kind
):
    """Sentences the run never saw, batched together with lengths, by ONNX Runtime alone: the
    tokens, text and attention of `predict(beam=1)`."""
    export_cli(translate_runs[kind], tmp_path)
    texts, tokens, attention = client_translate(tmp_path, SENTENCES)
    predictor = rnnkit.load(translate_runs[kind])
    for text, ids, weights, expected in zip(
        texts, tokens, attention, predictor.predict(SENTENCES, beam=1)
    ):
        assert ids == [predictor.tgt_spm.processor.piece_to_id(p) for p in expected.target_tokens]
        assert text == expected.text
        np.testing.assert_allclose(np.array(weights).reshape(len(ids), -1),
                                   np.array(expected.attention).reshape(len(ids), -1),
                                   atol=1e-5)  # fmt: skip


def test_translate_exports_as_torch_programs(translate_runs, tmp_path):
    """--format pt2: two programs, checked and chained as the ONNX graphs are; loaded with
    torch.export.load, they decode a sentence as the model does."""
    report = export.export_run(rnnkit.load(translate_runs["lstm"]), "pt2", tmp_path)
    assert report["paths"] == {"encoder": str(tmp_path / "encoder.pt2"),
                               "decoder": str(tmp_path / "decoder.pt2")}  # fmt: skip
    assert report["check"]["chained"]["same_tokens"]
    encoder = torch.export.load(tmp_path / "encoder.pt2").module()
    decoder = torch.export.load(tmp_path / "decoder.pt2").module()
    predictor = rnnkit.load(translate_runs["lstm"])
    rows = [predictor.encode(s, 1) for s in ["A dog runs on the grass.", "A cat sits."]]
    src = torch.tensor([r + [0] * (len(rows[0]) - len(r)) for r in rows])
    lengths = torch.tensor([len(r) for r in rows])
    tokens = []
    with torch.no_grad():
        memory, mask, keys, *state = encoder(src, lengths)
        token = torch.full((2,), 2)  # bos
        for _ in range(6):
            log_probs, _, *state = decoder(token, memory, mask, keys, *state)
            token = log_probs.argmax(-1)
            tokens.append(token.tolist())
    expected = predictor.model.greedy(src, lengths, 6)
    for b, want in enumerate(expected):
        row = [step[b] for step in tokens]
        assert row[: len(want)] == want and (len(want) == 6 or row[len(want)] == 3)


def test_a_chain_that_decodes_otherwise_is_refused_and_leaves_nothing(
    translate_runs, tmp_path, monkeypatch
):
    predictor = rnnkit.load(translate_runs["gru"])
    monkeypatch.setattr(predictor.model, "greedy", lambda src, *a: [[5, 6, 7]] * len(src))
    with pytest.raises(RnnkitError, match="gives other tokens than PyTorch's for input 1") as err:
        export.export_run(predictor, "onnx", tmp_path / "out")
    assert "\n" not in str(err.value) and not any((tmp_path / "out").iterdir())
    monkeypatch.undo()
    monkeypatch.setattr(export, "TOLERANCE", -1.0)
    with pytest.raises(RnnkitError, match="differs from PyTorch by"):
        export.export_run(rnnkit.load(translate_runs["gru"]), "onnx", tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_bad_export_requests_are_one_line_and_exit_2(translate_runs, tmp_path):
    run = translate_runs["gru"]
    for args, message in [
        (["--format", "tflite"], "error: --format must be one of onnx, pt2, got 'tflite'"),
        (["--format", ""], "error: --format must be one of onnx, pt2, got ''"),
    ]:
        result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "x"),
                                           *args])  # fmt: skip
        assert result.exit_code == 2 and result.output.strip() == message, result.output
        assert not (tmp_path / "x").exists()
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    config = json.loads((moved / "config.json").read_text())
    config["task_config"]["src"] = str(tmp_path / "gone.en")
    (moved / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["export", str(moved), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: the export is checked on the run's sentences")
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "y").exists()


# --- caption -------------------------------------------------------------------------------------


def test_a_client_of_the_onnx_graphs_captions_as_greedy_decoding_does(caption_run, tmp_path):
    output = export_cli(caption_run, tmp_path)
    assert "encoder: checked: ONNX Runtime against PyTorch at B = 2, 5" in output
    meta = json.loads((tmp_path / "model.json").read_text())
    encoder = meta["graphs"]["encoder"]
    assert encoder["inputs"] == [{"name": "pixels", "dtype": "uint8", "shape": ["B", 28, 112]}]
    assert meta["image"]["height"] == 28 and meta["image"]["width"] == 112
    assert meta["check"]["chained"]["same_tokens"]
    predictor = rnnkit.load(caption_run)
    assert meta["vocabulary"] == predictor.vocab.words
    rng = np.random.default_rng(11)
    pool = fm.load_fashion_mnist("test")
    scenes = [fm.compose_scene(*pool, rng, n, n, 4)[0] for n in (1, 4, 2, 3)]
    tokens, weights = Decoder(tmp_path).greedy({"pixels": np.stack(scenes)},
                                               [meta["max_tokens"]["at_most"]] * 4)  # fmt: skip
    for ids, rows, expected in zip(tokens, weights, predictor.predict(scenes, beam=1)):
        assert predictor.vocab.decode(ids) == expected.text
        assert predictor.vocab.names(ids) == expected.target_tokens
        np.testing.assert_allclose(np.array(rows).reshape(len(ids), -1),
                                   np.array(expected.attention).reshape(len(ids), -1),
                                   atol=1e-5)  # fmt: skip


def test_caption_exports_as_torch_programs(caption_run, tmp_path):
    report = export.export_run(rnnkit.load(caption_run), "pt2", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.pt2", "encoder.pt2",
                                                          "model.json"]  # fmt: skip
    assert report["graphs"]["decoder"]["check"]["axis"] == "tokens read"
    assert report["check"]["chained"]["max_abs_diff"] <= 1e-4


# --- music ---------------------------------------------------------------------------------------


def client_compose(folder: Path, frames: int, seed: int, temperature: float,
                   primer: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """A piece composed by ONNX Runtime alone, the noise drawn as `compose` draws it."""
    meta = json.loads((folder / "model.json").read_text())
    session = ort.InferenceSession(str(folder / meta["file"]))
    keys = meta["keys"]
    state = {n: np.zeros((meta["layers"], 1, meta["hidden"]), np.float32) for n in meta["state"]}
    x = np.zeros((1, 1, keys + 1), np.float32)
    x[..., meta["start_column"]] = 1.0  # the start step
    if primer is not None:
        x = np.concatenate([x, np.pad(primer, ((0, 0), (0, 1)))[:, None]])
    generator = torch.Generator().manual_seed(seed)
    drawn = []
    for _ in range(frames):
        noise = torch.rand(keys, generator=generator).numpy()[None]
        temperatures = np.array([temperature], np.float32)
        frame, logits, *new = session.run(None, {"x": x, "noise": noise,
                                                 "temperature": temperatures, **state})  # fmt: skip
        assert np.isfinite(logits).all() and set(np.unique(frame)) <= {0.0, 1.0}
        state = dict(zip(meta["state"], new))
        drawn.append(frame[0])
        x = np.pad(frame, ((0, 0), (0, 1)))[None]
    return np.stack(drawn)


@pytest.mark.parametrize("head", ["nade", "bernoulli"])
def test_music_exports_its_step_and_composes_the_seeds_piece(music_runs, tmp_path, head):
    output = export_cli(music_runs[head], tmp_path)
    assert "checked: ONNX Runtime against PyTorch at T = 12, 30 on the run's pieces" in output
    meta = json.loads((tmp_path / "model.json").read_text())
    state = ["h", "c"] if head == "nade" else ["h"]
    assert [d["name"] for d in meta["inputs"]] == ["x", "noise", "temperature", *state]
    assert [d["name"] for d in meta["outputs"]] == ["frame", "logits", *(f"{n}_n" for n in state)]
    assert meta["inputs"][0]["shape"] == ["T", "B", 89] and meta["head"] == head
    assert (meta["keys"], meta["lowest_pitch"], meta["highest_pitch"]) == (88, 21, 108)
    assert meta["steps_per_quarter"] == 1 and meta["tempo"] == 80.0
    assert all(c["max_abs_diff"] <= 1e-4 for c in meta["check"]["lengths"])
    composer = rnnkit.load(music_runs[head])
    for seed, temperature in ((1, 1.0), (7, 0.6), (3, 0.0)):
        expected = composer.compose(frames=12, seed=seed, temperature=temperature)
        got = client_compose(tmp_path, 12, seed, temperature)
        np.testing.assert_array_equal(got, np.array(expected.piano_roll))
    expected = composer.compose(frames=8, prime=music_runs["primer"], seed=4)
    primer = np.array(expected.piano_roll[:5], np.float32)
    got = client_compose(tmp_path, 8, 4, 1.0, primer)
    np.testing.assert_array_equal(got, np.array(expected.piano_roll[5:]))


def test_music_exports_as_a_torch_program(music_runs, tmp_path):
    report = export.export_run(rnnkit.load(music_runs["nade"]), "pt2", tmp_path)
    assert report["path"] == str(tmp_path / "model.pt2")
    assert all(c["max_abs_diff"] <= 1e-4 for c in report["check"]["lengths"])
    step = torch.export.load(tmp_path / "model.pt2").module()
    x = torch.zeros(3, 2, 89)
    x[0, :, 88] = 1.0
    frame, logits, h, c = step(x, torch.rand(2, 88), torch.tensor([1.0, 0.0]),
                               torch.zeros(1, 2, 16), torch.zeros(1, 2, 16))  # fmt: skip
    assert frame.shape == logits.shape == (2, 88) and h.shape == c.shape == (1, 2, 16)
    assert torch.equal(frame[1], (logits[1] > 0).float())  # temperature 0: the likelier value


# --- torch.export: a step taking its state as *state, and what it refuses --------------------


def test_a_charlm_step_exports_as_a_torch_program_with_its_state(tmp_path):
    """charlm's step takes its state as ``*state``: torch.export gets one dict of dynamic axes
    per state tensor, grouped as forward takes them."""
    (tmp_path / "text.txt").write_text("First Citizen:\nBefore we proceed any further.\n" * 30)
    train("charlm", "--text", tmp_path / "text.txt", "--hidden-size", "16", "--num-layers", "1",
          "--embed", "8", "--batch", "4", "--seq-len", "16", "--max-steps", "5", "--progress",
          "none", "--out", tmp_path / "lm")  # fmt: skip
    output = export_cli(tmp_path / "lm", tmp_path / "out", "--format", "pt2")
    assert "inputs: ids ('T', 'B') int64; h (1, 'B', 16) float32; c (1, 'B', 16)" in output
    step = torch.export.load(tmp_path / "out" / "model.pt2").module()
    predictor = rnnkit.load(tmp_path / "lm")
    ids = predictor.encode("First Cit").unsqueeze(1)
    h = c = torch.zeros(1, 1, 16)
    with torch.no_grad():
        for t in range(len(ids)):  # one token at a time, the state fed back
            logits, h, c = step(ids[t : t + 1], h, c)
    (expected,) = predictor.next_tokens(["First Cit"], k=3)
    top = logits[-1, 0].softmax(-1).topk(3)
    assert [predictor.vocab.tokens[i] for i in top.indices] == expected.tokens
    np.testing.assert_allclose(top.values.numpy(), expected.probabilities, atol=1e-6)


def test_what_torch_export_refuses_is_one_line_and_leaves_nothing(
    music_runs, tmp_path, monkeypatch
):
    def refuse(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression\nmore\ndetail")

    monkeypatch.setattr(torch.export, "export", refuse)
    result = CliRunner().invoke(main, ["export", str(music_runs["nade"]), "--format", "pt2",
                                       "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output == ("error: torch.export cannot record this model (RuntimeError: Could "
                             "not guard on data-dependent expression); export it with --format "
                             "onnx\n")  # fmt: skip
    assert not any(tmp_path.iterdir())
