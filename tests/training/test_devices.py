"""Devices: ``--device`` resolved once (a device the machine lacks is one line, exit 2), batches
moved to it, per-device mixed precision, device-independent checkpoints; the CUDA tests skip
without a GPU."""

from __future__ import annotations

import collections
import dataclasses

import pytest
import torch
from click.testing import CliRunner
from test_trainer import SumTask, quiet, weights
from torch import nn

from rnnkit.cli import main
from rnnkit.errors import RnnkitError
from rnnkit.training import TrainConfig, Trainer, devices
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.devices import autocast_dtype, resolve_device, to_device

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
no_cuda = pytest.mark.skipif(CUDA, reason="checks the machine without CUDA")

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 4
SMALL = ["--hidden-size", "16", "--num-layers", "1", "--embed", "8", "--seq-len", "16",
         "--batch", "4", "--progress", "none"]  # fmt: skip


@no_cuda
def test_device_cuda_without_cuda_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    args = ["train", "charlm", "--text", str(tmp_path / "t.txt"), *SMALL, "--max-steps", "2"]
    result = CliRunner().invoke(main, [*args, "--device", "cuda", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "--device cuda: this machine has no CUDA device" in result.output
    assert "use --device cpu" in result.output
    assert not (tmp_path / "r" / "config.json").exists()


@no_cuda
def test_predict_commands_take_device_and_refuse_a_missing_one(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    args = ["train", "charlm", "--text", str(tmp_path / "t.txt"), *SMALL, "--max-steps", "2"]
    assert CliRunner().invoke(main, [*args, "--out", str(tmp_path / "r")]).exit_code == 0
    run = str(tmp_path / "r")
    text = str(tmp_path / "t.txt")
    for command in (["sample", run, "--length", "5"], ["eval", run, "--text", text]):
        missing = CliRunner().invoke(main, [*command, "--device", "cuda"])
        assert missing.exit_code == 2 and "no CUDA device" in missing.output, missing.output
        assert CliRunner().invoke(main, [*command, "--device", "cpu"]).exit_code == 0
    unknown = CliRunner().invoke(main, ["sample", run, "--device", "tpu"])
    assert unknown.exit_code == 2
    assert "--device must be one of auto, cpu, cuda, mps" in unknown.output


def test_resolve_device():
    if not CUDA and not devices.mps_available():
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(RnnkitError, match="--device must be one of"):
        resolve_device("gpu")
    if not CUDA:
        with pytest.raises(RnnkitError, match="use --device cpu"):
            resolve_device("cuda:0")


@dataclasses.dataclass
class Batch:
    x: torch.Tensor
    lengths: list
    name: str = "b"


Pair = collections.namedtuple("Pair", "a b")


def test_to_device_walks_tuples_lists_dicts_dataclasses_and_named_tuples():
    x, y = torch.ones(2, 3), torch.zeros(2, dtype=torch.long)
    batch = (x, [y, 3], {"pair": Pair(x, "kept")}, Batch(x, [y]), None)
    moved = to_device(batch, "meta")  # a device every machine has: shapes without data
    assert type(moved) is tuple and type(moved[2]["pair"]) is Pair and type(moved[3]) is Batch
    assert moved[0].device.type == moved[1][0].device.type == "meta"
    assert moved[2]["pair"].a.device.type == moved[3].x.device.type == "meta"
    assert moved[3].lengths[0].device.type == "meta" and moved[3].lengths[0].dtype == torch.long
    assert moved[1][1] == 3 and moved[2]["pair"].b == "kept" and moved[3].name == "b"
    assert moved[4] is None
    same = to_device(batch, "cpu")  # already there: the same tensors, no copies
    assert same[0] is x and same[3].x is x


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2)

    def forward(self, x):
        return self.inner(x) + 1

    def twice(self, x):  # a method calling a submodule: each call crosses the boundary
        return self.inner(self.inner(x))


def test_the_boundary_moves_only_at_the_outermost_call(monkeypatch):
    moves = []

    def spy(value, device, non_blocking=False):
        moves.append(str(device))
        return value

    monkeypatch.setattr(devices, "to_device", spy)
    model = Outer()
    leave = devices.boundary(model, torch.device("meta"))  # not moved: the spy keeps tensors
    model(torch.ones(1, 2))
    assert moves == ["meta", "meta", "cpu"]  # args, kwargs in; outputs out; not the nested
    moves.clear()
    model.twice(torch.ones(1, 2))
    assert moves == ["meta", "meta", "cpu"] * 2
    leave()
    moves.clear()
    model(torch.ones(1, 2))
    assert moves == []
    assert devices.boundary(model, torch.device("cpu"))() is None  # the CPU: no hooks


def test_precision_per_device():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", cpu) is (torch.bfloat16 if devices.native_bf16(cpu) else None)
    with pytest.raises(RnnkitError, match="fp16 needs a CUDA device"):
        autocast_dtype("fp16", cpu)
    assert devices.fused_adamw(cpu)
    assert "device" in TrainConfig.RESUMABLE and TrainConfig().device == "auto"


def test_a_run_trained_on_auto_resumes_on_cpu_exactly(tmp_path):
    Trainer(SumTask(), quiet(), tmp_path / "whole").fit()

    def pause(trainer, record):
        if record["step"] == 7:
            trainer.request_stop()

    Trainer(SumTask(), quiet(), tmp_path / "split", callbacks=[pause]).fit()  # device "auto"
    resumed = Trainer(SumTask(), quiet(device="cpu"), tmp_path / "split", resume=True)
    assert resumed.device == torch.device("cpu")
    resumed.fit()
    whole, split = weights(tmp_path / "whole"), weights(tmp_path / "split")
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert ckpt.read_config(tmp_path / "split")["train"]["device"] == "cpu"


def test_fp16_on_cpu_is_refused_before_the_run_exists(tmp_path):
    with pytest.raises(RnnkitError, match="fp16 needs a CUDA device"):
        Trainer(SumTask(), quiet(precision="fp16", device="cpu"), tmp_path / "r")


# --- on a GPU ------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.cuda
def test_training_on_cuda_matches_the_cpu(tmp_path):
    cpu = Trainer(SumTask(), quiet(max_steps=10, device="cpu", precision="fp32"), tmp_path / "c")
    cpu.fit()
    gpu = Trainer(SumTask(), quiet(max_steps=10, device="cuda", precision="fp32"), tmp_path / "g")
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).is_cuda
    result = gpu.fit()
    assert result.stop_reason == "budget" and not next(gpu.model.parameters()).is_cuda
    a, b = weights(tmp_path / "c"), weights(tmp_path / "g")
    # dropout draws its masks from the GPU's generator: compare the loss, not the weights
    assert all(a[k].shape == b[k].shape and b[k].device.type == "cpu" for k in a)
    assert abs(result.best_loss - cpu.counters.best_loss) < 0.05


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_mixed_precision_on_cuda_trains_and_resumes_on_cpu(tmp_path, precision):
    cfg = quiet(max_steps=6, eval_every=3, device="cuda", precision=precision)
    trainer = Trainer(SumTask(), cfg, tmp_path / "r")
    half = autocast_dtype(precision, trainer.device) is torch.float16
    assert (trainer._scaler is not None) == half
    trainer.fit()
    if precision == "fp16":  # CUDA's only: resumes on CUDA
        more = quiet(max_steps=9, eval_every=3, device="cuda", precision=precision)
    else:
        more = quiet(max_steps=9, eval_every=3, device="cpu", precision=precision)
    assert Trainer(SumTask(), more, tmp_path / "r", resume=True).fit().step == 9


@needs_cuda
@pytest.mark.cuda
def test_sample_on_cuda_gives_the_cpu_text(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    args = ["train", "charlm", "--text", str(tmp_path / "t.txt"), *SMALL, "--max-steps", "4",
            "--precision", "fp32", "--out", str(tmp_path / "r")]  # fmt: skip
    assert CliRunner().invoke(main, args).exit_code == 0
    sample = ["sample", str(tmp_path / "r"), "--length", "30", "--temperature", "0"]
    on_cpu = CliRunner().invoke(main, [*sample, "--device", "cpu"])
    on_gpu = CliRunner().invoke(main, [*sample, "--device", "cuda"])
    assert on_gpu.exit_code == 0, on_gpu.output
    assert on_gpu.output == on_cpu.output
