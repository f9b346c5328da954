"""The long-term memory lab (`rnnkit demo`) and looking inside runs (`rnnkit diagnose`)."""

from __future__ import annotations

import click

from rnnkit.cli.options import DIR, FILE


@click.command()
@click.option(
    "--out",
    type=DIR,
    help="Directory for the four runs and the figures.  [default: runs/demo-DATE]",
)
@click.option("--quick", is_flag=True, help="A tiny version that runs in well under a minute.")
@click.option("--T", "T", type=int, help="Sequence length.  [default: 150; --quick: 20]")
@click.option("--steps", type=int, help="Most steps per network.  [default: 3000; --quick: 40]")
@click.option("--threads", default=1, show_default=True, help="Torch CPU threads.")
def demo(out: str | None, quick: bool, T: int | None, steps: int | None, threads: int) -> None:
    """The long-term memory lab: Elman, IRNN, LSTM and GRU on the adding problem.

    Prints a table (test MSE against the 0.167 baseline, solved or not, time) and writes the
    loss curves and the gradient-flow figure as PNG files. About 5 minutes on a 2-core CPU.

    \b
    Examples:
      rnnkit demo
      rnnkit demo --quick --out /tmp/demo
    """
    import time as _time

    from rnnkit.tasks.memory_demo import run_demo

    out = out or f"runs/demo-{_time.strftime('%Y%m%d-%H%M%S')}"
    run_demo(out, quick=quick, T=T, steps=steps, threads=threads, echo=click.echo)


@click.group()
def diagnose() -> None:
    """Look inside trained runs: gradient flow through time, gradient norms over training."""


@diagnose.command("gradients")
@click.argument("runs", nargs=-1, required=True, type=DIR)
@click.option(
    "--at",
    "at",
    type=click.Choice(["init", "last", "best", "both"]),
    default="both",
    show_default=True,
    help="The model at initialisation, trained, or both panels.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the batch measured.")
@click.option(
    "--out", type=FILE, help="PNG to write.  [default: RUN/gradient_flow.png of the first RUN]"
)
def diagnose_gradients(runs: tuple[str, ...], at: str, seed: int, out: str | None) -> None:
    """||dL/dh_t|| for every step t of one batch, for one or more RUNs on one figure.

    Prints the fitted factor per step back in time (below 1: vanishing, above 1: exploding).

    \b
    Examples:
      rnnkit diagnose gradients runs/demo-*/rnn runs/demo-*/lstm --out flow.png
    """
    from rnnkit.diagnostics.runs import gradient_flow_report

    click.echo(gradient_flow_report(runs, at, seed, out))


@diagnose.command("weight-grads")
@click.argument("runs", nargs=-1, required=True, type=DIR)
@click.option(
    "--out", type=FILE, help="PNG to write.  [default: RUN/weight_grads.png of the first RUN]"
)
def diagnose_weight_grads(runs: tuple[str, ...], out: str | None) -> None:
    """The recurrent weights' gradient norm (before clipping) and the loss over training.

    Reads grad_norm_hh from each RUN's metrics.jsonl (adding and copy runs log it).

    \b
    Examples:
      rnnkit diagnose weight-grads runs/rnn-clip runs/rnn-noclip --out clipping.png
    """
    from rnnkit.diagnostics.runs import weight_gradient_report

    click.echo(weight_gradient_report(runs, out))
