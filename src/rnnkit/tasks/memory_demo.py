"""`rnnkit demo`: the long-term memory lab on the adding problem.

Trains four recurrent networks of the same width on the adding problem (T=150), one after
another, each through the generic trainer into its own run directory, for at most 3000 steps; a
network stops early once it has solved the problem (`SOLVED_WINDOW`). Then:

- prints a table: final test MSE against the 0.167 baseline, solved (test MSE < 0.01) or not,
  steps and time;
- writes ``loss_curves.png`` (validation MSE against step, every cell on one figure) and
  ``gradient_flow.png`` (||dL/dh_t|| against t at initialisation and after training), and prints
  the fitted decay per step of each;
- writes ``table.txt`` and ``results.json`` with the same numbers.

The four: Elman (tanh), IRNN (Elman with relu and identity recurrent weights, Le et al. 2015,
with a smaller learning rate as they advise), LSTM and GRU. ``quick=True`` runs a tiny version
(short sequences, few steps) that checks the whole pipeline in well under a minute.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from rnnkit.data.synthetic import ADDING_BASELINE_MSE
from rnnkit.diagnostics.gradient_flow import decay_summary
from rnnkit.diagnostics.plots import plot_gradient_flow, plot_validation_curves
from rnnkit.diagnostics.runs import run_gradient_norms
from rnnkit.errors import RnnkitError
from rnnkit.kernels.report import prepare as prepare_kernels
from rnnkit.tasks.memory import DEFAULT_LR, SOLVED_MSE, MemoryConfig, MemoryTask
from rnnkit.training.metrics import read_metrics
from rnnkit.training.trainer import TrainConfig, Trainer


@dataclass(frozen=True)
class Contender:
    """One network of the demo: a label, a cell of `rnnkit.models.backbone.CELLS`, its lr."""

    label: str
    cell: str
    lr: float


@dataclass(frozen=True)
class DemoPlan:
    """The sizes and budgets of a demo (the same for every contender)."""

    T: int
    hidden: int
    batch: int
    steps: int
    eval_every: int
    valid_size: int
    test_size: int
    contenders: tuple[Contender, ...]


CONTENDERS = (
    Contender("Elman (tanh)", "rnn", DEFAULT_LR["rnn"]),
    Contender("IRNN (relu, identity)", "irnn", DEFAULT_LR["irnn"]),
    Contender("LSTM", "lstm", DEFAULT_LR["lstm"]),
    Contender("GRU", "gru", DEFAULT_LR["gru"]),
)
FULL = DemoPlan(
    T=150,
    hidden=64,
    batch=50,
    steps=3000,
    eval_every=200,
    valid_size=1000,
    test_size=10000,
    contenders=CONTENDERS,
)
QUICK = DemoPlan(
    T=20,
    hidden=16,
    batch=32,
    steps=40,
    eval_every=40,
    valid_size=200,
    test_size=500,
    contenders=CONTENDERS,
)
#: a network stops early once its mean training MSE over this many steps is below
#: `SOLVED_MSE` / 10 (training batches are fresh sequences, so this estimates the test MSE)
SOLVED_WINDOW = 100


@dataclass
class Row:
    """One line of the demo's table."""

    label: str
    cell: str
    params: int
    test_mse: float
    accuracy: float
    solved: bool
    steps: int
    seconds: float
    cpu_seconds: float
    run_dir: str


def run_demo(
    out: str | Path,
    quick: bool = False,
    T: int | None = None,
    steps: int | None = None,
    progress: str = "none",
    threads: int | None = 1,
    echo: Callable[[str], None] = print,
) -> list[Row]:
    """Train the contenders into ``out``/<cell>, print the table, write the figures; see the
    module docstring. ``T`` and ``steps`` override the plan's sequence length and budget.

    ``threads``: torch's intra-op threads while the demo runs (restored after); 1 by default,
    because these small matrix products gain nothing from more, and on a busy machine extra
    threads spin and slow every step down many times. None leaves torch's setting alone.

    Denormal floats are flushed to zero while the demo runs (torch's default, off, after): the
    Elman RNN's vanishing gradients reach the float32 denormal range, where the CPU is several
    times slower (a trained Elman's backward pass took 47 ms instead of 13 ms at T=150).
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    try:
        return _run(QUICK if quick else FULL, Path(out), T, steps, progress, echo)
    finally:
        torch.set_num_threads(previous)
        torch.set_flush_denormal(False)


def _run(
    plan: DemoPlan,
    out: Path,
    T: int | None,
    steps: int | None,
    progress: str,
    echo: Callable[[str], None],
) -> list[Row]:
    plan = replace(plan, T=T or plan.T, steps=steps or plan.steps)
    out = _fresh_dir(out)
    echo(
        f"adding problem, T={plan.T}: {len(plan.contenders)} networks of {plan.hidden} units, "
        f"{plan.steps} steps of {plan.batch} sequences each; runs in {out}"
    )
    prepare_kernels()  # a first use's build of the C++ loops happens here, outside the timings
    rows = [_train_one(plan, c, out, progress, echo) for c in plan.contenders]
    table = format_table(rows, plan)
    echo(table)
    (out / "table.txt").write_text(table + "\n", encoding="utf-8")
    curves = {r.label: read_metrics(Path(r.run_dir) / "metrics.jsonl") for r in rows}
    plot_validation_curves(
        curves,
        out / "loss_curves.png",
        ADDING_BASELINE_MSE,
        SOLVED_MSE,
        ylabel="validation MSE (star: test MSE at the end)",
        title=f"adding problem, T={plan.T}",
    )
    panels = {"at initialisation": {}, "after training": {}}
    for r in rows:
        panels["at initialisation"][r.label] = run_gradient_norms(r.run_dir, "init")
        panels["after training"][r.label] = run_gradient_norms(r.run_dir, "last")
    plot_gradient_flow(
        panels,
        out / "gradient_flow.png",
        title=f"gradient flow through time, adding problem T={plan.T}",
    )
    for name, curves_ in panels.items():
        echo(f"gradient flow {name} (fitted factor of ||dL/dh_t|| per step back in time):")
        for label, norms in curves_.items():
            echo("  " + decay_summary(label, norms))
    results = {
        "plan": asdict(plan),
        "rows": [asdict(r) for r in rows],
        "decay": {n: {k: v.tolist() for k, v in c.items()} for n, c in panels.items()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    echo(f"figures: {out / 'loss_curves.png'}  {out / 'gradient_flow.png'}")
    return rows


def _fresh_dir(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RnnkitError(f"{out} exists and is not empty; give another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _train_one(
    plan: DemoPlan, contender: Contender, out: Path, progress: str, echo: Callable[[str], None]
) -> Row:
    task = MemoryTask(
        MemoryConfig(
            problem="adding",
            T=plan.T,
            cell=contender.cell,
            hidden=plan.hidden,
            batch=plan.batch,
            valid_size=plan.valid_size,
            test_size=plan.test_size,
        )
    )
    config = TrainConfig(
        lr=contender.lr,
        weight_decay=0.0,
        warmup_steps=min(50, plan.steps // 4),
        clip=1.0,
        max_steps=plan.steps,
        eval_every=plan.eval_every,
        log_every=plan.eval_every,
        progress=progress,
    )
    echo(f"training {contender.label} ...")
    start, cpu = time.perf_counter(), time.process_time()
    trainer = Trainer(task, config, out / contender.cell, callbacks=[_StopWhenSolved()])
    result = trainer.fit()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    mse = result.final["loss"]
    params = sum(p.numel() for p in trainer.model.parameters())
    return Row(
        contender.label,
        contender.cell,
        params,
        mse,
        result.final["accuracy"],
        mse < SOLVED_MSE,
        result.step,
        seconds,
        cpu,
        str(out / contender.cell),
    )


class _StopWhenSolved:
    """Trainer callback: stop once the last `SOLVED_WINDOW` training losses average below
    `SOLVED_MSE` / 10, so a network that has solved the problem frees the CPU for the next."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def __call__(self, trainer: Trainer, record: dict) -> None:
        self.losses = [*self.losses[-(SOLVED_WINDOW - 1) :], record["loss"]]
        solved = sum(self.losses) / len(self.losses) < SOLVED_MSE / 10
        if len(self.losses) == SOLVED_WINDOW and solved:
            trainer.request_stop("solved")


def format_table(rows: list[Row], plan: DemoPlan) -> str:
    """The demo's table as fixed-width text."""
    head = (
        f"{'network':<22} {'params':>7} {'test MSE':>9} {'/ 0.167':>8} {'|err|<.04':>9} "
        f"{'solved':>6} {'steps':>6} {'time':>6} {'CPU':>6}"
    )
    lines = [
        f"adding problem, T={plan.T}, test set of {plan.test_size} sequences; "
        f"solved: test MSE < {SOLVED_MSE}",
        head,
        "-" * len(head),
    ]
    for r in rows:
        lines.append(
            f"{r.label:<22} {r.params:>7,} {r.test_mse:>9.4f} "
            f"{r.test_mse / ADDING_BASELINE_MSE:>8.3f} {r.accuracy:>9.1%} "
            f"{'yes' if r.solved else 'no':>6} {r.steps:>6} "
            f"{r.seconds:>5.0f}s {r.cpu_seconds:>5.0f}s"
        )
    return "\n".join(lines)
