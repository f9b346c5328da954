"""Tiny trained runs for the server's tests, made through the tasks' Python entry points, and
inputs for them (WAV, PNG, CSV files). Each trains a few steps: the answers are a model's, not
good ones."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import torch

GOOD = ["a wonderful moving film", "great acting and a great story", "i loved it", "superb fun"]
BAD = ["a dull boring mess", "terrible acting , awful story", "i hated it", "tedious junk"]
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 6  # fmt: skip
LOOP = {"max_steps": 6, "eval_every": 3, "log_every": 3, "warmup": 2, "progress": "none"}
SHORT = {**LOOP, "max_steps": 4, "eval_every": 2, "log_every": 2, "warmup": 1}
#: English -> German toy pairs (colour x thing x verb), enough for a subword vocabulary
COLOURS = {"red": "rote", "green": "grüne", "blue": "blaue", "white": "weiße"}
THINGS = {"dog": "Hund", "cat": "Katze", "man": "Mann", "girl": "Mädchen"}
VERBS = {"runs": "rennt", "sleeps": "schläft", "sings": "singt"}
RATE = 8000
CHORDS = [[60, 64, 67], [62, 65, 69], [59, 62, 67], [60, 64, 67, 72]]


def charlm_run(root: Path) -> Path:
    from rnnkit.tasks import charlm

    (root / "text.txt").write_text(TEXT)
    flags = {"text": str(root / "text.txt"), "hidden": 16, "layers": 1, "embed": 8, "batch": 4,
             "seq_len": 16, **LOOP}  # fmt: skip
    return charlm.train(flags, out=str(root / "shakespeare")).run_dir


def sentiment_run(root: Path) -> Path:
    from rnnkit.tasks import sentiment

    data = root / "mr"
    data.mkdir()
    (data / "rt-polarity.pos").write_text("\n".join(GOOD * 2) + "\n")
    (data / "rt-polarity.neg").write_text("\n".join(BAD * 2) + "\n")
    flags = {"data": str(data), "hidden": 8, "embed": 8, "batch": 4, "min_count": 1, "folds": 4,
             **LOOP}  # fmt: skip
    sentiment.train(flags, out=str(root / "reviews"))
    return root / "reviews"


def translate_run(root: Path) -> Path:
    """English -> German on 48 toy sentence pairs ("A red dog runs." -> "Ein rote Hund rennt.")."""
    from rnnkit.tasks import translate

    pairs = [(f"A {c} {t} {v}.", f"Ein {cd} {td} {vd}.") for c, cd in COLOURS.items()
             for t, td in THINGS.items() for v, vd in VERBS.items()]  # fmt: skip
    for side, name in ((0, "en"), (1, "de")):
        (root / f"pairs.{name}").write_text("".join(p[side] + "\n" for p in pairs))
    flags = {"src": str(root / "pairs.en"), "tgt": str(root / "pairs.de"), "src_vocab": 400,
             "tgt_vocab": 400, "embed": 8, "hidden": 8, "decoder_hidden": 16, "batch": 8,
             "beam": 2, "valid_fraction": 0.1, **SHORT}  # fmt: skip
    translate.train(flags, out=str(root / "en-de"))
    return root / "en-de"


def fashion_folder(root: Path) -> Path:
    """A stand-in Fashion-MNIST folder: 60 training and 20 test pictures, each a noisy square of
    a size set by its label, so no Debian package is needed."""
    folder = root / "fashion"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 60), ("t10k", 20)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        pictures = rng.integers(0, 40, size=(count, 28, 28), dtype=np.uint8)
        for picture, label in zip(pictures, labels):
            side = 6 + 2 * int(label)
            picture[14 - side // 2 : 14 + side // 2, 14 - side // 2 : 14 + side // 2] = 220
        for kind, array in (("images-idx3", pictures), ("labels-idx1", labels)):
            header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
            header += struct.pack(f">{array.ndim}I", *array.shape)
            data = gzip.compress(header + array.tobytes())
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(data)
    return folder


def caption_run(root: Path) -> Path:
    from rnnkit.tasks import caption

    flags = {"data": str(fashion_folder(root)), "channels": 8, "embed": 8, "decoder_hidden": 16,
             "batch": 8, "beam": 2, "valid_images": 10, "valid_scenes": 8, "eval_scenes": 8,
             "test_scenes": 4, **SHORT}  # fmt: skip
    caption.train(flags, out=str(root / "caption"))
    return root / "caption"


def tone(freq: float, seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * RATE)) / RATE)).astype("f4")


def recordings(root: Path) -> Path:
    """An FSDD-named folder: 2 speakers x 10 digits x 9 recordings, a tone per digit."""
    from rnnkit.data import audio

    folder = root / "fsdd"
    if not folder.exists():
        folder.mkdir()
        for s, speaker in enumerate(("ann", "bob")):
            for d in range(10):
                for i in range(9):
                    wave = tone(200 + 150 * d + 40 * s, 0.12 + 0.01 * i)
                    audio.write_wav(folder / f"{d}_{speaker}_{i}.wav", wave, RATE)
    return folder


def digits_run(root: Path) -> Path:
    from rnnkit.tasks import speech

    flags = {"data": str(recordings(root)), "hidden": 8, "layers": 1, "batch": 2,
             "pooling": "attention", **SHORT}  # fmt: skip
    speech.train(flags, out=str(root / "digits"))
    return root / "digits"


def ctc_run(root: Path) -> Path:
    from rnnkit.tasks import speech_ctc

    flags = {"data": str(recordings(root)), "hidden": 8, "layers": 1, "batch": 2,
             "max_digits": 2, "valid_size": 2, "test_size": 2, **SHORT}  # fmt: skip
    speech_ctc.train(flags, out=str(root / "ctc"))
    return root / "ctc"


def monthly_csv(path: Path, rows: int = 60) -> Path:
    t = np.arange(rows)
    noise = np.random.default_rng(0).normal(scale=0.1, size=rows)
    index = pd.date_range("2000-01-01", periods=rows, freq="MS")
    pd.DataFrame({"month": index.strftime("%Y-%m"),
                  "y": 10 + np.sin(t / 2) + noise}).to_csv(path, index=False)  # fmt: skip
    return path


def forecast_run(root: Path) -> Path:
    from rnnkit.tasks import forecast

    flags = {"csv": str(monthly_csv(root / "monthly.csv")), "time_col": "month",
             "input_chunk_length": 12, "output_chunk_length": 6, "hidden_size": 8,
             **SHORT}  # fmt: skip
    forecast.train(flags, out=str(root / "months"))
    return root / "months"


def hourly_csv(path: Path, rows: int = 200, spike: int = 150) -> Path:
    """An hourly sine with one spike at row ``spike``."""
    t = np.arange(rows)
    values = np.sin(2 * np.pi * t / 24) + 0.05 * np.random.default_rng(1).normal(size=rows)
    values[spike] += 4.0
    index = pd.date_range("2020-01-01", periods=rows, freq="h")
    pd.DataFrame({"timestamp": index, "value": values}).to_csv(path, index=False)
    return path


def anomaly_run(root: Path) -> Path:
    from rnnkit.tasks import anomaly

    flags = {"csv": str(hourly_csv(root / "hourly.csv")), "time_col": "timestamp",
             "train_fraction": 0.5, "input_chunk_length": 12, "hidden_size": 8, "accumulate": 1,
             "threshold": "quantile", "quantile": 0.99, "refractory": 24, **SHORT}  # fmt: skip
    anomaly.train(flags, out=str(root / "sensor"))  # flags the spike
    return root / "sensor"


def music_run(root: Path) -> Path:
    from rnnkit.tasks import music

    chords = {split: [[CHORDS[(i + t) % 4] for t in range(6 + i % 5)] for i in range(n)]
              for split, n in (("train", 10), ("valid", 3), ("test", 4))}  # fmt: skip
    (root / "chords.json").write_text(json.dumps(chords))
    flags = {"data": str(root / "chords.json"), "head": "nade", "hidden": 16, "batch": 4,
             "nade_hidden": 8, "dropout": 0.0, "input_dropout": 0.0, **SHORT}  # fmt: skip
    music.train(flags, out=str(root / "chorales"))
    return root / "chorales"


#: every run the playground's test serves: name -> maker
RUNS = {"shakespeare": charlm_run, "reviews": sentiment_run, "en-de": translate_run,
        "caption": caption_run, "digits": digits_run, "ctc": ctc_run, "months": forecast_run,
        "sensor": anomaly_run, "chorales": music_run}  # fmt: skip


SENTENCE = "A red dog runs on the grass."


def panel_input(predictor, folder: Path) -> str | Path | None:
    """What the playground's test gives ``predictor``'s panel, made from the run's own settings
    (its data folder or CSV), so a tiny run and a trained one take the same: a sentence, a
    prompt, or a file written into ``folder``; None for panels that take no input."""
    from rnnkit.data import audio
    from rnnkit.data import images as fm

    settings = predictor.settings
    if predictor.task in ("sentiment", "translate"):
        return {"sentiment": GOOD[0], "translate": SENTENCE}[predictor.task]
    if predictor.task == "charlm":
        return "First Citizen"
    if predictor.task == "caption":
        pool = fm.load_fashion_mnist("test", settings.get("data") or None)
        pixels, _ = fm.compose_scene(*pool, np.random.default_rng(3), 3, 3, settings["slots"])
        return fm.write_image(folder / "scene.png", pixels)
    if predictor.task in ("speech-digits", "speech-ctc"):
        found: dict[tuple[int, int], str] = {}  # (digit, index) -> the first speaker's file
        for r in audio.fsdd_recordings(settings["data"]):
            found.setdefault((r.digit, r.index), r.path)
        rate = settings["sample_rate"]
        waves = [audio.read_wav(found[(digit, 0)], rate) for digit in (4, 2)]
        if predictor.task == "speech-digits":
            return audio.write_wav(folder / "digit.wav", waves[0], rate)
        joined = audio.join_digits(waves, rate, torch.Generator().manual_seed(0))
        return audio.write_wav(folder / "digits.wav", joined, rate)
    if predictor.task == "anomaly":
        return Path(settings["csv"])
    return None
