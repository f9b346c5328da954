"""One intra-op thread: these tests run tiny models, which threads only slow down (and the suite
runs its files in parallel on two cores). `trained_run`: a small charlm run to attack."""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rnnkit.cli import main

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 4
SMALL = ["--hidden", "16", "--layers", "1", "--embed", "8", "--seq-len", "16", "--batch", "4"]


def cli(*args):
    """``rnnkit ARGS`` in this process (stdout and stderr apart)."""
    return CliRunner().invoke(main, [str(a) for a in args])


torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A charlm run of 8 steps with checkpoints at steps 4 and 8 (copy it before changing it)."""
    root = tmp_path_factory.mktemp("untrusted")
    (root / "text.txt").write_text(TEXT)
    args = ["train", "charlm", "--text", root / "text.txt", *SMALL, "--progress", "none"]
    every = ["--checkpoint-every", "4", "--eval-every", "4"]
    result = cli(*args, "--max-steps", "8", *every, "--out", root / "run")
    assert result.exit_code == 0, result.output
    return root / "run"
