"""A run directory from someone else: links, planted names, huge or sparse files, deep nesting,
a second trainer, readers racing a trainer. Each test is one finding of the "untrusted runs"
issue; docs/reliability.md maps them to the guarantees."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runs import TEXT, cli
from test_trainer import SumTask, quiet

from rnnkit.errors import RnnkitError
from rnnkit.training import Trainer
from rnnkit.training import checkpoint as ckpt


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A fresh copy of the trained run, in ``tmp_path/home/run``."""
    (tmp_path / "home").mkdir()
    shutil.copytree(trained_run, tmp_path / "home" / "run")
    return tmp_path / "home" / "run"


def one_line_error(result, pattern: str) -> None:
    """The command failed as a user's mistake: exit 2, one line matching ``pattern``."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert re.search(pattern, result.stderr), result.stderr


def snapshot(root: Path) -> dict[str, tuple]:
    """Name -> (inode, size, mtime, mode) of everything under ``root``, links not followed."""
    found = {}
    for path in [root, *root.rglob("*")]:
        info = os.lstat(path)
        found[str(path.relative_to(root))] = (info.st_ino, info.st_size, info.st_mtime_ns,
                                              info.st_mode)  # fmt: skip
    return found


def test_a_checkpoints_link_to_the_parent_deletes_and_writes_nothing_there(run):
    home = run.parent
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_rsa").write_text("secret")
    (home / ".bashrc").write_text("alias ls=ls")
    shutil.rmtree(run / ckpt.CHECKPOINTS)
    (run / ckpt.CHECKPOINTS).symlink_to("..")
    before = snapshot(home)
    one_line_error(cli("train", "--resume", run), r"run/checkpoints is a symbolic link")
    assert snapshot(home) == before  # hidden files kept, no step-N written there


def test_planted_probe_and_temp_links_never_change_their_target(run, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    pid = os.getpid()
    for k in range(3000):  # the names a probe or temp file had before: for the next PIDs too
        for name in (f".rnnkit-write-test-{pid + k}", f"model.safetensors.tmp{k}"):
            (run.parent / name).symlink_to(target)
    (run / "model.safetensors.tmp").symlink_to(target)
    (run / ckpt.CHECKPOINTS / ".tmp-step-00000012").symlink_to(target)
    one_line_error(
        cli("train", "charlm", "--resume", run, "--max-steps", "12"), "is a symbolic link"
    )
    (run / "model.safetensors.tmp").unlink()
    (run / ckpt.CHECKPOINTS / ".tmp-step-00000012").unlink()
    Trainer(SumTask(), quiet(max_steps=2), run.parent / "new").fit()  # probes in run.parent
    assert cli("train", "charlm", "--resume", run, "--max-steps", "12").exit_code == 0
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("name", [ckpt.MODEL, ckpt.BEST, "vocab.json", ckpt.CONFIG])
def test_a_file_of_the_run_linking_outside_is_refused(run, tmp_path, name):
    outside = tmp_path / "outside"
    shutil.copyfile(run / name, outside)  # even a link to a valid copy
    (run / name).unlink()
    (run / name).symlink_to(outside)
    one_line_error(cli("sample", run, "--length", "5"), f"{name} is a symbolic link")


def test_clean_up_deletes_only_rnnkit_debris(run):
    kept = [run / "notes.tmp", run / ckpt.CHECKPOINTS / ".keep", run / ckpt.CHECKPOINTS / "mine"]
    for path in kept:
        path.write_text("user's")
    debris = [
        run / ckpt.CHECKPOINTS / ".tmp-step-00000009",
        run / ".model.safetensors.x.rnnkit-tmp",
    ]
    debris[0].mkdir()
    debris[1].write_text("torn")
    ckpt.recover(run)
    assert all(p.read_text() == "user's" for p in kept)
    assert not any(p.exists() for p in debris)


def sparse_model(run: Path, size: int) -> None:
    """Grow every model file of ``run`` (top level and checkpoints: hard links) to ``size``
    bytes of holes."""
    for path in [run / ckpt.MODEL, *run.glob(f"{ckpt.CHECKPOINTS}/step-*/{ckpt.MODEL}")]:
        os.truncate(path, size)


@pytest.mark.parametrize("manifests", [True, False])
def test_sparse_3gb_model_files_are_refused_in_little_memory(run, manifests):
    sparse_model(run, 3 << 30)
    if not manifests:
        for manifest in [run / ckpt.MANIFEST, *run.glob("checkpoints/*/manifest.json")]:
            manifest.unlink()
    child = subprocess.Popen(
        [sys.executable, "-m", "rnnkit", "sample", str(run), "--length", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(child.pid, 0)
    stderr = child.stderr.read().decode()
    assert os.waitstatus_to_exitcode(status) == 2, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in stderr
    assert "model.safetensors" in stderr.splitlines()[-1]
    assert usage.ru_maxrss * 1024 < 1.5 * (1 << 30)  # kilobytes on Linux


def test_a_config_nested_100000_levels_deep_is_one_line(run):
    (run / ckpt.CONFIG).write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(cli("sample", run), "config.json is nested too deeply")
    (run / ckpt.CONFIG).write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    one_line_error(cli("train", "--resume", run), "config.json is nested too deeply")


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"task_config": {"hidden": 10**9}}, "do not build a model|parameters, more than"),
        ({"task_config": {"hidden": 10**400}}, "hidden = 1000000.*characters.* larger than"),
        ({"task_config": {"layers": 10**6}}, "layers = 1000000 is larger than 64"),
        ({"task": 7}, "'task' must be a str, not 7"),
        ({"train": "fast"}, "'train' must be a dict"),
    ],
)
def test_sizes_and_types_of_config_json_are_checked_before_building(run, change, pattern):
    config = json.loads((run / ckpt.CONFIG).read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (run / ckpt.CONFIG).write_text(json.dumps(config))
    start = time.perf_counter()
    one_line_error(cli("sample", run, "--length", "5"), pattern)
    assert time.perf_counter() - start < 10


def test_sample_and_eval_change_no_file_even_with_a_damaged_newest_checkpoint(run):
    newest = run / ckpt.CHECKPOINTS / "step-00000008" / ckpt.OPTIMIZER
    data = newest.read_bytes()
    newest.unlink()  # a new inode, so the top-level link is not damaged with it
    newest.write_bytes(data[:100])
    before = snapshot(run)
    result = cli("sample", run, "--length", "5", "--seed", "2")
    assert result.exit_code == 0, result.output
    assert "step-00000008 is damaged" in result.stderr
    text = run.parent / "text.txt"
    text.write_text(TEXT)
    assert cli("eval", run, "--text", text).exit_code == 0
    assert snapshot(run) == before


def test_a_second_trainer_on_a_run_is_refused_naming_the_lock(run):
    lock = ckpt.lock_run(run)  # as a trainer in another process holds it
    try:
        result = cli("train", "charlm", "--resume", run, "--max-steps", "12")
        one_line_error(result, rf"in use by process {os.getpid()} \(lock .*train.lock\)")
    finally:
        lock.close()
    assert cli("train", "charlm", "--resume", run, "--max-steps", "12").exit_code == 0


def test_a_reader_polling_a_training_run_never_disturbs_it(tmp_path):
    run = tmp_path / "run"
    Trainer(SumTask(), quiet(max_steps=1), run).fit()
    code = (
        "import sys; sys.path.insert(0, sys.argv[2]);"
        "from test_trainer import SumTask, quiet; from rnnkit.training import Trainer;"
        "Trainer(SumTask(), quiet(max_steps=40, checkpoint_every=1), sys.argv[1],"
        " resume=True).fit()"
    )
    tests = str(Path(__file__).parent)
    trainer = subprocess.Popen([sys.executable, "-c", code, str(run), tests])
    reads = 0
    while trainer.poll() is None:
        model = ckpt.load_trained(SumTask().build_model, run)
        reads += model is not None
    assert trainer.returncode == 0 and reads > 5
    assert json.loads((run / ckpt.TRAINER_STATE).read_text())["step"] == 40


def test_a_nonfinite_validation_loss_is_never_kept(tmp_path):
    class NaNValidation(SumTask):
        def evaluate(self, model, full):
            return {"loss": float("nan")}

    run = tmp_path / "run"
    cfg = quiet(max_steps=6, eval_every=2, checkpoint_every=1, on_nonfinite="stop")
    result = Trainer(NaNValidation(), cfg, run).fit()
    assert result.stop_reason == "diverged" and result.step == 2
    saved = json.loads((run / ckpt.TRAINER_STATE).read_text())
    assert saved["step"] == 1 and not (run / ckpt.BEST).exists()  # step 2 was not saved
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in lines if '"valid"' in line] == [None]
    with pytest.raises(RnnkitError, match="validation loss nan at step 2 is not finite"):
        Trainer(NaNValidation(), quiet(max_steps=6, eval_every=2), tmp_path / "raise").fit()


def test_metrics_lines_of_any_shape_are_skipped(run):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 1}\n[1, 2]\n{"step": "x", "split": "train"}\nNaN\n' + "[" * 50_000 + "\n")
    result = cli("train", "charlm", "--resume", run, "--max-steps", "10")
    assert result.exit_code == 0, result.output


def rewrite_in_checkpoint(run: Path, name: str, data: bytes) -> None:
    """Replace ``name`` in every checkpoint of ``run`` (and at its top) with ``data``, its
    manifests updated, as someone crafting a run would."""
    for folder in [run, *sorted((run / ckpt.CHECKPOINTS).glob("step-*"))]:
        (folder / name).unlink()
        (folder / name).write_bytes(data)
        manifest = json.loads((folder / ckpt.MANIFEST).read_text())
        entry = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest["files"][name] = entry
        (folder / ckpt.MANIFEST).unlink()
        (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "state, pattern",
    [
        ({"step": "x"}, "trainer.json setting step = 'x' is not of type int"),
        ({"step": -3}, "negative counters"),
        ({"carried_spec": [[["nope"]]]}, "the trainer state of .* is damaged"),
        ({"best_loss": {"a": 1}}, "best_loss"),
    ],
)
def test_a_crafted_trainer_state_is_one_line(tmp_path, state, pattern):
    run = tmp_path / "run"
    Trainer(SumTask(), quiet(max_steps=4, checkpoint_every=2), run).fit()
    saved = json.loads((run / ckpt.TRAINER_STATE).read_text())
    rewrite_in_checkpoint(run, ckpt.TRAINER_STATE, json.dumps({**saved, **state}).encode())
    with pytest.raises(RnnkitError, match=pattern):
        Trainer(SumTask(), None, run, resume=True)


def test_optimizer_state_of_the_wrong_shapes_is_refused_before_a_step(tmp_path):
    run = tmp_path / "run"
    Trainer(SumTask(), quiet(max_steps=4, checkpoint_every=2), run).fit()
    tensors, meta = ckpt.read_tensors(run / ckpt.OPTIMIZER)
    name = next(k for k in tensors if k.endswith("exp_avg"))
    tensors[name] = torch.zeros(tensors[name].numel() + 1)
    rewrite_in_checkpoint(run, ckpt.OPTIMIZER, ckpt.tensors_to_bytes(tensors, meta))
    with pytest.raises(RnnkitError, match=f"does not fit the optimizer.*{name}"):
        Trainer(SumTask(), None, run, resume=True)


def test_metrics_numbers_beyond_floats_are_skipped(run):
    with open(run / "metrics.jsonl", "a") as f:
        f.write(f'{{"step": 3, "split": "train", "loss": {10**400}}}\n')
        f.write(f'{{"step": {10**400}, "split": "valid", "loss": 1.0}}\n')
    result = cli("train", "charlm", "--resume", run, "--max-steps", "10")
    assert result.exit_code == 0, result.output
