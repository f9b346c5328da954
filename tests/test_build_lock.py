"""The C++ kernels' build lock (`rnnkit.kernels.build._build_lock`): an flock that dies with its
holder, a stale torch ``lock`` marker cleared, waiters told who they wait for, SIGTERM ends a
waiter.

Holders and waiters run in subprocesses (each imports torch: about two seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from rnnkit.kernels import build
from rnnkit.kernels.build import _build_lock

HOLD = """
import sys, time
from pathlib import Path
from rnnkit.kernels.build import _build_lock
with _build_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""

# the smallest module torch's `load` builds: no torch headers, so it compiles in a second
TINY = """
#include <Python.h>
#define RNNKIT_CAT(a, b) a##b
#define RNNKIT_INIT(name) RNNKIT_CAT(PyInit_, name)
static struct PyModuleDef tiny = {PyModuleDef_HEAD_INIT, "tiny", nullptr, -1, nullptr};
PyMODINIT_FUNC RNNKIT_INIT(TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&tiny); }
"""


def python(code: str, *args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-c", code, *args]
    return subprocess.Popen(command, text=True, env={**os.environ, **(env or {})}, **kwargs)


def holder(build_dir: Path, seconds: float) -> subprocess.Popen:
    """A process holding the build lock of ``build_dir`` for ``seconds``, once it holds it."""
    proc = python(HOLD, str(build_dir), str(seconds), stdout=subprocess.PIPE)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_the_lock_dies_with_its_holder(tmp_path):
    proc = holder(tmp_path, 600)
    assert (tmp_path / "rnnkit-build.lock").read_text() == f"{proc.pid}\n"
    proc.kill()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "waiting" warning: taken at once
        with _build_lock(tmp_path):
            taken = time.monotonic() - start
            assert (tmp_path / "rnnkit-build.lock").read_text() == f"{os.getpid()}\n"
    assert taken < 5  # a wait would last the holder's 600 s
    assert (tmp_path / "rnnkit-build.lock").read_text() == ""  # no PID left once released


def test_a_waiter_names_the_holder_once_and_proceeds_when_it_releases(tmp_path):
    proc = holder(tmp_path, 1.0)
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _build_lock(tmp_path):
            waited = time.monotonic() - start
    assert proc.wait(timeout=10) == 0
    assert [str(w.message) for w in caught] == [
        f"rnnkit: waiting for process {proc.pid} to finish checking or building the C++ kernels "
        f"({tmp_path / 'rnnkit-build.lock'})"
    ]
    assert caught[0].category is RuntimeWarning
    assert 0.5 < waited < 30  # the holder keeps it 1 s


def test_a_stale_torch_marker_does_not_hang_the_next_build(tmp_path, monkeypatch):
    """A process killed inside torch's `load` leaves ``lock`` in the build directory; torch
    alone then waits forever. The next build removes it, says so, and builds."""
    (tmp_path / "tiny.cpp").write_text(TINY)
    monkeypatch.setenv("RNNKIT_KERNELS", str(tmp_path / "extensions"))
    name = f"rnnkit_tiny_{build._cpu_tag()}"
    directory = build._build_directory(name)  # RNNKIT_KERNELS/torch-VERSION-pyXY-CPU/name
    directory.mkdir(parents=True)
    (directory / "lock").touch()  # what SIGKILL inside torch's build leaves
    script = f"""
import warnings
from pathlib import Path
from torch.utils.cpp_extension import load
from rnnkit.kernels import build
warnings.simplefilter("always")
module = build._build(load, Path({str(tmp_path / "tiny.cpp")!r}), "rnnkit_tiny")
print(Path(module.__file__).parent.name)
"""
    proc = python(script, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out == f"{name}\n"
    marker = directory / "lock"
    assert f"rnnkit: removed a stale build lock left by a killed process ({marker})" in err
    assert not marker.exists()


@pytest.fixture(scope="module")
def charlm_run(tmp_path_factory) -> Path:
    """A tiny trained charlm run (trained on the Python engine: no build lock taken)."""
    root = tmp_path_factory.mktemp("charlm")
    text = root / "t.txt"
    text.write_text("the cat sat on the mat. " * 200)
    flags = (
        "--cell gru --hidden-size 8 --num-layers 1 --embed 4 --seq-len 8 --batch 2 --max-steps 1"
    )
    train = [sys.executable, "-m", "rnnkit.cli", "train", "charlm", "--text", str(text),
             "--out", str(root / "run"), *flags.split(), "--progress", "none"]  # fmt: skip
    subprocess.run(train, env={**os.environ, "RNNKIT_FUSED": "0"}, check=True, timeout=120,
                   capture_output=True)  # fmt: skip
    return root / "run"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_command_waiting_for_the_lock(tmp_path, charlm_run, sig, monkeypatch):
    """`rnnkit sample` while another process builds the kernels: one line says whom it waits
    for; SIGTERM ends it at once (no handler: the default action), Ctrl-C with one line."""
    monkeypatch.setenv("RNNKIT_KERNELS", str(tmp_path / "extensions"))
    held = holder(build._build_directory(f"rnnkit_fused_{build._cpu_tag()}"), 600)
    command = [sys.executable, "-m", "rnnkit.cli", "sample", str(charlm_run), "--length", "5"]
    env = dict(os.environ)  # RNNKIT_KERNELS: the empty folder above
    env.pop("RNNKIT_FUSED", None)
    proc = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        first = proc.stderr.readline()
        assert first.startswith(f"warning: rnnkit: waiting for process {held.pid} to finish")
        time.sleep(0.3)  # in the wait loop
        start = time.monotonic()
        proc.send_signal(sig)
        rest = proc.stderr.readline()  # "interrupted", or nothing: killed by SIGTERM
        took = time.monotonic() - start  # the exit after it (torch's teardown) takes longer
        rest += proc.stderr.read()
        code = proc.wait(timeout=30)
    finally:
        for process in (proc, held):
            process.kill()
            process.wait()
    if sig == signal.SIGTERM:
        assert code == -signal.SIGTERM and rest == ""
    else:
        assert code == 130 and rest == "interrupted\n"
    assert took < 10  # the holder keeps the lock 600 s
