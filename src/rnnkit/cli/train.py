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
    """The tasks of `rnnkit.tasks.TASKS` as subcommands, each made when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from rnnkit.tasks import TASKS

        return list(TASKS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from rnnkit.tasks import TASKS, task_spec

        return train_command(task_spec(name)) if name in TASKS else None


@click.group(cls=TaskGroup, invoke_without_command=True)
@click.option("--resume", "resume_run", type=DIR, metavar="RUN",
              help="Continue RUN, whatever its task.")  # fmt: skip
@click.pass_context
def train(ctx: click.Context, resume_run: str | None) -> None:
    """Train a model for one task; each task is a subcommand.

    \b
    Examples:
      rnnkit train charlm --text notes.txt --out runs/notes
      rnnkit train --resume runs/notes      # after a kill, a full disk, Ctrl-C...
    """
    if ctx.invoked_subcommand is not None:
        if resume_run is not None:
            raise RnnkitError("give --resume after the task (rnnkit train TASK --resume RUN)")
        return
    if resume_run is None:
        click.echo(ctx.get_help())
        return
    from rnnkit.training.checkpoint import read_config

    task = read_config(resume_run).get("task")
    command = train.get_command(ctx, task) if isinstance(task, str) else None
    if command is None:
        raise RnnkitError(f"{resume_run} is a {task!r} run, which `rnnkit train` cannot resume")
    ctx.invoke(command, resume=resume_run)


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

    params = [
        click.Option(["--config", "config_file"], type=FILE,
                     help="TOML file of settings named like the flags (the flags win)."),
        click.Option(["--out"], type=DIR,
                     help=f"Run directory to create.  [default: runs/{spec.name}-DATE-TIME]"),
        click.Option(["--resume"], type=DIR, help="Continue the run in this directory."),
        *setting_options(spec),
        *loop_options(spec.default_train, spec.shown),
        *(click.Option([f"--{x.name}"], is_flag=x.kind is bool, type=None if x.kind is bool
                       else x.kind, help=x.help) for x in spec.extras),
    ]  # fmt: skip
    examples = "\n".join(f"  {line}" for line in spec.examples)
    text = f"{spec.help}\n\n{RESUMING}" + (f"\n\n\b\nExamples:\n{examples}" if examples else "")
    return click.Command(spec.name, callback=run, params=params, help=text)
