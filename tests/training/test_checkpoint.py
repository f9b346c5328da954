"""Run directories: atomic checkpoints, no pickle, refusing what is not a run of our format."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from test_trainer import SumTask, quiet, weights

from rnnkit.errors import RnnkitError
from rnnkit.training import Trainer
from rnnkit.training import checkpoint as ckpt


def trained(tmp_path, steps=4):
    Trainer(SumTask(), quiet(max_steps=steps, eval_every=2), tmp_path / "run").fit()
    return tmp_path / "run"


def flip_byte(path, offset=-100):
    with open(path, "r+b") as f:
        f.seek(offset, 2)
        byte = f.read(1)
        f.seek(offset, 2)
        f.write(bytes([byte[0] ^ 0x01]))


def checkpointed(tmp_path, name="run", steps=8):
    """A run with checkpoints at steps 4 and 8."""
    cfg = quiet(max_steps=steps, eval_every=4, checkpoint_every=4)
    Trainer(SumTask(), cfg, tmp_path / name).fit()
    return tmp_path / name


def test_a_flipped_byte_is_detected_and_the_previous_checkpoint_takes_over(tmp_path):
    run = checkpointed(tmp_path)
    flip_byte(run / ckpt.MODEL)  # the top-level file is the latest checkpoint's
    with pytest.raises(RnnkitError, match="model.safetensors does not match its sha256"):
        ckpt.read_tensors(run / ckpt.MODEL)
    with pytest.warns(UserWarning, match="step-00000008 is damaged: model.safetensors"):
        resumed = Trainer(SumTask(), None, run, resume=True)
    assert resumed.counters.step == 4
    assert (run / ckpt.CHECKPOINTS / "step-00000008.damaged-0").is_dir()  # kept to inspect
    assert ckpt.read_tensors(run / ckpt.MODEL)[1]["step"] == 4  # top level back at step 4
    resumed.fit()  # trains steps 5-8 again: the same weights as a run never damaged
    clean = weights(checkpointed(tmp_path, "clean"))
    assert all(torch.equal(clean[k], v) for k, v in weights(run).items())


def test_a_truncated_file_is_detected_by_readers_too(tmp_path):
    run = checkpointed(tmp_path)
    latest = run / ckpt.CHECKPOINTS / "step-00000008" / ckpt.OPTIMIZER
    data = latest.read_bytes()
    latest.unlink()  # a new inode: the top-level link keeps the intact bytes
    latest.write_bytes(data[: len(data) // 2])
    assert "truncated" in ckpt.verify_checkpoint(latest.parent)
    with pytest.warns(UserWarning, match="optimizer.safetensors has .* bytes, .* were written"):
        assert ckpt.latest_checkpoint(run).name == "step-00000004"  # what readers load
    with pytest.warns(UserWarning, match="step-00000008 is damaged"):
        assert ckpt.read_tensors(ckpt.weights_file(run))[1]["step"] == 4
    assert ckpt.read_tensors(run / ckpt.MODEL)[1]["step"] == 8  # readers change nothing


def test_a_full_disk_fails_the_save_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = checkpointed(tmp_path)
    before = weights(run)
    trainer = Trainer(SumTask(), quiet(max_steps=12, checkpoint_every=4), run, resume=True)
    real, written = ckpt._write_synced, []

    def fills_up(path, data):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        real(path, data)

    monkeypatch.setattr(ckpt, "_write_synced", fills_up)
    with pytest.raises(RnnkitError, match="step-00000012 \\(No space left on device\\); free"):
        trainer.fit()
    monkeypatch.undo()
    assert sorted(p.name for p in (run / ckpt.CHECKPOINTS).iterdir()) == [
        "step-00000004",
        "step-00000008",
    ]  # no debris, nothing lost
    after = weights(run)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert Trainer(SumTask(), None, run, resume=True).counters.step == 8


def as_other_user(action) -> str:
    """Run ``action`` in a child process that cannot write where root could (uid nobody when
    the tests run as root); the message of the RnnkitError it raised, or "" if none."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        message = b""
        try:
            if os.getuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            action()
        except RnnkitError as err:
            message = str(err).encode()
        finally:
            os.write(write, message)
            os._exit(0)
    os.close(write)
    message = os.read(read, 4096).decode()
    os.waitpid(pid, 0)
    return message


def test_a_read_only_run_directory_is_a_clear_error(tmp_path):
    base = Path(tempfile.mkdtemp())  # world-traversable, unlike pytest's tmp_path
    try:
        base.chmod(0o755)
        run = checkpointed(base)
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        run.chmod(0o555)
        message = as_other_user(lambda: Trainer(SumTask(), None, run, resume=True).fit())
        assert message.startswith(f"cannot write in {run} (Permission denied)")
        message = as_other_user(lambda: Trainer(SumTask(), quiet(), run / "new").fit())
        assert message.startswith(f"cannot write in {run} (Permission denied)")
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    finally:
        run.chmod(0o755)
        shutil.rmtree(base)


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
    with pytest.raises(RnnkitError, match="config.json is not valid JSON"):
        ckpt.read_config(run)
    (run / "config.json").write_text(json.dumps({**config, "task": ["charlm"]}))
    with pytest.raises(RnnkitError, match="'task' must be a str, not \\['charlm'\\]"):
        ckpt.read_config(run)


def test_interrupt_saves_and_resume_continues(tmp_path):
    import os
    import signal

    def ctrl_c(trainer, record):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "run"
    # Python's own handler to start from, whatever the launcher left (a background job: ignored)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        first = Trainer(SumTask(), quiet(max_steps=10), run, callbacks=[ctrl_c]).fit()
        assert first.stop_reason == "interrupted" and first.step == 3 and first.final == {}
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, outer)
    second = Trainer(SumTask(), None, run, resume=True).fit()
    assert second.step == 10 and second.stop_reason == "budget"


def test_a_manifest_cannot_point_outside_its_checkpoint(tmp_path):
    run = checkpointed(tmp_path)
    latest = run / ckpt.CHECKPOINTS / "step-00000008"
    manifest = json.loads((latest / ckpt.MANIFEST).read_text())
    manifest["files"]["../../config.json"] = manifest["files"].pop(ckpt.MODEL)
    (latest / ckpt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RnnkitError, match="names files a checkpoint does not have; refused"):
        ckpt.read_manifest(latest / ckpt.MANIFEST)
    with pytest.warns(UserWarning, match="step-00000008 is damaged"):
        assert Trainer(SumTask(), None, run, resume=True).counters.step == 4
