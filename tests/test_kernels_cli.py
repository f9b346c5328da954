"""`rnnkit kernels` (the report) and `rnnkit kernels build`; the build folder that
TORCH_EXTENSIONS_DIR does not move; the first-use announcement; one warning without a compiler;
`rnnkit --help` without torch; the lazy `rnnkit` namespace; ``py.typed``."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

import rnnkit
from rnnkit.cli import main
from rnnkit.kernels import build, report

# the smallest module torch's `load` builds: no torch headers, so it compiles in a second
TINY = """
#include <Python.h>
#define RNNKIT_CAT(a, b) a##b
#define RNNKIT_INIT(name) RNNKIT_CAT(PyInit_, name)
static struct PyModuleDef tiny = {PyModuleDef_HEAD_INIT, "tiny", nullptr, -1, nullptr};
PyMODINIT_FUNC RNNKIT_INIT(TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&tiny); }
"""


@pytest.fixture
def kernels_home(tmp_path, monkeypatch) -> Path:
    """An empty $RNNKIT_KERNELS and a TORCH_EXTENSIONS_DIR elsewhere (which must not matter)."""
    monkeypatch.setenv("RNNKIT_KERNELS", str(tmp_path / "kernels"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch-extensions"))
    return tmp_path / "kernels"


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> report.Extension:
    """The tiny module as rnnkit's only extension, named afresh: torch loads a name once per
    process (a second build directory would make it ``NAME_v1``)."""
    source = tmp_path / "src" / "tiny.cpp"
    source.parent.mkdir()
    source.write_text(TINY)
    ext = report.Extension("tiny", f"rnnkit_tiny{uuid.uuid4().hex[:8]}", source, "nothing")
    monkeypatch.setattr(report, "EXTENSIONS", (ext,))
    return ext


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "import rnnkit.cli\n"
        "try:\n"
        "    rnnkit.cli.main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('torch' in sys.modules, 'rnnkit.layers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "False False"


def test_python_m_rnnkit_help_runs():
    out = subprocess.run([sys.executable, "-m", "rnnkit", "--help"], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert "kernels" in out.stdout


def test_the_namespace_loads_lazily():
    code = (
        "import sys, rnnkit\n"
        "assert rnnkit.__version__ and 'torch' not in sys.modules\n"
        "from rnnkit import GRU, RnnkitError\n"
        "assert 'torch' in sys.modules and GRU.__name__ == 'GRU'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "ok\n"
    assert set(rnnkit.__all__) <= set(dir(rnnkit))
    assert all(getattr(rnnkit, name) is not None for name in rnnkit.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        rnnkit.nothing  # noqa: B018


def test_py_typed_ships():
    assert (Path(rnnkit.__file__).parent / "py.typed").is_file()


def test_the_build_folder_ignores_torch_extensions_dir(kernels_home):
    folder = build.kernels_dir()
    assert folder.parent == kernels_home
    assert folder.name.startswith("torch-") and build._cpu_tag() in folder.name
    assert build._build_directory("rnnkit_x") == folder / "rnnkit_x"


def test_the_report_says_nothing_is_built(kernels_home):
    result = CliRunner().invoke(main, ["kernels"])
    assert result.exit_code == 0, result.output
    assert f"build folder: {build.kernels_dir()}" in result.output
    for name in ("fused", "scan", "dropout"):
        assert any(
            line.split()[:3] == [name, "not", "built"] for line in result.output.splitlines()
        )
    assert "LSTM: torch's kernel" in result.output
    facts = json.loads(CliRunner().invoke(main, ["kernels", "--json"]).output)
    assert [e["built"] for e in facts["extensions"]] == [False, False, False]
    assert set(facts["paths"]) >= {"GRU, RNN (Elman)", "LSTM", "Dropout", "MinGRU, MinLSTM"}


def test_kernels_build_builds_then_checks(kernels_home, tiny):
    first = CliRunner().invoke(main, ["kernels", "build"])
    assert first.exit_code == 0, first.output
    assert "tiny: built in" in first.output
    assert report.built_variant(tiny) == f"{tiny.stem}_{build._cpu_tag()}"
    assert (build._build_directory(report.built_variant(tiny))).parent.parent == kernels_home
    again = CliRunner().invoke(main, ["kernels", "build"])
    assert again.exit_code == 0 and "tiny: already built, checked in" in again.output


def test_a_first_use_build_is_announced_once(kernels_home, tiny):
    from torch.utils.cpp_extension import load

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build._build(load, tiny.source, tiny.stem)
        build._build(load, tiny.source, tiny.stem)  # built: silent
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert messages[0].startswith(f"rnnkit: building its C++ kernels ({tiny.stem}) for this "
                                  "CPU, once (about a minute")  # fmt: skip
    assert messages[1].startswith(f"rnnkit: built the C++ kernels ({tiny.stem}) in ")


def test_without_a_compiler_one_warning_and_torch_paths(kernels_home, monkeypatch):
    import torch

    monkeypatch.setenv("CXX", "no-such-compiler-rnnkit")
    monkeypatch.setenv("RNNKIT_FUSED", "1")
    monkeypatch.setitem(build._state, "enabled", True)
    monkeypatch.setitem(build._state, "module", None)
    monkeypatch.setitem(build._state, "failed", False)
    monkeypatch.setattr(build, "_small_states", {})
    monkeypatch.setattr(build, "_build_state", {"compiler_warned": False})
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert build.extension() is None
        assert build.scan_extension() is None
        assert build.dropout_extension() is None
        gru = rnnkit.GRU(3, 4)
        assert gru.uses_torch_kernel(x)
        gru(x)
        rnnkit.Dropout(0.5)(x)
        rnnkit.MinGRU(3, 4)(x)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages == [
        "rnnkit: no C++ compiler (no-such-compiler-rnnkit) found to build its C++ kernels; "
        "running torch's kernels and rnnkit's Python code instead, which is slower (install a "
        "C++ compiler, then run `rnnkit kernels build`)"
    ]
    report = CliRunner().invoke(main, ["kernels"]).output
    assert "C++ compiler: none (no-such-compiler-rnnkit not found)" in report
    assert "GRU, RNN (Elman): torch's kernel" in report


def test_the_demo_builds_before_it_times(tmp_path, monkeypatch):
    from rnnkit.tasks import memory_demo

    calls = []
    monkeypatch.setattr(memory_demo, "prepare_kernels", lambda: calls.append("prepare"))

    def train_one(*args, **kwargs):
        calls.append("train")  # the timed part
        raise RuntimeError("enough")

    monkeypatch.setattr(memory_demo, "_train_one", train_one)
    with pytest.raises(RuntimeError, match="enough"):
        memory_demo.run_demo(tmp_path / "demo", quick=True, echo=lambda line: None)
    assert calls == ["prepare", "train"]


def test_submodules_are_attributes_as_before():
    code = "import rnnkit\nprint(rnnkit.kernels.build.__name__, rnnkit.layers.GRU.__name__)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "rnnkit.kernels.build GRU\n"
