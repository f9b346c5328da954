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


if __name__ == "__main__":
    main()
