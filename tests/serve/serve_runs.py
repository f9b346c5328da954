"""Tiny trained runs for the server's tests, made through the tasks' Python entry points."""

from __future__ import annotations

from pathlib import Path

GOOD = ["a wonderful moving film", "great acting and a great story", "i loved it", "superb fun"]
BAD = ["a dull boring mess", "terrible acting , awful story", "i hated it", "tedious junk"]
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 6  # fmt: skip
LOOP = {"max_steps": 6, "eval_every": 3, "log_every": 3, "warmup": 2, "progress": "none"}


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
