"""The command line in this process, and the text and sizes of a small charlm run (shared by the
untrusted-run tests and their conftest fixture; a module of its own name, since "conftest" is
ambiguous when several test folders are collected together)."""

from click.testing import CliRunner

from rnnkit.cli import main

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 4
SMALL = ["--hidden-size", "16", "--num-layers", "1", "--embed", "8", "--seq-len", "16",
         "--batch", "4"]  # fmt: skip


def cli(*args):
    """``rnnkit ARGS`` in this process (stdout and stderr apart)."""
    return CliRunner().invoke(main, [str(a) for a in args])
