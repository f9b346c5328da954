"""The command line's options as users expect them: every default shown in --help, files and
folders typed as `click.Path` (shell completion, a file where a folder belongs refused)."""

from __future__ import annotations

from collections.abc import Iterator

import click

from rnnkit.cli import main

#: options and arguments that name a file or folder and never a data set of the registry
PATHS = {"config_file", "out", "resume", "prime", "file", "ref", "plot", "example", "run",
         "runs", "wav", "image"}  # fmt: skip


def commands() -> Iterator[tuple[click.Command, click.Context]]:
    def walk(command: click.Command, ctx: click.Context):
        yield command, ctx
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, click.Context(sub, info_name=name, parent=ctx))

    yield from walk(main, click.Context(main, info_name="rnnkit"))


def has_default(param: click.Parameter) -> bool:
    default = param.default
    return type(default).__name__ != "Sentinel" and default not in (None, False, ())


def test_every_default_is_shown():
    missing = []
    for command, ctx in commands():
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and has_default(param):
                record = param.get_help_record(ctx)
                if record is None or "default:" not in record[1]:
                    missing.append(f"{ctx.command_path} {param.opts[0]}")
    assert missing == []


def test_files_and_folders_are_click_paths():
    wrong = [
        f"{ctx.command_path} {param.name}"
        for command, ctx in commands()
        for param in command.params
        if param.name in PATHS and not isinstance(param.type, click.Path)
    ]
    assert wrong == []
    seen = {param.name for command, _ in commands() for param in command.params}
    assert seen >= PATHS


def test_a_file_where_a_run_folder_belongs_is_refused(tmp_path):
    from click.testing import CliRunner

    (tmp_path / "notes.txt").write_text("x")
    result = CliRunner().invoke(main, ["sample", str(tmp_path / "notes.txt")])
    assert result.exit_code == 2
    assert "is a file" in result.output
