"""The adding and copy tasks: metrics, the recurrent-weight gradient log, and the commands."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from rnnkit.cli import main
from rnnkit.data.synthetic import ADDING_BASELINE_MSE, copy_baseline, copy_memory
from rnnkit.tasks.memory import MemoryConfig, MemoryTask, evaluate
from rnnkit.training.metrics import read_metrics
from rnnkit.training.trainer import TrainConfig, Trainer

TINY = ["--T", "12", "--hidden-size", "8", "--batch", "16", "--test-size", "64",
        "--eval-every", "5"]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """Small recurrent products gain nothing from threads; on a shared CPU extra ones spin."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class Constant(nn.Module):
    """Always answers 1 (the adding problem's memoryless best)."""

    def forward(self, x):
        return torch.ones(x.shape[1], 1)


class Memoryless(nn.Module):
    """Copy memory without memory: blank until the answer, then uniform over the 8 symbols."""

    def forward(self, x):
        steps = x.shape[0]
        logits = torch.full((steps, x.shape[1], 9), -1e9)
        logits[: steps - 10, :, 0] = 0.0
        logits[steps - 10 :, :, 1:] = 0.0
        return logits, None


def test_metrics_of_the_memoryless_answers_equal_the_baselines():
    task = MemoryTask(MemoryConfig("adding", T=10, valid_size=3000))
    metrics = evaluate(Constant(), *task.dataset("valid"), "adding")
    assert metrics["loss"] == pytest.approx(ADDING_BASELINE_MSE, abs=0.01)
    assert metrics["baseline"] == ADDING_BASELINE_MSE
    x, y = copy_memory(2500, 15, generator=torch.Generator().manual_seed(0))
    metrics = evaluate(Memoryless(), x, y, "copy")
    assert metrics["loss"] == pytest.approx(copy_baseline(15), rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(1 / 8, abs=0.02)  # argmax: always symbol 1


def test_valid_and_test_sets_are_fixed_and_distinct():
    a, b = MemoryTask(MemoryConfig(T=8)), MemoryTask(MemoryConfig(T=8, cell="gru"))
    assert torch.equal(a.dataset("valid")[0], b.dataset("valid")[0])
    assert not torch.equal(a.dataset("valid")[1], a.dataset("test")[1][:1000])


def test_recurrent_weight_gradient_is_logged_before_clipping(tmp_path):
    cfg = MemoryConfig("adding", T=10, cell="rnn", hidden=8, batch=16, test_size=32)
    train = TrainConfig(max_steps=1, clip=1e-4, log_every=1, eval_every=1, progress="none")
    Trainer(MemoryTask(cfg), train, tmp_path / "run").fit()
    (record,) = [
        r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"
    ]
    # the same model and batch, by hand
    torch.manual_seed(0)
    task = MemoryTask(cfg)
    model = task.build_model()
    x, y = task.train_batch(0, torch.Generator().manual_seed(1))
    task.loss(model, (x, y), None).loss.backward()
    expected = float(model.rnn.weight_hh_l0.grad.norm())
    assert record["grad_norm_hh"] == pytest.approx(expected, rel=1e-5)
    assert record["grad_norm_hh"] > 1e-4 and record["clipped"] == 1


def test_train_adding_command_then_resume_and_diagnose(tmp_path):
    run = str(tmp_path / "run")
    cli = CliRunner()
    args = ["train", "adding", "--cell", "gru", *TINY, "--max-steps", "10", "--progress", "none"]
    result = cli.invoke(main, [*args, "--out", run])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"] == "adding" and config["task_config"]["T"] == 12
    result = cli.invoke(main, ["train", "adding", "--resume", run, "--T", "30"])
    assert result.exit_code == 2 and "cannot change --T when resuming" in result.output
    result = cli.invoke(main, ["train", "adding", "--resume", run, "--max-steps", "15"])
    assert result.exit_code == 0 and "15 steps" in result.output
    result = cli.invoke(main, ["diagnose", "gradients", run, "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    assert "at initialisation" in result.output and "per step back in time" in result.output
    assert (tmp_path / "g.png").stat().st_size > 10_000
    result = cli.invoke(main, ["diagnose", "weight-grads", run])
    assert result.exit_code == 0 and (tmp_path / "run" / "weight_grads.png").is_file()


def test_train_copy_command_defaults_to_T_100(tmp_path):
    cli = CliRunner()
    out = str(tmp_path / "copy")
    args = ["train", "copy", "--hidden-size", "8", "--batch", "4", "--test-size", "8"]
    result = cli.invoke(main, [*args, "--max-steps", "2", "--progress", "none", "--out", out])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert config["task"] == "copy" and config["task_config"]["T"] == 100
    result = cli.invoke(main, ["diagnose", "gradients", out, "--at", "init"])
    assert result.exit_code == 0, result.output
    assert "copy: x" in result.output and (tmp_path / "copy" / "gradient_flow.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cell", "gru", "--forget-bias", "1"], "--forget-bias is an LSTM setting"),
        (["--T", "1"], "T must be an integer >= 2"),
        (["--max-time", "soon"], "cannot read the duration 'soon'"),
    ],
)
def test_user_mistakes_exit_2_with_a_message(tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", "adding", *args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.output


def test_toml_settings_are_checked(tmp_path):
    (tmp_path / "a.toml").write_text('T = "long"\ncell = "gru"\n')
    args = ["train", "adding", "--config", str(tmp_path / "a.toml"), "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "T = 'long' is not of type int" in result.output


def test_demo_quick_writes_the_table_and_both_figures(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for label in ("Elman (tanh)", "IRNN (relu, identity)", "LSTM", "GRU"):
        assert label in result.output
    assert "test MSE" in result.output and "solved" in result.output
    assert (out / "table.txt").read_text().count("\n") == 7  # title, header, rule, four rows
    for png in ("loss_curves.png", "gradient_flow.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
        assert str(out / png) in result.output
    results = json.loads((out / "results.json").read_text())
    assert [r["cell"] for r in results["rows"]] == ["rnn", "irnn", "lstm", "gru"]
