"""`rnnkit train charlm`, `rnnkit sample`, `rnnkit eval` through the command line: outputs,
one-line errors with exit status 2 and nothing overwritten, Ctrl-C in a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnnkit.cli import main

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 4
SMALL = [
    "--hidden-size",
    "16",
    "--num-layers",
    "1",
    "--embed",
    "8",
    "--seq-len",
    "16",
    "--batch",
    "4",
    "--progress",
    "none",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A text file and a run trained on it for a few steps, shared by the tests here."""
    root = tmp_path_factory.mktemp("cli")
    (root / "hamlet.txt").write_text(TEXT)
    args = ["train", "charlm", "--text", str(root / "hamlet.txt"), *SMALL]
    result = CliRunner().invoke(main, [*args, "--max-steps", "20", "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    assert "budget: 20 steps" in result.output and "validation: loss" in result.output
    return root


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_shows_examples():
    for command in (["train", "charlm"], ["sample"], ["eval"]):
        result = run_cli(*command, "--help")
        assert result.exit_code == 0 and "Examples:" in result.output


def test_sample_streams_reproducibly_and_eval_prints_nats_and_bits(workspace):
    run = workspace / "run"
    a = run_cli("sample", run, "--prompt", "To be", "--length", "30", "--seed", "3")
    b = run_cli("sample", run, "--prompt", "To be", "--length", "30", "--seed", "3")
    assert a.exit_code == 0 and a.output == b.output and a.output.startswith("To be")
    assert len(a.output) == len("To be") + 30 + 1  # and a final line break
    result = run_cli("eval", run, "--text", workspace / "hamlet.txt", "--split", "valid")
    assert result.exit_code == 0
    assert "nats/char" in result.output and "bits/char" in result.output


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_inputs_are_one_line_errors(workspace, tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    (tmp_path / "latin.txt").write_bytes("na\u00efve caf\u00e9\n".encode("latin-1") * 50)
    train = ["train", "charlm", *SMALL, "--max-steps", "1", "--out", tmp_path / "new", "--text"]
    one_line_error(run_cli(*train, tmp_path / "missing.txt"), "does not exist")
    one_line_error(run_cli(*train, tmp_path / "empty.txt"), "is empty")
    one_line_error(run_cli(*train, tmp_path / "blob.bin"), "looks binary", "byte offset 0")
    one_line_error(run_cli(*train, tmp_path / "latin.txt"), "byte offset 2", "--encoding")
    assert not (tmp_path / "new").exists()
    run = workspace / "run"
    one_line_error(
        run_cli("sample", run, "--prompt", "To be \u00e9"), "'\u00e9'", "line 1, column 7"
    )
    one_line_error(run_cli("sample", tmp_path), "is not an rnnkit run")
    one_line_error(run_cli("eval", tmp_path / "nowhere", "--text", workspace / "hamlet.txt"),
                   "does not exist")  # fmt: skip


def test_nothing_is_overwritten(workspace, tmp_path):
    run = workspace / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    again = ["train", "charlm", "--text", workspace / "hamlet.txt", *SMALL, "--out", run]
    one_line_error(run_cli(*again, "--max-steps", "5"), "already holds a run", "--resume")
    old = tmp_path / "old"
    old.mkdir()
    for name, data in before.items():
        (old / name).write_bytes(data)
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, "format_version": 0}))
    one_line_error(run_cli("sample", old), "format version 0", "reads version 1")
    one_line_error(run_cli("train", "charlm", "--resume", old, "--max-steps", "30"), "version 0")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(workspace, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rnnkit.cli", "train", "charlm", "--text",
           str(workspace / "hamlet.txt"), *SMALL[:-2], "--progress", "log", "--log-every", "1",
           "--max-steps", "100000", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # wait until it is training
        if line.startswith("step 3 "):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and f"--resume {out}" in stderr
    state = json.loads((out / "trainer.json").read_text())
    assert state["step"] >= 3 and "interrupted" in stdout
    resumed = run_cli("train", "charlm", "--resume", out, "--max-steps", state["step"] + 2)
    assert resumed.exit_code == 0 and f"{state['step'] + 2} steps" in resumed.output


def test_log_lines_when_output_is_not_a_terminal(workspace, tmp_path):
    start = time.perf_counter()
    args = ["train", "charlm", "--text", workspace / "hamlet.txt", *SMALL[:-2], "--max-steps",
            "4", "--log-every", "2", "--out", tmp_path / "r"]  # fmt: skip
    result = run_cli(*args)
    assert result.exit_code == 0 and "step 2 loss" in result.output and "tok/s" in result.output
    assert time.perf_counter() - start < 60
    assert Path(tmp_path / "r" / "loss.png").read_bytes()[:4] == b"\x89PNG"
