"""The package's imports form no cycle: every `import` statement of src/rnnkit, those inside
functions included (they run too, only later), read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

import rnnkit

ROOT = Path(rnnkit.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """rnnkit module -> the rnnkit modules its import statements name (``from p import n``:
    module ``p.n`` if there is one, else ``p``)."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in files else base)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walker_sees_imports_inside_functions():
    graph = {"a": {"b"}, "b": {"a"}}
    assert find_cycle(graph) == ["a", "b", "a"]
    tree = import_graph()
    assert "rnnkit.kernels.loops" in tree["rnnkit.layers"]
    assert "rnnkit.cells.base" in tree["rnnkit.cells.gru"]


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_kernels_know_no_cells():
    """The engine looks a cell's kernel up by name (`Cell.kernel`): rnnkit.kernels imports no
    cell, the cells import no layer."""
    graph = import_graph()
    kernels = [m for m in graph if m.startswith("rnnkit.kernels")]
    assert len(kernels) >= 5
    assert not any(t.startswith("rnnkit.cells") for m in kernels for t in graph[m])
    cells = [m for m in graph if m.startswith("rnnkit.cells")]
    assert not any(t in ("rnnkit.layers", "rnnkit.recurrence") for m in cells for t in graph[m])


def test_no_task_imports_another_task():
    """A task module imports shared parts (rnnkit.tasks.classify, .seq2seq, .common,
    rnnkit.forecasting, ...), never another task's module; nothing outside rnnkit.tasks but the
    command line, the server and the run diagnostics imports a task."""
    from rnnkit.tasks import TASKS

    graph = import_graph()
    tasks = set(TASKS.values())
    for task in tasks:
        assert not (graph[task] & tasks) - {task}, f"{task} imports {graph[task] & tasks}"
    allowed = ("rnnkit.tasks", "rnnkit.cli", "rnnkit.serve", "rnnkit.diagnostics.runs")
    outside = [m for m in graph if not m.startswith(allowed) and graph[m] & tasks]
    assert not outside, f"{outside} import task modules"
