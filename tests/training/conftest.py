"""One intra-op thread: these tests run tiny models, which threads only slow down (and the suite
runs its files in parallel on two cores). `trained_run`: a small charlm run to attack."""

from pathlib import Path

import pytest
import torch
from cli_runs import SMALL, TEXT, cli

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
