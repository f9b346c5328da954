"""Diagnostics of run directories: a run's model on a batch of its own task, and what
`rnnkit diagnose` prints and draws for a list of runs. The one module of `rnnkit.diagnostics` that
knows tasks and run folders (the others take models and numbers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from rnnkit.diagnostics.gradient_flow import decay_summary, hidden_gradient_norms
from rnnkit.diagnostics.plots import plot_gradient_flow, plot_weight_gradients
from rnnkit.errors import RnnkitError
from rnnkit.tasks import task_module
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.metrics import read_metrics

CHECKPOINTS = ("init", "last", "best")
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


def run_gradient_norms(run_dir: str | Path, checkpoint: str = "last", seed: int = 0) -> Tensor:
    """`hidden_gradient_norms` of a run directory's model on one batch of its task.

    Args:
        run_dir: a run whose task module offers ``load_task(run_dir)`` (adding, copy, ...).
        checkpoint: "last" (model.safetensors), "best" (best.safetensors), or "init": the model
            as the trainer built it before the first step (same seed, same weights).
        seed: seeds the batch, drawn as the task draws training batches; the same seed gives
            the same batch for every run of the same task settings.

    Returns:
        (T,) norms, computed in float64 (model and batch); see `hidden_gradient_norms`.
    """
    run_dir = Path(run_dir)
    config = ckpt.read_config(run_dir)
    module = task_module(config.get("task"))
    if not hasattr(module, "load_task"):
        raise RnnkitError(
            f"{run_dir} is a {config['task']!r} run, which gradient flow does not handle"
        )
    if checkpoint not in CHECKPOINTS:
        raise RnnkitError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    task = module.load_task(run_dir)
    torch.manual_seed(config["train"]["seed"])  # as the trainer does before build_model
    model = ckpt.build_checked(task.build_model, run_dir)
    if checkpoint != "init":
        ckpt.load_model_weights(model, ckpt.weights_file(run_dir, checkpoint))
    batch = _float64(task.train_batch(0, torch.Generator().manual_seed(seed)))
    model = model.double()  # float32 underflows: 0.6 per step is 1e-44 after 200 steps
    return hidden_gradient_norms(model, lambda m: task.loss(m, batch, None).loss)


def _float64(batch):
    """The batch with its floating-point tensors (in tuples and lists too) in float64."""
    if isinstance(batch, Tensor):
        return batch.double() if batch.is_floating_point() else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_float64(b) for b in batch)
    return batch
