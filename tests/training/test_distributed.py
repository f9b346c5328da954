"""Data-parallel training under torchrun (2 processes, gloo, loopback): the ranks end with the
same weights, equal within 1e-6 to one process training on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from ddp_worker import train

from rnnkit.cli import main
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.distributed import World, shard_batch

HERE = Path(__file__).parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
       "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}  # fmt: skip


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_two_ranks_end_equal_and_equal_to_one_process(tmp_path):
    torchrun(HERE / "ddp_worker.py", tmp_path)
    rank0, meta0 = ckpt.read_tensors(tmp_path / "rank0.safetensors")
    rank1, meta1 = ckpt.read_tensors(tmp_path / "rank1.safetensors")
    assert meta0["rows"] == meta1["rows"] == 8  # each rank trains on half the batch of 16
    assert largest_difference(rank0, rank1) == 0.0  # the same update on every rank
    saved, _ = ckpt.read_tensors(tmp_path / "run" / ckpt.MODEL)  # written by rank 0 only
    assert largest_difference(rank0, saved) == 0.0
    alone = train(tmp_path / "alone").model.state_dict()
    assert largest_difference(rank0, alone) < 1e-6


def test_torchrun_rnnkit_train_and_resume_match_one_process(tmp_path):
    text = tmp_path / "hamlet.txt"
    text.write_text("To be, or not to be, that is the question: whether tis nobler.\n" * 30)
    # float32: bfloat16 rounds the products of half batches differently from whole ones
    args = ["train", "charlm", "--text", text, "--hidden-size", "16", "--num-layers", "1",
            "--embed", "8", "--seq-len", "16", "--batch", "8", "--dropout", "0", "--warmup", "2",
            "--eval-every", "6", "--progress", "none", "--precision", "fp32",
            "--max-steps"]  # fmt: skip
    more = ["train", "charlm", "--max-steps", "12", "--resume"]  # a larger budget
    torchrun("-m", "rnnkit", *args, "6", "--out", tmp_path / "ddp")
    assert "budget: 12 steps" in torchrun("-m", "rnnkit", *more, tmp_path / "ddp").stdout
    for command in ([*args, "6", "--out"], more):  # the same in one process
        result = CliRunner().invoke(main, [*map(str, command), str(tmp_path / "one")])
        assert result.exit_code == 0, result.output
    ddp, _ = ckpt.read_tensors(tmp_path / "ddp" / ckpt.MODEL)
    one, _ = ckpt.read_tensors(tmp_path / "one" / ckpt.MODEL)
    assert largest_difference(ddp, one) < 1e-6
    assert sorted(p.name for p in (tmp_path / "ddp" / ckpt.CHECKPOINTS).iterdir()) == [
        "step-00000006",
        "step-00000012",
    ]


def test_a_batch_is_sharded_into_disjoint_equal_parts():
    batch = (torch.arange(12).view(6, 2), {"y": torch.arange(6)}, "kept")
    parts = [shard_batch(batch, World(rank, 3)) for rank in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), batch[0])
    assert [p[1]["y"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert parts[2][2] == "kept"
    columns = shard_batch(torch.arange(12).view(2, 6), World(1, 2), dim=1)
    assert columns.tolist() == [[3, 4, 5], [9, 10, 11]]
    with pytest.raises(ValueError, match="make --batch a multiple of 4"):
        shard_batch(torch.zeros(6, 3), World(0, 4))
