"""Every file of a small run mutated (Hypothesis): a reader (`rnnkit sample`) and the trainer
(`rnnkit train --resume`) succeed or exit 2 with one line; never a traceback, never a change
outside the run."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from cli_runs import cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_untrusted_runs import snapshot

from rnnkit.training import checkpoint as ckpt

LATEST = f"{ckpt.CHECKPOINTS}/step-00000008"
FILES = [
    ckpt.CONFIG,
    ckpt.MANIFEST,
    f"{LATEST}/{ckpt.MANIFEST}",
    ckpt.TRAINER_STATE,
    f"{LATEST}/{ckpt.TRAINER_STATE}",
    "metrics.jsonl",
    "vocab.json",
    ckpt.MODEL,
    f"{LATEST}/{ckpt.OPTIMIZER}",
    f"{LATEST}/{ckpt.TRAINER_TENSORS}",
]
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([-1, 0, 10**400, 2**63, float("nan"), float("inf"), 1e308]),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just("DEEP"),
)


@st.composite
def mutations(draw):
    """(file, how, details) of one change to one file of the run."""
    name = draw(st.sampled_from(FILES))
    json_file = name.endswith((".json", ".jsonl"))
    how = draw(st.sampled_from(["flip", "truncate", "random", "inode"] + ["json"] * json_file))
    return name, how, draw(st.integers(0, 1 << 30)), draw(JSON_VALUES)


def mutate(path: Path, how: str, number: int, value) -> None:
    data = path.read_bytes()
    if how == "flip" and data:
        data = bytearray(data)
        data[number % len(data)] ^= 1 << (number % 8)
        with open(path, "r+b") as f:  # in place: the hard links share the change
            f.write(data)
        return
    if how == "truncate":
        data = data[: number % (len(data) + 1)]
    elif how == "random":
        data = number.to_bytes(8, "little") * (number % 64)
    elif how == "json":
        data = json_mutation(data, number, value)
    path.unlink()  # a new inode: only this name changes
    path.write_bytes(data)


def json_mutation(data: bytes, number: int, value) -> bytes:
    """``data`` (JSON or JSON lines) with one value, chosen by ``number``, replaced."""
    text = "[" * 100_000 + "]" * 100_000 if value == "DEEP" else json.dumps(value)
    lines = data.decode().splitlines()
    k = number % len(lines)
    try:
        doc = json.loads(lines[k]) if len(lines) > 1 else json.loads(data)
    except ValueError:
        return data
    if isinstance(doc, dict) and doc:
        keys = sorted(doc)
        key = keys[number % len(keys)]
        if isinstance(doc[key], dict) and doc[key]:
            inner = sorted(doc[key])[number % len(doc[key])]
            doc[key][inner] = "__VALUE__"
        else:
            doc[key] = "__VALUE__"
    else:
        doc = "__VALUE__"
    changed = json.dumps(doc).replace('"__VALUE__"', text)
    if len(lines) > 1:
        lines[k] = changed
        return ("\n".join(lines) + "\n").encode()
    return changed.encode()


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(change=mutations())
def test_a_mutated_run_is_used_or_refused_in_one_line(trained_run, change):
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        run = home / "run"
        shutil.copytree(trained_run, run)
        (home / "neighbour.txt").write_text("untouched")
        name, how, number, value = change
        mutate(run / name, how, number, value)
        outside = {k: v for k, v in snapshot(home).items() if not k.startswith("run")}
        for args in (["sample", run, "--length", "5"], ["train", "charlm", "--resume", run]):
            result = cli(*args, "--max-steps", "10") if "train" in args else cli(*args)
            assert result.exit_code in (0, 2), (change, args, result.output, result.exception)
            if result.exit_code == 2:
                error = result.stderr.strip().splitlines()
                assert error[-1].startswith("error: ") and len(error[-1]) < 1000, result.stderr
                assert "Traceback" not in result.stderr
        after = {k: v for k, v in snapshot(home).items() if not k.startswith("run")}
        assert after == outside
