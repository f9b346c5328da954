"""Nothing in src/ can execute code from a file: no pickle, no eval/exec, torch.load only with
weights_only=True (read through the syntax tree, so comments and ``model.eval()`` do not count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
UNPICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
CODE_RUNNERS = {"eval", "exec", "compile", "__import__"}


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
        for k in call.keywords
    )


def _call_problem(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name) and func.id in CODE_RUNNERS:
        return f"{func.id}()"
    if not isinstance(func, ast.Attribute):
        return None
    owner = ast.unparse(func.value)
    if func.attr == "load" and owner == "torch" and not _keyword_is(call, "weights_only", True):
        return "torch.load without weights_only=True"
    if func.attr == "load" and owner in ("np", "numpy") and _keyword_is(call, "allow_pickle", True):
        return "numpy.load(allow_pickle=True)"
    if func.attr in ("load", "load_all", "unsafe_load") and owner == "yaml":
        return f"yaml.{func.attr} (use yaml.safe_load)"
    if func.attr == "read_pickle" or (func.attr == "load" and owner == "torch.jit"):
        return f"{owner}.{func.attr}"
    return None


def problems(source: str) -> list[str]:
    """What in ``source`` could unpickle or run code, as 'line N: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = []
        found += [f"line {node.lineno}: import {n}" for n in names
                  if n.split(".")[0] in UNPICKLERS]  # fmt: skip
        what = _call_problem(node) if isinstance(node, ast.Call) else None
        if what:
            found.append(f"line {node.lineno}: {what}")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "from dill import loads",
        "eval(text)",
        "exec(code)",
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "np.load(path, allow_pickle=True)",
        "yaml.load(stream)",
        "pd.read_pickle(path)",
    ],
)
def test_the_checker_catches(snippet):
    assert problems(snippet), snippet


def test_the_checker_allows_safe_calls():
    safe = "model.eval()\ntorch.load(p, weights_only=True)\nnp.load(p)\nyaml.safe_load(s)\n"
    assert problems(safe) == []


def test_src_never_unpickles_nor_runs_code_from_data():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30  # the tree was found
    found = [f"{path.relative_to(SRC)} {p}" for path in files for p in problems(path.read_text())]
    assert found == []
