"""The `rnnkit` command line: parses arguments and dispatches to tasks; no logic of its own.

`rnnkit.cli.train` makes `rnnkit train TASK` from each task's `TaskSpec`
(`rnnkit.cli.options`: options from dataclasses); `rnnkit.cli.use` has the commands that use a
trained run. Nothing here imports torch: the commands do, when they run.
"""

from __future__ import annotations

import os
import sys
import warnings

import click

from rnnkit.cli import data, kernels, lab, timeseries, use
from rnnkit.cli.train import train
from rnnkit.errors import RnnkitError
from rnnkit.serve.command import serve


class _Group(click.Group):
    """A click group that turns an `RnnkitError` into one line on stderr and exit status 2,
    Ctrl-C (or a SIGTERM that training turned into KeyboardInterrupt("SIGTERM")) into
    "interrupted" and status 130 (143), and shows warnings (e.g. notes dropped from a MIDI
    file) as one line each."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        """click's main; a mistaken flag or argument is one line (``error: ...``), status 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as err:
            context = getattr(err, "ctx", None)
            hint = f" (see: {context.command_path} --help)" if context is not None else ""
            click.echo(f"error: {' '.join(err.format_message().splitlines())}{hint}", err=True)
            sys.exit(err.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except RnnkitError as err:
            click.echo(f"error: {' '.join(str(err).splitlines())}", err=True)  # one line
            sys.exit(2)
        except KeyboardInterrupt as err:
            click.echo("interrupted", err=True)
            sys.exit(143 if err.args == ("SIGTERM",) else 130)  # 128 + the signal's number


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


@click.group(
    cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True}
)
@click.version_option(package_name="rnnkit")
def main() -> None:
    """rnnkit: recurrent neural networks, from your sequence data to a trained model.

    \b
    Examples:
      rnnkit demo                      # the long-term memory lab, ~5 minutes
    """
    # an application may tune its process: malloc keeps the loops' buffers (rnnkit.tune_process)
    os.environ.setdefault("RNNKIT_MALLOC", "tuned")
    # and trainers may change torch's thread count with the machine's load (training.threads)
    os.environ.setdefault("RNNKIT_THREADS", "adapt")


for command in (train, *use.COMMANDS, timeseries.forecast, timeseries.detect, lab.demo,
                lab.diagnose, data.data, kernels.kernels, serve):  # fmt: skip
    main.add_command(command)


if __name__ == "__main__":
    main()
