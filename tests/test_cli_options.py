"""The command line's options as users expect them: every default shown in --help (for `rnnkit
train TASK`, the task's settings and training defaults as the task declares them), the same flag
names everywhere, files and folders typed as `click.Path` (shell completion, a file where a
folder belongs refused)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.cli.options import default_of, shown, shown_train
from rnnkit.tasks import SUMMARIES, TASKS, task_spec
from rnnkit.training.options import TRAIN_KEYS, field_docs, flag_of, path_fields

#: options and arguments that name a file or folder and never a data set of the registry
PATHS = {"config_file", "out", "resume", "prime", "file", "ref", "plot", "example", "run",
         "runs", "wav", "image"}  # fmt: skip


def commands() -> Iterator[tuple[click.Command, click.Context]]:
    def walk(command: click.Command, ctx: click.Context):
        yield command, ctx
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
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


def help_of(*args: str) -> str:
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [*args, "--help"], terminal_width=1000)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", sorted(TASKS))
def test_train_help_shows_the_task_defaults(name):
    """Each setting and training-loop flag of `rnnkit train NAME` shows the default the task
    uses: its dataclass field's (or the spec's), its `DEFAULT_TRAIN`'s, and has a help text."""
    spec = task_spec(name)
    text = help_of("train", name)
    docs = field_docs(spec.settings)
    for f in dataclasses.fields(spec.settings):
        if f.name in spec.internal:
            assert flag_of(f.name) + " " not in text
            continue
        assert docs.get(f.name), f"{name}: setting {f.name} has no help text"
        want = spec.shown.get(f.name, shown(default_of(f)))
        assert shown_default(text, flag_of(f.name)) == want, f"{name} {flag_of(f.name)}"
    for key in TRAIN_KEYS:
        want = spec.shown.get(key) or shown_train(spec.default_train, key)
        assert shown_default(text, flag_of(key)) == want, f"{name} {flag_of(key)}"


def shown_default(text: str, flag: str) -> str | None:
    line = re.search(rf"^  {re.escape(flag)}\b.*?(?=^  -)", text, re.MULTILINE | re.DOTALL)
    assert line is not None, f"no {flag}"
    found = re.search(r"\[default: ([^\]]+)\]", line.group(0))
    return found.group(1) if found else None


def test_the_same_names_everywhere():
    """torch's names for the model's sizes, and --config, --max-time, --seed, --progress for
    every training command (the acceptance check's flags among them)."""
    for name in TASKS:
        text = help_of("train", name)
        for flag in ("--hidden-size", "--num-layers", "--cell", "--config", "--max-time",
                     "--seed", "--progress"):  # fmt: skip
            if flag == "--cell" and name == "speech-ctc":
                continue  # LSTM only
            if flag in ("--hidden-size", "--num-layers", "--cell") and name == "caption":
                continue  # a CNN encoder and a decoder: --decoder-hidden, --decoder-layers
            assert f"  {flag} " in text, f"rnnkit train {name}: no {flag}"
        assert "--hidden " not in text and "--layers " not in text
    for command in ("forecast", "detect"):
        assert "--hidden-size" in help_of(command)


def test_a_toml_file_may_name_settings_like_the_flags(tmp_path):
    from rnnkit.training.options import merge_settings

    path = tmp_path / "lm.toml"
    path.write_text('hidden-size = 16\nnum_layers = 2\nmax-time = "5m"\n')
    known = {"hidden", "layers", "max_time"}
    assert merge_settings(str(path), {"layers": 3}, known) == {
        "hidden": 16, "layers": 3, "max_time": "5m"}  # fmt: skip


def test_a_spec_names_every_task():
    assert list(SUMMARIES) == list(TASKS)
    for name in TASKS:
        spec = task_spec(name)
        assert spec.name == name and SUMMARIES[name] and spec.examples
        synthetic = name in ("adding", "copy")  # the memory problems make their own data
        assert synthetic or path_fields(spec.settings), f"{name} declares no data path"


def test_a_time_budget_is_shown_as_typed():
    from rnnkit.tasks.charlm import DEFAULT_TRAIN

    assert DEFAULT_TRAIN.max_time == 900 and shown_train(DEFAULT_TRAIN, "max_time") == "15m"


@pytest.mark.parametrize(
    "args", [["predict", "run", "--checkpoint", "x"], ["train", "charlm", "--hidden-size", "a"],
             ["no-such-command"]],
)  # fmt: skip
def test_a_mistaken_flag_or_command_is_one_line_and_status_2(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
