"""`rnnkit train TASK`: one command per task, made from its `TaskSpec` when first used (the
task modules import torch), and `rnnkit train --resume RUN` for a run of any task."""

from __future__ import annotations

import sys
from typing import Any

import click

from rnnkit.cli.options import DIR, FILE, loop_options, parsed, setting_options
from rnnkit.errors import RnnkitError

RESUMING = "Ctrl-C saves a checkpoint and stops; `rnnkit train --resume RUN` continues."


class TaskGroup(click.Group):
    """The tasks of `rnnkit.tasks.TASKS` as subcommands, each made when asked for;
    ``--resume RUN [FLAGS]`` runs ``TASK [FLAGS] --resume RUN`` for RUN's task."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from rnnkit.tasks import TASKS

        return list(TASKS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The tasks and their summaries, without importing them."""
        from rnnkit.tasks import SUMMARIES

        width = formatter.width - 6 - max(map(len, SUMMARIES))
        rows = [(name, click.utils.make_default_short_help(text, width))
                for name, text in SUMMARIES.items()]  # fmt: skip
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from rnnkit.tasks import TASKS, task_spec

        return train_command(task_spec(name)) if name in TASKS else None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if len(args) >= 2 and args[0] == "--resume" and args[1] not in ctx.help_option_names:
            if args[2:3] and args[2] in self.list_commands(ctx):
                raise RnnkitError("give --resume after the task (rnnkit train TASK --resume RUN)")
            args = [task_of(args[1]), *args[2:], "--resume", args[1]]
        return super().parse_args(ctx, args)


def task_of(run: str) -> str:
    """The task of the run directory ``run``, one `rnnkit train` has."""
    from rnnkit.tasks import TASKS
    from rnnkit.training.checkpoint import read_config

    task = read_config(run).get("task")
    if task not in TASKS:
        raise RnnkitError(f"{run} is a {task!r} run, which `rnnkit train` cannot resume")
    return task


@click.group(cls=TaskGroup, invoke_without_command=True)
@click.option(
    "--resume",
    metavar="RUN",
    type=DIR,
    help="Continue RUN, whatever its task (flags after RUN: its new budgets).",
)
@click.pass_context
def train(ctx: click.Context, resume: str | None) -> None:
    """Train a model for one task; each task is a subcommand.

    \b
    Examples:
      rnnkit train charlm --text notes.txt --out runs/notes
      rnnkit train --resume runs/notes      # after a kill, a full disk, Ctrl-C...
      rnnkit train --resume runs/notes --max-time 30m
    """
    if resume is not None:
        raise RnnkitError("give --resume after the task (rnnkit train TASK --resume RUN)")
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def train_command(spec: Any) -> click.Command:
    """`rnnkit train NAME` for the `TaskSpec` ``spec``: its settings and the training loop's as
    options, ``--config``, ``--out``, ``--resume`` and the task's extra flags."""

    def run(config_file: str | None, out: str | None, resume: str | None, **values) -> None:
        extras = {flag.name: values.pop(flag.name) for flag in spec.extras}
        result = spec.train(parsed(values), config_file, out, resume, **extras)
        click.echo(spec.report(result))
        if getattr(result, "stop_reason", None) == "interrupted":
            click.echo(f"checkpoint saved; continue with --resume {result.run_dir}", err=True)
            sys.exit(130)

    out = spec.out or f"runs/{spec.name}-DATE-TIME"
    params = [
        click.Option(["--config", "config_file"], type=FILE,
                     help="TOML file of settings named like the flags (the flags win)."),
        click.Option(["--out"], type=DIR,
                     help=f"Run directory to create.  [default: {out}]"),
        click.Option(["--resume"], type=DIR, help="Continue the run in this directory."),
        *setting_options(spec),
        *loop_options(spec.default_train, spec.shown),
        *(click.Option([f"--{x.name}"], is_flag=x.kind is bool, type=None if x.kind is bool
                       else x.kind, help=x.help) for x in spec.extras),
    ]  # fmt: skip
    examples = "\n".join(f"  {line}" for line in spec.examples)
    from rnnkit.tasks import SUMMARIES

    about = "\n\n".join(filter(None, (SUMMARIES[spec.name], spec.help, RESUMING)))
    text = about + (f"\n\n\b\nExamples:\n{examples}" if examples else "")
    return click.Command(spec.name, callback=run, params=params, help=text)
