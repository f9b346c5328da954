"""Run directories: atomic checkpoints, no pickle, refusing what is not a run of our format."""

from __future__ import annotations

import json

import pytest
import torch
from test_trainer import SumTask, quiet, weights

from rnnkit.errors import RnnkitError
from rnnkit.training import Trainer
from rnnkit.training import checkpoint as ckpt


def trained(tmp_path, steps=4):
    Trainer(SumTask(), quiet(max_steps=steps, eval_every=2), tmp_path / "run").fit()
    return tmp_path / "run"


def test_a_kill_mid_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    run = trained(tmp_path)
    before = weights(run)
    trainer = Trainer(SumTask(), quiet(max_steps=8, eval_every=2), run, resume=True)
    trainer.counters.step = 999
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    real, written = ckpt._write_synced, []

    def dies_on_third_file(path, data):
        if len(written) == 2:
            raise KeyboardInterrupt("killed")  # the process dies while writing
        written.append(path)
        real(path, data)

    monkeypatch.setattr(ckpt, "_write_synced", dies_on_third_file)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    monkeypatch.setattr(ckpt, "_write_synced", real)
    assert list(run.glob("*.tmp"))  # debris of the torn save...
    again = Trainer(SumTask(), quiet(max_steps=8, eval_every=2), run, resume=True)
    assert again.counters.step == 4 and not list(run.glob("*.tmp"))  # ...ignored and removed
    after = weights(run)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_kill_after_the_commit_marker_finishes_the_new_checkpoint(tmp_path, monkeypatch):
    run = trained(tmp_path)
    trainer = Trainer(SumTask(), quiet(max_steps=8, eval_every=2), run, resume=True)
    trainer.counters.step = 6
    monkeypatch.setattr(ckpt, "_finish_commit", lambda run_dir: None)  # dies before renaming
    trainer.save_checkpoint()
    monkeypatch.undo()
    assert (run / ckpt.COMMIT).exists()
    assert Trainer(SumTask(), None, run, resume=True).counters.step == 6


def test_files_are_safetensors_and_json_and_loading_never_unpickles(tmp_path, monkeypatch):
    run = trained(tmp_path)
    for name in (ckpt.MODEL, ckpt.OPTIMIZER, ckpt.TRAINER_TENSORS, ckpt.BEST):
        header = (run / name).read_bytes()
        size = int.from_bytes(header[:8], "little")
        json.loads(header[8 : 8 + size])  # a safetensors header is JSON
    for name in (ckpt.CONFIG, ckpt.TRAINER_STATE):
        json.loads((run / name).read_text())

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", no_pickle)
    trainer = Trainer(SumTask(), None, run, resume=True)
    assert trainer.counters.step == 4
    saved = trainer.optimizer.state_dict()["state"][0]
    assert {"step", "exp_avg", "exp_avg_sq"} <= set(saved) and float(saved["step"]) == 4


def test_refuses_what_is_not_a_run_of_this_format(tmp_path):
    with pytest.raises(RnnkitError, match="does not exist"):
        ckpt.read_config(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RnnkitError, match="is not an rnnkit run \\(no config.json\\)"):
        ckpt.read_config(tmp_path / "plain")
    run = trained(tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(RnnkitError, match="format version 99, this rnnkit reads version 1"):
        Trainer(SumTask(), None, run, resume=True)
    (run / "config.json").write_text("{not json")
    with pytest.raises(RnnkitError, match="the run is damaged"):
        ckpt.read_config(run)


def test_interrupt_saves_and_resume_continues(tmp_path):
    import os
    import signal

    def ctrl_c(trainer, record):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "run"
    first = Trainer(SumTask(), quiet(max_steps=10), run, callbacks=[ctrl_c]).fit()
    assert first.stop_reason == "interrupted" and first.step == 3 and first.final == {}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    second = Trainer(SumTask(), None, run, resume=True).fit()
    assert second.step == 10 and second.stop_reason == "budget"
