"""What `rnnkit diagnose` prints and draws for a list of run directories."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rnnkit.diagnostics.gradient_flow import decay_summary, run_gradient_norms
from rnnkit.diagnostics.plots import plot_gradient_flow, plot_weight_gradients
from rnnkit.errors import RnnkitError
from rnnkit.training.metrics import read_metrics

PANELS = {
    "init": "at initialisation",
    "last": "trained (last checkpoint)",
    "best": "best checkpoint",
}


def gradient_flow_report(
    runs: Sequence[str], at: str = "both", seed: int = 0, out: str | None = None
) -> str:
    """Measure ||dL/dh_t|| of each run (``at``: "init", "last", "best" or "both" = init and
    last), draw them on one figure, and return the fitted decays and the figure's path."""
    checkpoints = ("init", "last") if at == "both" else (at,)
    labels = _labels(runs)
    panels = {
        PANELS[c]: {label: run_gradient_norms(run, c, seed) for label, run in zip(labels, runs)}
        for c in checkpoints
    }
    path = Path(out) if out else Path(runs[0]) / "gradient_flow.png"
    plot_gradient_flow(panels, path, title="gradient flow through time")
    lines = []
    for name, curves in panels.items():
        lines.append(f"{name}: fitted factor of ||dL/dh_t|| per step back in time")
        lines += ["  " + decay_summary(label, norms) for label, norms in curves.items()]
    lines.append(f"figure: {path}")
    return "\n".join(lines)


def weight_gradient_report(
    runs: Sequence[str], out: str | None = None, key: str = "grad_norm_hh"
) -> str:
    """Plot ``key`` (the recurrent weights' gradient norm before clipping) and the training loss
    of each run's metrics.jsonl; return its range per run and the figure's path."""
    records = {}
    for label, run in zip(_labels(runs), runs):
        rows = read_metrics(Path(run) / "metrics.jsonl")
        values = [r[key] for r in rows if r.get("split") == "train" and key in r]
        if not values:
            raise RnnkitError(
                f"{run}/metrics.jsonl has no {key!r}; it is logged by adding and copy runs"
            )
        records[label] = rows
    path = Path(out) if out else Path(runs[0]) / "weight_grads.png"
    plot_weight_gradients(records, path, key, title="recurrent-weight gradient over training")
    lines = []
    for label, rows in records.items():
        values = [r[key] for r in rows if r.get("split") == "train" and key in r]
        clipped = sum(r.get("clipped", 0) for r in rows if r.get("split") == "train")
        lines.append(
            f"{label}: {key} from {min(values):.3g} to {max(values):.3g} "
            f"(median {sorted(values)[len(values) // 2]:.3g}); {clipped} steps clipped"
        )
    lines.append(f"figure: {path}")
    return "\n".join(lines)


def _labels(runs: Sequence[str]) -> list[str]:
    """Short names: each run directory's name, made unique with its parent's if needed."""
    names = [Path(r).name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{Path(r).parent.name}/{Path(r).name}" for r in runs]
    return names
