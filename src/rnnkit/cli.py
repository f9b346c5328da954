"""The `rnnkit` command line: parses arguments and dispatches to tasks; no logic of its own."""

from __future__ import annotations

import sys

import click

from rnnkit.errors import RnnkitError


class _Group(click.Group):
    """A click group that turns an `RnnkitError` into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RnnkitError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rnnkit")
def main() -> None:
    """rnnkit: recurrent neural networks, from your sequence data to a trained model.

    \b
    Examples:
      rnnkit demo                      # the long-term memory lab, ~5 minutes
    """


@main.group(cls=_Group)
def train() -> None:
    """Train a model for one task; each task is a subcommand."""


# --- charlm, sample, eval (issue 10) -----------------------------------------------------------


@train.command("charlm")
@click.option("--text", help="Text file to learn: the first 90% trains, the last 10% validates.")
@click.option("--config", "config_file", help="TOML file of settings named like the flags.")
@click.option("--out", help="Run directory to create.  [default: runs/charlm-DATE-TIME]")
@click.option("--resume", help="Continue the run in this directory from its last checkpoint.")
@click.option("--unit", type=click.Choice(["char", "word"]), help="Token unit.  [default: char]")
@click.option("--encoding", help="Encoding of the text file.  [default: utf-8]")
@click.option("--cell", type=click.Choice(["lstm", "gru", "rnn"]), help="[default: lstm]")
@click.option("--hidden", type=int, help="Hidden units per layer.  [default: 512]")
@click.option("--layers", type=int, help="Recurrent layers.  [default: 2]")
@click.option("--embed", type=int, help="Embedding size.  [default: 128]")
@click.option("--dropout", type=float, help="Dropout.  [default: 0.2]")
@click.option("--seq-len", type=int, help="Time steps per training window.  [default: 128]")
@click.option("--batch", type=int, help="Sequences per step.  [default: 64]")
@click.option(
    "--batching",
    type=click.Choice(["random", "stream"]),
    help="random windows, or stream: truncated BPTT carrying the state.  [default: random]",
)
@click.option("--impl", type=click.Choice(["auto", "bptt", "torch"]), help="[default: auto]")
@click.option("--lr", type=float, help="Peak learning rate (AdamW).  [default: 0.002]")
@click.option("--clip", type=float, help="Clip the gradient norm; 0: off.  [default: 1.0]")
@click.option("--warmup", type=int, help="Warm-up steps.  [default: 50]")
@click.option("--max-time", help="Time budget: 900, 90s, 15m, 1h.  [default: 15m]")
@click.option("--max-steps", type=int, help="Step budget.")
@click.option("--max-epochs", type=float, help="Epoch budget.")
@click.option("--eval-every", type=int, help="Steps between evaluations.  [default: 100]")
@click.option("--log-every", type=int, help="Steps between log lines.  [default: 10]")
@click.option("--patience", type=int, help="Stop after this many evaluations without progress.")
@click.option("--seed", type=int, help="Random seed.  [default: 0]")
@click.option("--progress", type=click.Choice(["auto", "bar", "log", "none"]))
@click.option("--tensorboard/--no-tensorboard", default=None, help="Also log to TensorBoard.")
def train_charlm(config_file: str | None, out: str | None, resume: str | None, **flags) -> None:
    """Train a character-level (or --unit word) language model on a text file.

    Ctrl-C saves a checkpoint and stops; --resume continues exactly where it stopped.

    \b
    Examples:
      rnnkit train charlm --text ../shared/data/text/tinyshakespeare.txt --out runs/shakespeare
      rnnkit train charlm --text notes.txt --cell gru --hidden 256 --max-time 5m
      rnnkit train charlm --config charlm.toml --seed 2     # flags override the file
      rnnkit train charlm --resume runs/shakespeare --max-time 20m
    """
    from rnnkit.tasks import charlm

    _report_fit(charlm.train(flags, config_file, out, resume))


def _report_fit(result) -> None:
    """Print how training ended; Ctrl-C exits with status 130 after the checkpoint is saved."""
    minutes, seconds = divmod(round(result.elapsed), 60)
    click.echo(f"{result.stop_reason}: {result.step} steps in {minutes}m{seconds:02d}s; run in "
               f"{result.run_dir}")  # fmt: skip
    if result.final:
        click.echo("validation: " + "  ".join(f"{k} {v:.4f}" for k, v in result.final.items()))
    if result.stop_reason == "interrupted":
        click.echo(f"checkpoint saved; continue with --resume {result.run_dir}", err=True)
        sys.exit(130)


def _task_of(run: str, function: str):
    """The task module of a run directory, checked to offer ``function``."""
    from rnnkit.tasks import task_module
    from rnnkit.training.checkpoint import read_config

    name = read_config(run).get("task")
    module = task_module(name)
    if not hasattr(module, function):
        raise RnnkitError(f"{run} is a {name!r} run, which `rnnkit {function}` does not handle")
    return module


@main.command()
@click.argument("run")
@click.option("--prompt", help="Text to start from (echoed).  [default: a line break]")
@click.option("--length", default=500, show_default=True, help="Tokens to generate.")
@click.option("--temperature", default=0.8, show_default=True, help="0: always the likeliest.")
@click.option(
    "--top-k", default=40, show_default=True, help="Sample among the k likeliest; 0: all."
)
@click.option("--top-p", type=float, help="Sample within the nucleus of probability p.")
@click.option("--seed", default=1, show_default=True, help="Seed: same seed, same text.")
@click.option(
    "--checkpoint", type=click.Choice(["last", "best"]), default="last", show_default=True
)
def sample(run: str, prompt, length, temperature, top_k, top_p, seed, checkpoint) -> None:
    """Generate text from a trained RUN, printing it as it is drawn.

    \b
    Examples:
      rnnkit sample runs/shakespeare --prompt "ROMEO:" --length 500
      rnnkit sample runs/shakespeare --temperature 0.5 --top-k 0 --top-p 0.9 --seed 7
    """
    module = _task_of(run, "sample")
    pieces = module.sample(run, prompt, length, temperature, top_k or None, top_p, seed, checkpoint)
    for piece in pieces:
        click.echo(piece, nl=False)
    click.echo()


@main.command("eval")
@click.argument("run")
@click.option("--text", required=True, help="Text file to score.")
@click.option("--encoding", default="utf-8", show_default=True)
@click.option(
    "--split",
    type=click.Choice(["all", "valid"]),
    default="all",
    show_default=True,
    help="Score all of the file, or only its validation part as cut in training.",
)
@click.option(
    "--checkpoint", type=click.Choice(["last", "best"]), default="last", show_default=True
)
def eval_(run: str, text: str, encoding: str, split: str, checkpoint: str) -> None:
    """Score a text file with a trained RUN: loss in nats and bits per token.

    \b
    Examples:
      rnnkit eval runs/shakespeare --text ../shared/data/text/tinyshakespeare.txt --split valid
    """
    module = _task_of(run, "evaluate_file")
    click.echo(
        module.eval_report(run, module.evaluate_file(run, text, encoding, split, checkpoint))
    )


if __name__ == "__main__":
    main()
