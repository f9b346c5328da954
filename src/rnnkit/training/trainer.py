"""The one training loop of rnnkit; every task trains through it.

The task protocol
-----------------
A task is any object with these members (see `Task`); it is the only place where data meets a
model, and the trainer knows nothing of either:

``name: str``
    the task's key in `rnnkit.tasks.TASKS` (so ``rnnkit sample/eval`` can rebuild the run).
``steps_per_epoch: int | None``
    optimizer steps in one pass over the training data; None if batches are sampled freely
    (then ``max_epochs`` cannot be used).
``config() -> dict``
    JSON-able settings that rebuild the model and the data pipeline (stored in config.json).
``save_assets(run_dir)``
    write what else the run needs besides weights, e.g. ``vocab.json`` (may do nothing).
``build_model() -> nn.Module``
    a fresh model (the trainer seeds torch first, so this is deterministic).
``train_batch(step, rng) -> batch``
    the batch of optimizer step ``step`` (0-based). Draw all randomness from ``rng`` (a
    `torch.Generator` the trainer seeds and checkpoints): that is what makes resuming exact.
``loss(model, batch, state) -> StepOutput``
    the training loss of one batch. ``state`` is what the previous step returned in
    ``StepOutput.state`` (detached), or None: return a state only for truncated BPTT over a
    stream (see `rnnkit.training.tbptt`), else leave it None.
``evaluate(model, full) -> dict[str, float]``
    validation metrics; must include ``"loss"`` (lower is better: early stopping and the best
    checkpoint follow it). Called in eval mode under ``torch.no_grad()``; ``full=False`` during
    training (a task may use a fixed subset to save time), ``full=True`` once at the end.
``grad_metrics(model) -> dict[str, float]`` (optional)
    floats measured on the gradients after backpropagation and before clipping (e.g. the norm
    of the recurrent weights' gradient); logged with the step like ``StepOutput.metrics``.

The trainer does the rest: the device (``device``: the model and each batch move there, the
task builds batches on the CPU and evaluates behind `rnnkit.training.devices.boundary`; the
model is back on the CPU when `fit` returns), AdamW, linear warm-up then cosine decay of the
learning rate, an optional bfloat16 or (CUDA) float16 forward pass (``precision``), clipping
by global norm (the pre-clip norm is logged as ``grad_norm``), budgets (steps, epochs, seconds;
the first reached stops training; the schedule follows the step budget if there is one, else the
time budget, so a step-budgeted run is reproducible whatever the machine's speed), evaluation
every ``eval_every`` steps, early stopping, seeding, checkpoints, ``metrics.jsonl``, the loss
curve, a progress bar, Ctrl-C (finish the step, save, stop) and exact resume. Checkpoints
survive kills and detect damaged files (`rnnkit.training.checkpoint`); a NaN never reaches the
weights (``on_nonfinite``); under ``torchrun`` training is data-parallel with
``DistributedDataParallel`` (`rnnkit.training.distributed`). What is guaranteed, and tested,
is in docs/reliability.md.

Example::

    class Parity:                                    # is the number of ones in x odd?
        name, steps_per_epoch = "parity", None
        def config(self): return {}
        def save_assets(self, run_dir): pass
        def build_model(self): return ParityNet()    # your nn.Module: (B, T, 1) -> (B,)
        def train_batch(self, step, rng):
            x = torch.randint(0, 2, (32, 20, 1), generator=rng).float()
            return x, x.sum((1, 2)) % 2
        def loss(self, model, batch, state):
            x, y = batch
            return StepOutput(F.binary_cross_entropy_with_logits(model(x), y), tokens=x.numel())
        def evaluate(self, model, full):
            x, y = self.train_batch(0, torch.Generator().manual_seed(123))
            return {"loss": float(F.binary_cross_entropy_with_logits(model(x), y))}

    result = Trainer(Parity(), TrainConfig(max_steps=2000, eval_every=200), "runs/parity").fit()
    # later, with a larger budget:  Trainer(Parity(), config, "runs/parity", resume=True).fit()
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import torch
from torch import Tensor, nn

from rnnkit._version import __version__
from rnnkit.errors import RnnkitError, shorten
from rnnkit.io import check_writable, json_bytes, read_bytes, read_json
from rnnkit.training import checkpoint as ckpt
from rnnkit.training import distributed
from rnnkit.training.devices import (
    PRECISIONS,
    autocast_dtype,
    boundary,
    fused_adamw,
    native_bf16,  # noqa: F401  (re-exported: its home was here)
    needs_scaler,
    resolve_device,
    to_device,
)
from rnnkit.training.metrics import MetricsLog, Progress, plot_loss_curve
from rnnkit.training.options import check_types, choice
from rnnkit.training.tbptt import detach_state
from rnnkit.training.threads import ThreadTuner, adapting


@dataclass
class StepOutput:
    """What a task's ``loss`` returns for one batch.

    Attributes:
        loss: scalar tensor to minimise.
        state: recurrent state to carry into the next step (truncated BPTT), else None.
        tokens: items in the batch (time steps x sequences), for the tokens/s figure.
        metrics: extra floats to average into the logged train record.
    """

    loss: Tensor
    state: Any = None
    tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class Task(Protocol):
    """The interface a task implements; see the module docstring."""

    name: str
    steps_per_epoch: int | None

    def config(self) -> dict[str, Any]: ...
    def save_assets(self, run_dir: Path) -> None: ...
    def build_model(self) -> nn.Module: ...
    def train_batch(self, step: int, rng: torch.Generator) -> Any: ...
    def loss(self, model: nn.Module, batch: Any, state: Any) -> StepOutput: ...
    def evaluate(self, model: nn.Module, full: bool) -> dict[str, float]: ...


@dataclass
class TrainConfig:
    """Settings of the training loop (budgets in steps, epochs or seconds; None: no limit).

    Attributes:
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        betas: AdamW's betas.
        warmup_steps: Warm-up steps (linear, then the schedule).
        schedule: Learning-rate schedule after the warm-up.
        min_lr_ratio: The schedule's last learning rate, as a fraction of the peak.
        clip: Clip the gradient norm; 0 or none: off (the norm is still logged).
        max_steps: Step budget; none: no limit.
        max_epochs: Epoch budget; none: no limit.
        max_time: Time budget: 900 (seconds), 90s, 15m, 1h; none: no limit.
        eval_every: Steps between evaluations.
        log_every: Steps between log lines.
        checkpoint_every: Steps between checkpoints; none: at every evaluation.
        keep_checkpoints: Complete checkpoints kept in checkpoints/ (at least 2, so that a
            damaged newest one falls back to the one before).
        patience: Stop after this many evaluations without progress; none: never.
        min_delta: The least improvement that counts as progress.
        monitor: The validation metric that picks the best checkpoint and drives early
            stopping (a key of the task's ``evaluate`` result; `FitResult.best_loss` holds its
            best value).
        monitor_mode: min (e.g. a loss) or max (e.g. accuracy).
        seed: Random seed.
        progress: auto: a bar on a terminal, log lines otherwise.
        tensorboard: Also log to TensorBoard.
        on_nonfinite: A NaN/inf loss or gradient norm (the step is never applied): raise an
            error; stop, keeping the last checkpoint as it is (stop reason "diverged"); or skip
            the step with a warning (an error after MAX_SKIPS skipped steps in a row).
        precision: bf16: the training forward pass in bfloat16 (about 2x faster on CPUs with
            AMX or AVX-512 BF16); fp16 (CUDA): float16 with a gradient scaler; auto: bf16 where
            the hardware has it, else fp16 on CUDA.
        device: Train on this device: auto (CUDA, else MPS, else the CPU), cpu, cuda, cuda:N
            or mps; a resumed run may change it.
    """

    lr: float = 2e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    clip: float | None = 1.0
    max_steps: int | None = None
    max_epochs: float | None = None
    max_time: float | None = None
    eval_every: int = 500
    log_every: int = 50
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    patience: int | None = None
    min_delta: float = 0.0
    monitor: str = "loss"
    monitor_mode: str = "min"
    seed: int = 0
    progress: str = choice("auto", ("auto", "bar", "log", "none"))
    tensorboard: bool = False
    on_nonfinite: str = choice("raise", ("raise", "stop", "skip"))
    precision: str = choice("fp32", ("fp32", "bf16", "fp16", "auto"))
    device: str = "auto"

    #: fields that may change when resuming (the rest must match the run's config.json)
    RESUMABLE = (
        "max_steps",
        "max_epochs",
        "max_time",
        "eval_every",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "patience",
        "min_delta",
        "progress",
        "tensorboard",
        "on_nonfinite",
        "device",  # checkpoints do not depend on the device: a run resumes on another one
    )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, refusing unknown keys (a typo in a config file)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RnnkitError(
                f"unknown training setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        check_types(cls, values, "training")
        values = dict(values)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def check(self, steps_per_epoch: int | None) -> None:
        """Raise RnnkitError for settings that cannot work."""
        if self.max_steps is None and self.max_epochs is None and self.max_time is None:
            raise RnnkitError("no training budget: set max_steps, max_epochs or max_time")
        if self.max_epochs is not None and steps_per_epoch is None:
            raise RnnkitError("this task samples batches freely: use max_steps or max_time")
        if self.schedule not in ("cosine", "constant"):
            raise RnnkitError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.on_nonfinite not in ("raise", "stop", "skip"):
            raise RnnkitError(
                f"on_nonfinite must be 'raise', 'stop' or 'skip', got {self.on_nonfinite!r}"
            )
        if self.monitor_mode not in ("min", "max"):
            raise RnnkitError(f"monitor_mode must be 'min' or 'max', got {self.monitor_mode!r}")
        if self.keep_checkpoints < 2:
            raise RnnkitError(f"keep_checkpoints must be at least 2, got {self.keep_checkpoints}")
        if self.precision not in PRECISIONS:
            raise RnnkitError(
                f"precision must be {', '.join(PRECISIONS[:-1])} or auto, got {self.precision!r}"
            )
        if self.progress not in ("auto", "bar", "log", "none"):
            raise RnnkitError(f"progress must be auto, bar, log or none, got {self.progress!r}")
        positive = ("lr", "max_steps", "max_epochs", "max_time", "eval_every", "log_every")
        for name in (*positive, "checkpoint_every", "patience"):
            value = getattr(self, name)
            if value is not None and not value > 0:  # `not >` also refuses NaN
                raise RnnkitError(f"{name} must be positive, got {value}")
        for name in ("clip", "warmup_steps", "weight_decay", "min_delta"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise RnnkitError(f"{name} must be 0 or more, got {value}")
        for name, value in (
            ("min_lr_ratio", self.min_lr_ratio),
            *zip(("beta1", "beta2"), self.betas),
        ):
            if not 0 <= value <= 1:
                raise RnnkitError(f"{name} must be within [0, 1], got {value}")

    def total_steps(self, steps_per_epoch: int | None) -> int | None:
        """The step budget implied by max_steps and max_epochs (the smaller), or None."""
        budgets = [self.max_steps] if self.max_steps is not None else []
        if self.max_epochs is not None and steps_per_epoch is not None:
            budgets.append(math.ceil(self.max_epochs * steps_per_epoch))
        return min(budgets) if budgets else None


@dataclass
class FitResult:
    """How training ended.

    ``stop_reason``: "budget", "early_stopping", "interrupted" (Ctrl-C or SIGTERM), "diverged"
    (see ``on_nonfinite``) or "paused" (`Trainer.request_stop`). ``final`` is the full
    evaluation (empty when training was stopped by the user or by divergence).
    """

    step: int
    elapsed: float
    stop_reason: str
    best_loss: float | None
    final: dict[str, float]
    run_dir: Path


Callback = Callable[["Trainer", dict[str, Any]], None]

#: non-finite steps skipped in a row before ``on_nonfinite="skip"`` gives up
MAX_SKIPS = 20


@dataclass
class _Progress:
    """The loop's counters: all that, with the RNG states, a checkpoint must restore."""

    step: int = 0
    elapsed: float = 0.0
    best_loss: float | None = None
    bad_evals: int = 0


class Trainer:
    """Trains ``task``'s model into the run directory ``run_dir``; see the module docstring.

    Args:
        task: an object following the `Task` protocol.
        config: the training settings. When resuming, only budget, interval and display
            settings (`TrainConfig.RESUMABLE`) may differ from the run's; None takes the run's.
        run_dir: the run directory; refused if it already holds a run unless ``resume``.
        resume: continue the run in ``run_dir`` from its last checkpoint.
        callbacks: called after every step as ``callback(trainer, record)`` with ``record``
            holding step, loss, lr, grad_norm; a callback may call `request_stop`.
    """

    def __init__(
        self,
        task: Task,
        config: TrainConfig | None,
        run_dir: str | Path,
        *,
        resume: bool = False,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.task, self.run_dir, self.resume = task, Path(run_dir), resume
        self.callbacks = list(callbacks)
        # the device first: it picks the process group's backend (gloo on CPU, NCCL on CUDA)
        self.world = distributed.join(resolve_device(self._wanted_device(config)))
        self.device = self.world.device  # with several GPUs: this rank's own
        if not self.world.writer:  # rank 0 creates or recovers the run first
            self.world.barrier()
        self.config = self._resolve_config(config)
        self.config.check(task.steps_per_epoch)
        # resolved once: "auto" asks the hardware; fp16 (CUDA only) scales the loss
        self._amp_dtype = autocast_dtype(self.config.precision, self.device)
        self._lock: BinaryIO | None = None  # the run's training lock (rank 0)
        if self.world.writer:
            if self.config.tensorboard:
                _summary_writer()  # a missing package fails before the run folder is made
            check_writable(self.run_dir)
            self._lock = ckpt.lock_run(self.run_dir)
            if not resume and ckpt.is_run(self.run_dir):  # another trainer was quicker
                self.close()
                raise RnnkitError(f"{self.run_dir} already holds a run; resume it (--resume)")
        self.total_steps = self.config.total_steps(task.steps_per_epoch)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.world.writer)
        self.counters = _Progress()
        self.carried: Any = None
        self._stop_reason: str | None = None
        self._step_seconds = 0.0  # duration of the last training step
        self._best_bytes: bytes | None = None  # best.safetensors, saved with the next checkpoint
        self._saved_step: int | None = None  # step of the last checkpoint saved or loaded
        self._skipped = 0  # non-finite steps skipped in a row (on_nonfinite="skip")
        self._setup()
        if self.world.writer:
            self.world.barrier()
        # the task's loss over the model; in DDP, which gives every rank rank 0's weights now
        self._task_loss = distributed.wrap(self.task, self.model, self.world)

    # --- setup ----------------------------------------------------------------------------

    def _wanted_device(self, config: TrainConfig | None) -> str:
        """The ``device`` setting: the config's, or (resuming without one) the run's."""
        if config is not None:
            return config.device
        if self.resume:
            try:
                device = ckpt.read_config(self.run_dir)["train"].get("device", "auto")
            except (RnnkitError, KeyError, TypeError, AttributeError):
                return "auto"  # `_resolve_config` says what is wrong with the run
            return device if isinstance(device, str) else "auto"
        return "auto"

    def _resolve_config(self, config: TrainConfig | None) -> TrainConfig:
        if not self.resume:
            if not self.world.writer:  # rank 0 has checked and created the run
                return config or TrainConfig()
            if ckpt.is_run(self.run_dir):
                raise RnnkitError(
                    f"{self.run_dir} already holds a run; resume it (--resume) or choose another "
                    "output directory (--out)"
                )
            if self.run_dir.exists() and (
                not self.run_dir.is_dir() or set(os.listdir(self.run_dir)) - {ckpt.LOCK}
            ):
                raise RnnkitError(f"{self.run_dir} exists and is not an empty directory")
            return config or TrainConfig()
        saved = ckpt.read_config(self.run_dir)
        if saved.get("task") != self.task.name:
            raise RnnkitError(
                f"{self.run_dir} is a {saved.get('task')!r} run, not {self.task.name!r}"
            )
        run_config = TrainConfig.from_dict(saved["train"])
        if config is None:
            return run_config
        for f in fields(TrainConfig):
            same = getattr(config, f.name) == getattr(run_config, f.name)
            if not same and f.name not in TrainConfig.RESUMABLE:
                raise RnnkitError(
                    f"cannot change {f.name} when resuming ({getattr(run_config, f.name)!r} in "
                    f"the run, {getattr(config, f.name)!r} given); start a new run instead"
                )
        return config

    def _setup(self) -> None:
        torch.manual_seed(self.config.seed)
        model = ckpt.build_checked(self.task.build_model, self.run_dir, strict=self.resume)
        self.model = model.to(self.device)  # built on the CPU (seeded the same everywhere)
        self._scaler = (torch.amp.GradScaler(self.device.type)
                        if needs_scaler(self._amp_dtype) else None)  # fmt: skip
        self.data_rng = torch.Generator().manual_seed(self.config.seed + 1)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.config.lr,
            betas=self.config.betas,
            weight_decay=self.config.weight_decay,
            # one pass over each tensor: 2x faster than the loop with big embeddings
            fused=fused_adamw(self.device) or None,
        )
        if self.resume:
            self._load_checkpoint()
            if self.world.writer:
                ckpt.update_train_config(self.run_dir, asdict(self.config))
        elif self.world.writer:
            self._create_run()

    def _create_run(self) -> None:
        train = asdict(self.config)
        run = {"task": self.task.name, "task_config": self.task.config(), "train": train}
        ckpt.write_config(self.run_dir, {**run, "rnnkit_version": __version__})
        self.task.save_assets(self.run_dir)

    # --- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Commit model, best model, optimizer, counters, RNG states and carried state as one
        checkpoint (see `rnnkit.training.checkpoint`).

        Raises:
            RnnkitError: it cannot be written (full disk, read-only directory); the previous
                checkpoint is intact.
        """
        carried, spec = ckpt.flatten_state(self.carried)
        tensors = {
            "rng.torch": torch.get_rng_state(),
            "rng.data": self.data_rng.get_state(),
            **carried,
        }
        if self.device.type == "cuda":  # dropout's masks on the GPU; ignored on another device
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        state = {**asdict(self.counters), "carried_spec": spec, "train": asdict(self.config)}
        if self._scaler is not None:  # float16 on CUDA: the loss scale goes on from here
            state["scaler"] = self._scaler.state_dict()
        model_sd = self.model.state_dict()
        files = {
            ckpt.MODEL: ckpt.tensors_to_bytes(model_sd, {"step": self.counters.step}),
            ckpt.OPTIMIZER: ckpt.optimizer_to_bytes(self.optimizer),
            ckpt.TRAINER_TENSORS: ckpt.tensors_to_bytes(tensors, {"step": self.counters.step}),
            ckpt.TRAINER_STATE: json_bytes(state),
        }
        if self._best_bytes is not None:
            files[ckpt.BEST] = self._best_bytes
        if self.world.writer:
            keep = self.config.keep_checkpoints
            ckpt.save_checkpoint(self.run_dir, self.counters.step, files, keep)
        self._saved_step = self.counters.step

    def _load_checkpoint(self) -> None:
        """Restore the newest valid checkpoint (the top-level files of a run saved before
        ``checkpoints/`` existed)."""
        if self.world.writer:
            source = ckpt.recover(self.run_dir) or self.run_dir
        else:  # rank 0 has recovered the run: only read it
            source = ckpt.latest_checkpoint(self.run_dir) or self.run_dir
        if not os.path.lexists(source / ckpt.TRAINER_STATE):  # killed before its first checkpoint
            warnings.warn(f"{self.run_dir} has no checkpoint yet: from step 0", stacklevel=2)
            if self.world.writer:
                self.task.save_assets(self.run_dir)
            self._saved_step = 0
            self.metrics.truncate_after(0)
            return
        state = read_json(source / ckpt.TRAINER_STATE)
        ckpt.load_model_weights(self.model, source / ckpt.MODEL)
        ckpt.load_optimizer(self.optimizer, source / ckpt.OPTIMIZER)
        if os.path.lexists(source / ckpt.BEST):
            self._best_bytes = read_bytes(source / ckpt.BEST, ckpt.state_bytes(self.model) << 1)
        tensors, _ = ckpt.read_tensors(source / ckpt.TRAINER_TENSORS)
        try:
            self._restore(state, tensors)
        except RnnkitError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, RecursionError) as err:
            raise RnnkitError(
                f"the trainer state of {source} is damaged ({shorten(str(err))}); train anew"
            ) from None
        self._saved_step = self.counters.step
        self.metrics.truncate_after(self.counters.step)

    def _restore(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Counters, RNG states and carried state from a checkpoint's trainer files."""
        counters = {k: state[k] for k in ("step", "elapsed", "best_loss", "bad_evals")}
        check_types(_Progress, counters, "trainer.json")
        if counters["step"] < 0 or counters["bad_evals"] < 0:
            raise ValueError("negative counters")
        torch.set_rng_state(tensors["rng.torch"])
        self.data_rng.set_state(tensors["rng.data"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.carried = to_device(ckpt.unflatten_state(tensors, state["carried_spec"]), self.device)
        if self._scaler is not None and isinstance(state.get("scaler"), dict):
            self._scaler.load_state_dict(state["scaler"])
        self.counters = _Progress(**counters)

    def close(self) -> None:
        """Release the run's training lock (done by `fit`; for a trainer never fitted)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # --- the loop -------------------------------------------------------------------------

    def request_stop(self, reason: str = "paused") -> None:
        """Stop after the current step (a checkpoint is saved)."""
        self._stop_reason = self._stop_reason or reason

    def fit(self) -> FitResult:
        """Train until a budget, early stopping, Ctrl-C or `request_stop`; see `FitResult`.
        The run's lock is released at the end, and the model is back on the CPU (where the
        tasks' code after training, e.g. a test evaluation, expects it)."""
        try:
            return self._fit()
        finally:
            self.close()
            self.model.to("cpu")

    def _fit(self) -> FitResult:
        cfg, c = self.config, self.counters
        shown = cfg.progress if self.world.writer else "none"
        progress = Progress(shown, self.total_steps, cfg.max_time, c.step, c.elapsed)
        board = _tensorboard(self.run_dir) if cfg.tensorboard and self.world.writer else None
        window = _Window()
        start = time.perf_counter() - c.elapsed
        restore_sigint = self._install_sigint(progress)
        tuner = ThreadTuner() if adapting() and self.device.type == "cpu" else None
        try:
            while not self._should_stop(time.perf_counter() - start):
                step_start = time.perf_counter()
                # a signal waits for the step (and its logging, checkpoint) to end; not in the
                # process's first step, which may build the C++ kernels or wait for their lock
                self._in_step = self._step_seconds > 0
                record = self._train_step()
                if record is None:  # diverged, step not applied
                    break
                self._step_seconds = time.perf_counter() - step_start
                if tuner is not None:
                    tuner.record(self._step_seconds)
                c.step += 1
                c.elapsed = time.perf_counter() - start
                window.add(record)
                for callback in self.callbacks:
                    callback(self, record)
                if c.step % cfg.log_every == 0 and window.steps:
                    self._log_train(window.flush(c.elapsed), progress, board)
                if c.step % cfg.eval_every == 0:
                    self._in_step = False  # an evaluation may be long: a signal aborts it
                    self._evaluate(progress, board, full=False)
                    self._in_step = True
                if self._checkpoint_due():
                    self.save_checkpoint()
                if window.steps == 0:  # tokens/s counts training only
                    c.elapsed, window.t0 = time.perf_counter() - start, time.perf_counter()
        finally:
            restore_sigint()
            if tuner is not None:
                tuner.restore()
        c.elapsed = time.perf_counter() - start
        if window.steps:
            self._log_train(window.flush(c.elapsed), progress, board)
        reason = self._stop_reason or "budget"
        stopped = reason in ("interrupted", "paused", "diverged")
        final = {} if stopped else self._evaluate(progress, board, True)
        reason = self._stop_reason or reason  # a final evaluation that is not finite: diverged
        if reason != "diverged" and self._saved_step != c.step:
            self.save_checkpoint()
        self._plot()
        progress.close()
        if board is not None:
            board.close()
        return FitResult(c.step, c.elapsed, reason, c.best_loss, final, self.run_dir)

    def _budget_spent(self, elapsed: float) -> bool:
        """Steps done, or the next step (judged by the last one) would end past max_time."""
        if self.total_steps is not None and self.counters.step >= self.total_steps:
            return True
        max_time = self.config.max_time
        return max_time is not None and elapsed + self._step_seconds >= max_time

    def _should_stop(self, elapsed: float) -> bool:
        """A stop requested or a budget spent, in this process or (distributed) in any."""
        code = 2 if self._stop_reason is not None else int(self._budget_spent(elapsed))
        code = self.world.any(code)
        if code == 2 and self._stop_reason is None:  # another process was interrupted
            self._stop_reason = "interrupted"
        return code > 0

    def _checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every or self.config.eval_every
        return self.counters.step % every == 0 and self._stop_reason is None

    def _train_step(self) -> dict[str, Any] | None:
        """One optimizer step; returns the step's record (loss, lr, grad_norm, ...), or None if
        the loss or gradient was not finite and ``on_nonfinite="stop"`` (nothing applied; see
        `_nonfinite` for the other policies)."""
        cfg, step = self.config, self.counters.step
        batch = self._shard(self.task.train_batch(step, self.data_rng))  # built on the CPU
        batch = to_device(batch, self.device)
        self.model.train()
        with self._autocast():
            loss_value = self._task_loss(batch, self.carried)  # DDP: in several processes
        out = self._task_loss.last if self.world.size == 1 else self._task_loss.module.last
        if out.state is not None and self.world.size > 1:
            raise RnnkitError("a carried state (truncated BPTT over a stream) cannot be trained "
                              "distributed yet; train in one process")  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self._scaler  # float16: the loss scaled up, the gradients back down
        (scaler.scale(loss_value) if scaler else loss_value).backward()  # DDP averages here
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        mean_loss = distributed.mean(loss_value, self.world)
        measure = getattr(self.task, "grad_metrics", None)
        grad_metrics = measure(self.model) if measure is not None else {}
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = cfg.clip if cfg.clip else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        loss = float(mean_loss)
        lr = self.learning_rate(step, self.counters.elapsed)
        if scaler is not None and math.isfinite(loss) and not math.isfinite(grad_norm):
            return self._scale_overflow(step, loss, grad_norm, lr)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return self._nonfinite(step, loss, grad_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self._skipped = 0
        self.carried = detach_state(out.state)
        clipped = bool(cfg.clip) and grad_norm > cfg.clip
        return {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                "clipped": clipped, "tokens": out.tokens, **out.metrics,
                **grad_metrics}  # fmt: skip

    def _autocast(self) -> torch.autocast:
        """The training forward pass's autocast context (disabled for fp32)."""
        dtype = self._amp_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=bool(dtype))

    def _scale_overflow(self, step: int, loss: float, grad_norm: float, lr: float) -> dict:
        """float16: the scaled gradients overflowed; the scaler skips the update and lowers
        the scale (not a divergence: the loss is finite)."""
        self._scaler.step(self.optimizer)  # skipped: it saw the inf in unscale_
        self._scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.carried = None
        return {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                "skipped": True, "scale": self._scaler.get_scale()}  # fmt: skip

    def _shard(self, batch: Any) -> Any:
        """This process's part of the global batch (the whole batch in one process)."""
        if self.world.size == 1:
            return batch
        shard = getattr(self.task, "shard_batch", None)
        return shard(batch, self.world) if shard else distributed.shard_batch(batch, self.world)

    def _nonfinite(self, step: int, loss: float, grad_norm: float) -> dict[str, Any] | None:
        """A NaN/inf loss or gradient at ``step`` (nothing applied): raise, stop (None) or skip
        (the record of the skipped step), as ``on_nonfinite`` says."""
        self.optimizer.zero_grad(set_to_none=True)
        policy, what = self.config.on_nonfinite, f"loss {loss}, gradient norm {grad_norm}"
        advice = (f"lower the learning rate (now {self.config.lr}), clip gradients (--clip 1.0) "
                  "or look for NaN/inf in the data; the last checkpoint is intact")  # fmt: skip
        if policy == "raise":
            raise RnnkitError(f"training diverged at step {step} ({what}); {advice}")
        record = {"split": "train", "loss": loss, "grad_norm": grad_norm,
                  "elapsed": round(self.counters.elapsed, 3)}  # fmt: skip
        if policy == "stop":
            self.metrics.write({"step": step, **record, "diverged": True})
            self.request_stop("diverged")
            return None
        self._skipped += 1
        if self._skipped > MAX_SKIPS:
            raise RnnkitError(f"{MAX_SKIPS} steps in a row were not finite ({what}); {advice}")
        warnings.warn(f"step {step} skipped: not finite ({what}); weights unchanged", stacklevel=2)
        self.carried = None  # a state from a non-finite step is not carried on
        record = {"step": step + 1, **record, "skipped": True}
        self.metrics.write(record)
        return record

    def _nonfinite_eval(self, step: int, result: dict[str, float]) -> None:
        """A validation loss that is NaN/inf at ``step``: as ``on_nonfinite`` says, raise, or
        stop without saving these weights, or (skip) go on; never kept as the best model."""
        what = f"validation {' '.join(f'{k} {v}' for k, v in result.items())} at step {step}"
        policy = self.config.on_nonfinite
        if policy == "raise":
            raise RnnkitError(f"{what} is not finite; the last checkpoint is intact")
        if policy == "stop":
            self.request_stop("diverged")
        else:
            warnings.warn(f"{what} is not finite; not kept as the best model", stacklevel=3)

    def learning_rate(self, step: int, elapsed: float) -> float:
        """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``
        over the step budget (max_steps / max_epochs), or over ``max_time`` seconds when there
        is no step budget."""
        cfg = self.config
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return cfg.lr
        if self.total_steps is not None:
            span = max(1, self.total_steps - cfg.warmup_steps - 1)  # last step at the floor
            t = min(1.0, (step - cfg.warmup_steps) / span)
        else:
            t = min(1.0, elapsed / cfg.max_time)
        return cfg.lr * (
            cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        )

    def _evaluate(self, progress: Progress, board, full: bool) -> dict[str, float]:
        """Evaluate (RNG-neutral), log, track the best model and early stopping."""
        c, cfg = self.counters, self.config
        self.model.eval()
        leave = boundary(self.model, self.device)  # the task's CPU tensors reach the device
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                result = {k: float(v) for k, v in self.task.evaluate(self.model, full).items()}
        finally:
            leave()
        if "loss" not in result:
            raise TypeError(f"{type(self.task).__name__}.evaluate must return a 'loss'")
        record = {"step": c.step, "split": "valid", **result, "elapsed": round(c.elapsed, 3)}
        if full:
            record["final"] = True
        self.metrics.write(record)
        if not math.isfinite(result["loss"]) or not math.isfinite(result.get(cfg.monitor, 0.0)):
            self._nonfinite_eval(c.step, result)
        if board is not None:
            for key, value in result.items():
                board.add_scalar(f"valid/{key}", value, c.step)
        shown = " ".join(f"{k} {v:.4f}" for k, v in result.items())
        progress.message(f"step {c.step} {'final ' if full else ''}validation {shown}")
        if full:  # the final evaluation may use more data: not comparable with the best
            pass
        elif self._improves(result):
            c.best_loss, c.bad_evals = result[cfg.monitor], 0
            meta = {"step": c.step, **result}
            if self.world.writer:
                self._best_bytes = ckpt.tensors_to_bytes(self.model.state_dict(), meta)
        else:
            c.bad_evals += 1
            if cfg.patience is not None and c.bad_evals >= cfg.patience:
                progress.message(f"early stopping: no improvement in {c.bad_evals} evaluations")
                self.request_stop("early_stopping")
        self._plot()
        return result

    def _improves(self, result: dict[str, float]) -> bool:
        """Whether ``result`` beats the best evaluation so far by ``min_delta`` (``monitor``)."""
        cfg, best = self.config, self.counters.best_loss
        if cfg.monitor not in result:
            raise RnnkitError(f"cannot monitor {cfg.monitor!r}: the evaluation reports "
                              f"{', '.join(sorted(result))}")  # fmt: skip
        value = result[cfg.monitor]
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        if cfg.monitor_mode == "min":
            return value < best - cfg.min_delta
        return value > best + cfg.min_delta

    def _log_train(self, record: dict[str, Any], progress: Progress, board) -> None:
        record["threads"] = torch.get_num_threads()  # changes where the CLI adapts them
        self.metrics.write(record)
        if board is not None:
            for key in ("loss", "lr", "grad_norm"):
                board.add_scalar(f"train/{key}", record[key], record["step"])
        shown = {"loss": record["loss"], "tok/s": round(record["tokens_per_s"]),
                 "lr": record["lr"], "gnorm": record["grad_norm"]}  # fmt: skip
        progress.update(record["step"], record["elapsed"], shown)

    def _plot(self) -> None:
        if not self.world.writer:
            return
        plot_loss_curve(self.metrics.read(), self.run_dir / "loss.png", title=self.task.name)

    def _install_sigint(self, progress: Progress) -> Callable[[], None]:
        """Ctrl-C (or SIGTERM) in a step (`fit` sets ``_in_step``): finish the step, save, stop.
        Outside one (an evaluation, the first step), or once a stop is requested: abort at once
        (KeyboardInterrupt naming the signal, e.g. "SIGTERM"; the CLI exits 130 or 143)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._in_step = False

        def handler(signum, frame):
            if not self._in_step or self._stop_reason is not None:
                raise KeyboardInterrupt(signal.Signals(signum).name)
            progress.message(
                "interrupted: saving a checkpoint after this step (Ctrl-C again aborts)"
            )
            self.request_stop("interrupted")

        for sig in previous:
            signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore


class _Window:
    """Accumulates step records between two train log lines."""

    def __init__(self) -> None:
        self.steps, self.records, self.t0 = 0, [], time.perf_counter()

    def add(self, record: dict[str, Any]) -> None:
        if record.get("skipped"):  # logged on its own, not averaged into the loss
            return
        self.steps += 1
        self.records.append(record)

    def flush(self, elapsed: float) -> dict[str, Any]:
        rs, last = self.records, self.records[-1]
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        out = {"step": last["step"], "split": "train", "lr": last["lr"],
               "grad_norm": last["grad_norm"], "elapsed": round(elapsed, 3),
               "grad_norm_max": max(r["grad_norm"] for r in rs),
               "clipped": sum(r["clipped"] for r in rs),
               "tokens_per_s": sum(r["tokens"] for r in rs) / seconds}  # fmt: skip
        skip = {"step", "lr", "grad_norm", "clipped", "tokens"}
        for key in rs[-1]:
            if key not in skip:
                out[key] = sum(float(r[key]) for r in rs) / len(rs)
        self.steps, self.records, self.t0 = 0, [], time.perf_counter()
        return out


def _tensorboard(run_dir: Path):
    return _summary_writer()(str(run_dir / "tensorboard"))


def _summary_writer():
    """torch's TensorBoard `SummaryWriter` class; RnnkitError if the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RnnkitError(
            "TensorBoard logging needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter
