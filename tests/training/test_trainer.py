"""The generic trainer: budgets, schedule, clipping, early stopping, exact resume, TBPTT."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.errors import RnnkitError
from rnnkit.training import StepOutput, StreamBatches, TrainConfig, Trainer
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.trainer import native_bf16


class SumNet(nn.Module):
    """(B, T, 1) -> (B,): a GRU reads the sequence, a linear layer answers."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = rnnkit.GRU(1, 8, batch_first=True, dropout=0.0)
        self.out = nn.Linear(8, 1)
        self.drop = nn.Dropout(0.1)  # makes the global RNG matter for exact resume

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.out(self.drop(h[:, -1])).squeeze(-1)


class SumTask:
    """Regress the mean of a random sequence; batches drawn from the trainer's generator."""

    name = "toy-sum"
    steps_per_epoch = None

    def config(self):
        return {}

    def save_assets(self, run_dir):
        (run_dir / "assets.json").write_text("{}")

    def build_model(self):
        return SumNet()

    def train_batch(self, step, rng):
        x = torch.rand(16, 6, 1, generator=rng)
        return x, x.mean((1, 2))

    def loss(self, model, batch, state):
        x, y = batch
        return StepOutput(nn.functional.mse_loss(model(x), y), tokens=x.numel())

    def evaluate(self, model, full):
        x, y = self.train_batch(0, torch.Generator().manual_seed(99))
        return {"loss": float(nn.functional.mse_loss(model(x), y)), "extra": 1.0}


def quiet(**kw) -> TrainConfig:
    base = dict(max_steps=20, eval_every=10, log_every=1, warmup_steps=3, progress="none")
    return TrainConfig(**{**base, **kw})


def train_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def weights(run_dir):
    tensors, _ = ckpt.read_tensors(run_dir / ckpt.MODEL)
    return tensors


def test_fit_writes_a_complete_run(tmp_path):
    result = Trainer(SumTask(), quiet(), tmp_path / "run").fit()
    run = tmp_path / "run"
    assert result.step == 20 and result.stop_reason == "budget"
    names = "config.json model.safetensors best.safetensors optimizer.safetensors trainer.json"
    for name in (names + " trainer.safetensors metrics.jsonl loss.png assets.json").split():
        assert (run / name).is_file(), name
    config = ckpt.read_config(run)
    assert config["task"] == "toy-sum" and config["train"]["max_steps"] == 20
    records = train_records(run)
    assert [r["step"] for r in records] == list(range(1, 21))
    assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in records)
    valid = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in valid if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [10, 20, 20] and valid[-1]["final"] is True
    assert result.final["extra"] == 1.0
    assert not list(run.glob("*.tmp")) and len(list((run / ckpt.CHECKPOINTS).iterdir())) == 2


def test_training_reduces_the_loss(tmp_path):
    result = Trainer(SumTask(), quiet(max_steps=150, eval_every=150), tmp_path / "r").fit()
    first = train_records(tmp_path / "r")[0]["loss"]
    assert result.final["loss"] < first / 5


def test_learning_rate_warms_up_then_decays_to_the_floor(tmp_path):
    trainer = Trainer(SumTask(), quiet(max_steps=103, warmup_steps=3, min_lr_ratio=0.1), tmp_path)
    lrs = [trainer.learning_rate(s, 0.0) for s in range(103)]
    assert lrs[0] == pytest.approx(2e-3 / 3) and lrs[2] == pytest.approx(2e-3)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[-1] == pytest.approx(2e-4, rel=1e-3)


def test_time_budget_drives_the_schedule_and_stops(tmp_path):
    trainer = Trainer(SumTask(), quiet(max_steps=None, max_time=0.5, warmup_steps=1), tmp_path)
    assert trainer.learning_rate(5, 0.25) == pytest.approx(2e-3 * (0.1 + 0.9 * 0.5))
    result = trainer.fit()
    assert result.stop_reason == "budget" and 0.3 <= result.elapsed < 5
    trainer._step_seconds = 0.2  # a step that would end past the budget is not started
    assert trainer._budget_spent(0.35) and not trainer._budget_spent(0.25)


def test_grad_norm_is_logged_before_clipping(tmp_path):
    Trainer(SumTask(), quiet(clip=1e-4, max_steps=5), tmp_path / "r").fit()
    records = train_records(tmp_path / "r")
    assert all(r["grad_norm"] > 1e-4 and r["clipped"] == 1 for r in records)


def test_resume_is_exact(tmp_path):
    straight = Trainer(SumTask(), quiet(), tmp_path / "a").fit()

    def pause(trainer, record):
        if record["step"] == 7:
            trainer.request_stop()

    first = Trainer(SumTask(), quiet(), tmp_path / "b", callbacks=[pause]).fit()
    assert first.stop_reason == "paused" and first.step == 7
    second = Trainer(SumTask(), None, tmp_path / "b", resume=True).fit()
    assert second.step == 20 and second.final == straight.final
    losses = [r["loss"] for r in train_records(tmp_path / "a")]
    assert [r["loss"] for r in train_records(tmp_path / "b")] == losses
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


class StreamTask(SumTask):
    """Truncated BPTT over one stream of 4 x 40 numbers in chunks of 5 (echo each input)."""

    name = "toy-stream"

    def __init__(self):
        data = torch.rand(1 + 4 * 40, generator=torch.Generator().manual_seed(0))
        self.stream = StreamBatches(data, batch_size=4, chunk_len=5)
        self.steps_per_epoch = self.stream.steps_per_epoch

    def build_model(self):
        return nn.ModuleDict({"rnn": rnnkit.GRU(1, 8, batch_first=True), "out": nn.Linear(8, 1)})

    def train_batch(self, step, rng):
        return self.stream.chunk(step)

    def loss(self, model, chunk, state):
        state = None if chunk.first else state
        h, state = model["rnn"](chunk.inputs.unsqueeze(-1), state)
        pred = model["out"](h).squeeze(-1)
        return StepOutput(nn.functional.mse_loss(pred, chunk.inputs), state=state, tokens=20)

    def evaluate(self, model, full):
        return {"loss": float(self.loss(model, self.stream.chunk(0), None).loss)}


def test_tbptt_carries_a_detached_state_and_resumes_exactly(tmp_path):
    cfg = quiet(max_steps=None, max_epochs=2.5, eval_every=100)
    seen = []

    def spy(trainer, record):
        seen.append(trainer.carried)
        if record["step"] == 11:
            trainer.request_stop()

    straight = Trainer(StreamTask(), cfg, tmp_path / "a", callbacks=[spy]).fit()
    assert straight.step == 11 and all(s is not None and not s.requires_grad for s in seen)
    Trainer(StreamTask(), cfg, tmp_path / "a", resume=True).fit()
    Trainer(StreamTask(), cfg, tmp_path / "b").fit()
    assert StreamTask().steps_per_epoch == 8
    la = [r["loss"] for r in train_records(tmp_path / "a")]
    assert len(la) == 20 and la == [r["loss"] for r in train_records(tmp_path / "b")]


def test_early_stopping_after_patience(tmp_path):
    class Flat(SumTask):
        def evaluate(self, model, full):
            return {"loss": 1.0}

    cfg = quiet(max_steps=1000, eval_every=2, patience=3)
    result = Trainer(Flat(), cfg, tmp_path / "r").fit()
    assert result.stop_reason == "early_stopping" and result.step == 8


def test_monitor_max_picks_the_best_accuracy_and_stops_on_it(tmp_path):
    class Accuracy(SumTask):
        scores = [0.5, 0.7, 0.6, 0.65, 0.69, 0.7, 0.9]
        calls = 0

        def evaluate(self, model, full):  # the loss falls throughout; accuracy peaks at 0.7
            self.calls += 1
            accuracy = self.scores[min(self.calls, len(self.scores)) - 1]
            return {"loss": 1.0 / self.calls, "accuracy": accuracy}

    cfg = quiet(max_steps=1000, eval_every=2, patience=4, monitor="accuracy",
                monitor_mode="max")  # fmt: skip
    result = Trainer(Accuracy(), cfg, tmp_path / "r").fit()
    assert result.stop_reason == "early_stopping" and result.step == 12
    assert result.best_loss == 0.7
    with pytest.raises(RnnkitError, match="cannot monitor 'bleu': the evaluation reports"):
        Trainer(Accuracy(), quiet(monitor="bleu"), tmp_path / "s").fit()
    with pytest.raises(RnnkitError, match="monitor_mode must be 'min' or 'max'"):
        quiet(monitor_mode="up").check(None)


def test_divergence_raises_or_stops(tmp_path):
    class Nan(SumTask):
        def loss(self, model, batch, state):
            out = super().loss(model, batch, state)
            return StepOutput(out.loss * math.nan)

    with pytest.raises(RnnkitError, match="diverged at step 0"):
        Trainer(Nan(), quiet(), tmp_path / "a").fit()
    result = Trainer(Nan(), quiet(on_nonfinite="stop"), tmp_path / "b").fit()
    assert result.stop_reason == "diverged" and result.step == 0


def test_refuses_to_overwrite_a_run_and_to_change_the_recipe(tmp_path):
    Trainer(SumTask(), quiet(max_steps=2), tmp_path / "r").fit()
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    with pytest.raises(RnnkitError, match="already holds a run"):
        Trainer(SumTask(), quiet(), tmp_path / "r")
    with pytest.raises(RnnkitError, match="cannot change lr"):
        Trainer(SumTask(), quiet(lr=1.0), tmp_path / "r", resume=True)
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(RnnkitError, match="no training budget"):
        Trainer(SumTask(), quiet(max_steps=None), tmp_path / "a")
    with pytest.raises(RnnkitError, match="samples batches freely"):
        Trainer(SumTask(), quiet(max_epochs=1), tmp_path / "b")
    with pytest.raises(RnnkitError, match="unknown training setting"):
        TrainConfig.from_dict({"lr": 1e-3, "max_step": 3})


def test_log_lines_when_not_a_terminal(tmp_path, capsys):
    Trainer(SumTask(), quiet(progress="auto", log_every=5, max_steps=10), tmp_path / "r").fit()
    out = capsys.readouterr().out
    assert "step 5 loss" in out and "tok/s" in out and "validation loss" in out


def test_progress_bar_on_a_terminal(capsys):
    from rnnkit.training.metrics import Progress

    bar = Progress("bar", total_steps=10, max_time=None, start_step=0, start_elapsed=0.0)
    bar.update(4, 1.0, {"loss": 2.5, "tok/s": 1000})
    bar.message("step 4 validation loss 2.4")
    bar.close()
    captured = capsys.readouterr()
    assert "4/10" in captured.err and "loss 2.5" in captured.err and "tok/s 1000" in captured.err
    assert "validation" in captured.out  # messages are printed above the bar
    timed = Progress("bar", total_steps=None, max_time=60.0, start_step=0, start_elapsed=30.0)
    timed.update(7, 45.0, {"loss": 1.0})
    timed.close()
    assert "45/60" in capsys.readouterr().err  # a time budget: the bar counts seconds


def test_tensorboard_is_optional(tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(RnnkitError, match="pip install tensorboard"):
            Trainer(SumTask(), quiet(tensorboard=True, max_steps=2), tmp_path / "r").fit()
    else:
        Trainer(SumTask(), quiet(tensorboard=True, max_steps=2), tmp_path / "r").fit()
        assert list((tmp_path / "r" / "tensorboard").iterdir())


def test_a_missing_tensorboard_fails_before_the_run_folder_is_made(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # unimportable
    with pytest.raises(RnnkitError, match="pip install tensorboard"):
        Trainer(SumTask(), quiet(tensorboard=True, max_steps=2), tmp_path / "r")
    assert not (tmp_path / "r").exists()


class ProbeTask(SumTask):
    """SumTask recording the dtype its model's linear layer computes in."""

    def __init__(self) -> None:
        self.dtypes: list[torch.dtype] = []

    def loss(self, model, batch, state):
        self.dtypes.append(model.out(torch.zeros(1, 8)).dtype)
        return super().loss(model, batch, state)


def test_bf16_precision_trains_under_autocast_and_keeps_float32_weights(tmp_path):
    tasks = {precision: ProbeTask() for precision in ("fp32", "bf16")}
    for precision, task in tasks.items():
        Trainer(task, quiet(max_steps=4, precision=precision), tmp_path / precision).fit()
    assert tasks["fp32"].dtypes == [torch.float32] * 4
    assert tasks["bf16"].dtypes == [torch.bfloat16] * 4
    assert all(w.dtype == torch.float32 for w in weights(tmp_path / "bf16").values())
    losses = {p: [r["loss"] for r in train_records(tmp_path / p)] for p in tasks}
    assert losses["fp32"] != losses["bf16"] and all(map(math.isfinite, losses["bf16"]))
    with pytest.raises(RnnkitError, match="precision must be"):
        Trainer(SumTask(), quiet(precision="fp8"), tmp_path / "bad")  # fp16: CUDA's (test_devices)


def test_auto_precision_follows_the_hardware(tmp_path):
    task = ProbeTask()
    Trainer(task, quiet(max_steps=1, precision="auto"), tmp_path / "r").fit()
    native = native_bf16(torch.device("cpu"))
    assert task.dtypes == [torch.bfloat16 if native else torch.float32]
