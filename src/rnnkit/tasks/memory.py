"""Long-term memory problems: the adding problem and copy memory (Arjovsky et al. 2016).

Data: generated on the fly (`rnnkit.data.synthetic`); training batches come from the trainer's
generator, the validation and test sets from fixed seeds of their own (``valid_size`` and
``test_size`` sequences), so every run is scored on the same sequences.

- ``adding``: x (T, B, 2) -> the sum of the two marked values. Model: `ManyToOne` (a recurrent
  layer, a linear head on its final state). Loss and metric: mean squared error; always
  answering 1 scores 1/6 = 0.167. Also ``accuracy``: the fraction of sequences answered within
  0.04 (Hochreiter & Schmidhuber 1997's criterion).
- ``copy``: T + 20 tokens in, T + 20 out; the last 10 outputs must repeat the first 10 inputs.
  Model: `SequenceModel` on one-hot inputs, 9 classes out (blank and the 8 symbols). Loss:
  cross-entropy per step in nats over all T + 20 steps (memoryless baseline 10 ln 8 / (T + 20));
  ``accuracy``: the fraction of the 10 recalled symbols that are right (chance 1/8).

Cells (``cell``): "rnn" (Elman, tanh), "irnn" (relu, identity init; Le et al. 2015), "lstm",
"gru" (`rnnkit.models.backbone.CELLS`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.data.synthetic import ADDING_BASELINE_MSE, adding_problem, copy_baseline, copy_memory
from rnnkit.errors import RnnkitError
from rnnkit.layers import IMPLS
from rnnkit.models.backbone import CELLS
from rnnkit.models.classifier import ManyToOne
from rnnkit.models.sequence import SequenceModel
from rnnkit.tasks.common import format_fit, settings_from_dict
from rnnkit.tasks.spec import Flag, TaskSpec
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.options import TRAIN_KEYS, choice, flag_of, merge_settings, parse_duration
from rnnkit.training.trainer import FitResult, StepOutput, TrainConfig, Trainer

PROBLEMS = ("adding", "copy")
SYMBOLS, CATEGORIES = 10, 8  # copy memory: 10 symbols from 8 categories
SOLVED_MSE = 0.01  # the adding problem counts as solved below this test MSE
EVAL_CHUNK = 1000  # sequences per forward pass in evaluation
VALID_SEED, TEST_SEED = 1_000_003, 2_000_003
DEFAULT_T = {"adding": 200, "copy": 100}


@dataclass
class MemoryConfig:
    """Everything that rebuilds a memory task and its model (stored in config.json).

    Attributes:
        problem: adding or copy.
        T: Sequence length (the delay).
        cell: rnn: Elman tanh; irnn: relu + identity init; lstm; gru.
        hidden: Hidden units.
        layers: Recurrent layers.
        batch: Sequences per step.
        forget_bias: LSTM forget-gate bias at init; none: the layer's.
        impl: The recurrence's implementation: rnnkit's BPTT engine, torch's kernel, or auto.
        valid_size: Validation sequences.
        test_size: Test sequences.
    """

    problem: str = "adding"
    T: int = 200
    cell: str = choice("lstm", tuple(CELLS))
    hidden: int = 64
    layers: int = 1
    batch: int = 50
    forget_bias: float | None = None
    impl: str = choice("auto", IMPLS)
    valid_size: int = 1000
    test_size: int = 10000

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MemoryConfig:
        """Refuses unknown keys and values of the wrong type (TOML files, config.json)."""
        return settings_from_dict(cls, values, str(values.get("problem", "memory-task")))

    def check(self) -> None:
        if self.problem not in PROBLEMS:
            raise RnnkitError(f"problem must be one of {', '.join(PROBLEMS)}, got {self.problem!r}")
        if self.cell not in CELLS:
            raise RnnkitError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.forget_bias is not None and self.cell != "lstm":
            raise RnnkitError(f"--forget-bias is an LSTM setting; the cell is {self.cell!r}")
        least = 2 if self.problem == "adding" else 1
        for name, low in (
            ("T", least),
            ("hidden", 1),
            ("layers", 1),
            ("batch", 1),
            ("valid_size", 1),
            ("test_size", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise RnnkitError(f"{name} must be an integer >= {low}, got {value!r}")


#: training defaults of `rnnkit train adding` and `rnnkit train copy` (AdamW, clipping at 1)
DEFAULT_TRAIN = TrainConfig(
    lr=1e-2,
    weight_decay=0.0,
    warmup_steps=50,
    clip=1.0,
    max_steps=3000,
    eval_every=100,
    log_every=10,
)
#: default peak learning rate by cell. With 1e-2 (and clipping) LSTM and GRU leave the adding
#: problem's plateau at T=200 within about 2000 steps (at 3e-3 LSTM was still on it after 3000);
#: IRNN gets a small one, as Le et al. (2015) advise; even so its gradient explodes now and then.
DEFAULT_LR = {"rnn": 1e-2, "irnn": 2e-4, "lstm": 1e-2, "gru": 1e-2}


class MemoryTask:
    """The adding or copy problem as a trainer task (see `rnnkit.training.trainer`)."""

    steps_per_epoch = None  # batches are drawn freely

    def __init__(self, config: MemoryConfig) -> None:
        config.check()
        self.cfg = config
        self.name = config.problem
        self._sets: dict[str, tuple[Tensor, Tensor]] = {}

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def save_assets(self, run_dir: Path) -> None:
        """Nothing besides config.json: the data are regenerated from their seeds."""

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def generate(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(x, y) of ``batch`` fresh sequences; shapes in `rnnkit.data.synthetic`."""
        if self.cfg.problem == "adding":
            return adding_problem(batch, self.cfg.T, generator)
        return copy_memory(batch, self.cfg.T, SYMBOLS, CATEGORIES, generator)

    def train_batch(self, step: int, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.generate(self.cfg.batch, rng)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor], state: Any) -> StepOutput:
        x, y = batch
        loss = batch_loss(model, x, y, self.cfg.problem)
        return StepOutput(loss, tokens=x.shape[0] * x.shape[1])

    def grad_metrics(self, model: nn.Module) -> dict[str, float]:
        """``grad_norm_hh``: norm of the gradient of the recurrent weights (before clipping)."""
        grads = [p.grad for n, p in model.named_parameters() if "weight_hh" in n]
        grads = [g for g in grads if g is not None]
        return {"grad_norm_hh": float(torch.stack([g.norm() for g in grads]).norm())}

    def dataset(self, split: str) -> tuple[Tensor, Tensor]:
        """The fixed "valid" or "test" set (regenerated from its seed, cached)."""
        if split not in self._sets:
            size, seed = {
                "valid": (self.cfg.valid_size, VALID_SEED),
                "test": (self.cfg.test_size, TEST_SEED),
            }[split]
            self._sets[split] = self.generate(size, torch.Generator().manual_seed(seed))
        return self._sets[split]

    def evaluate(self, model: nn.Module, full: bool) -> dict[str, float]:
        """Validation metrics (``full``: on the test set): loss, accuracy, baseline."""
        return evaluate(model, *self.dataset("test" if full else "valid"), self.cfg.problem)


def build_model(cfg: MemoryConfig) -> nn.Module:
    """Adding: `ManyToOne` (2 -> 1). Copy: `SequenceModel` on one-hot tokens (10 -> 9 classes)."""
    options = {} if cfg.forget_bias is None else {"forget_bias": cfg.forget_bias}
    if cfg.problem == "adding":
        return ManyToOne(cfg.cell, 2, cfg.hidden, 1, cfg.layers, impl=cfg.impl, **options)
    return SequenceModel(
        cfg.cell, CATEGORIES + 2, cfg.hidden, CATEGORIES + 1, cfg.layers, impl=cfg.impl, **options
    )


def batch_loss(model: nn.Module, x: Tensor, y: Tensor, problem: str) -> Tensor:
    """Adding: MSE of the (B,) answers. Copy: mean cross-entropy (nats) over (T + 20, B) steps."""
    if problem == "adding":
        return nn.functional.mse_loss(model(x).squeeze(-1), y)
    logits, _ = model(one_hot(x, _dtype(model)))  # (T + 20, B, 9)
    return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def one_hot(tokens: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Copy-memory tokens (T, B) int64 -> (T, B, 10) one-hot features."""
    return nn.functional.one_hot(tokens, CATEGORIES + 2).to(dtype)


def _dtype(model: nn.Module) -> torch.dtype:
    """The model's floating-point type (float32 if it has no parameters)."""
    return next((p.dtype for p in model.parameters()), torch.float32)


def baseline(cfg: MemoryConfig) -> float:
    """The memoryless loss: 1/6 (adding) or 10 ln 8 / (T + 20) (copy)."""
    return ADDING_BASELINE_MSE if cfg.problem == "adding" else copy_baseline(cfg.T)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, problem: str) -> dict[str, float]:
    """``loss`` (MSE or nats/step), ``accuracy`` and ``baseline`` over a whole set, in chunks.

    x, y as from `MemoryTask.generate`, with the batch on dimension 1 (N sequences).
    """
    sums = _adding_sums if problem == "adding" else _copy_sums
    total, hits, n = 0.0, 0.0, x.shape[1]
    for i in range(0, n, EVAL_CHUNK):
        chunk = slice(i, i + EVAL_CHUNK)
        loss_sum, hit_sum = sums(model, x[:, chunk], y[chunk] if y.dim() == 1 else y[:, chunk])
        total, hits = total + loss_sum, hits + hit_sum
    base = ADDING_BASELINE_MSE if problem == "adding" else copy_baseline(x.shape[0] - 2 * SYMBOLS)
    return {"loss": total / n, "accuracy": hits / n, "baseline": base}


def _adding_sums(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Sum over the batch of the squared errors, and of the answers within 0.04."""
    error = model(x).squeeze(-1) - y  # (B,)
    return float((error**2).sum()), float((error.abs() < 0.04).sum())


def _copy_sums(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Sum over the batch of the mean cross-entropy per step, and of the fraction of the 10
    recalled symbols that are right."""
    logits, _ = model(one_hot(x, _dtype(model)))  # (T + 20, B, 9)
    ce = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
    recall = slice(y.shape[0] - SYMBOLS, None)
    right = (logits[recall].argmax(-1) == y[recall]).float().mean(0)  # (B,)
    return float(ce) / y.shape[0], float(right.sum())


# --- rebuilding a run, and what the command line calls ---------------------------------------

TASK_KEYS = {f.name for f in fields(MemoryConfig)} - {"problem"}


def load_task(run_dir: str | Path) -> MemoryTask:
    """The task of an adding or copy run directory, rebuilt from its config.json."""
    config = ckpt.read_config(run_dir)
    if config.get("task") not in PROBLEMS:
        raise RnnkitError(f"{run_dir} is a {config.get('task')!r} run, not adding or copy")
    return MemoryTask(MemoryConfig.from_dict(config["task_config"]))


def train(
    problem: str,
    flags: dict[str, Any],
    config_file: str | None = None,
    out: str | None = None,
    resume: str | None = None,
    threads: int | None = None,
) -> FitResult:
    """Train (or resume) ``problem`` ("adding" or "copy") from command-line ``flags`` (None: not
    given), a TOML ``config_file`` and the defaults (`DEFAULT_TRAIN`, `DEFAULT_LR`);
    ``threads`` sets torch's CPU threads for this process (None: leave them)."""
    if threads is not None:
        if threads < 1:
            raise RnnkitError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    values = merge_settings(config_file, flags, TASK_KEYS | set(TRAIN_KEYS))
    if "max_time" in values:
        values["max_time"] = parse_duration(values["max_time"])
    task_values = {k: v for k, v in values.items() if k in TASK_KEYS}
    train_values = {TRAIN_KEYS[k]: v for k, v in values.items() if k in TRAIN_KEYS}
    if resume is not None:
        task = load_task(resume)
        if task.name != problem:
            raise RnnkitError(
                f"{resume} is a {task.name!r} run; resume it with `rnnkit train "
                f"{task.name} --resume {resume}`"
            )
        for key, value in task_values.items():
            if getattr(task.cfg, key) != value:
                raise RnnkitError(
                    f"cannot change {flag_of(key)} when resuming (the run has "
                    f"{getattr(task.cfg, key)!r}); start a new run instead"
                )
        saved = ckpt.read_config(resume)["train"]
        return Trainer(
            task, TrainConfig.from_dict({**saved, **train_values}), resume, resume=True
        ).fit()
    task_values.setdefault("T", DEFAULT_T[problem])
    task = MemoryTask(MemoryConfig.from_dict({"problem": problem, **task_values}))
    defaults = {**asdict(DEFAULT_TRAIN), "lr": DEFAULT_LR[task.cfg.cell]}
    config = TrainConfig.from_dict({**defaults, **train_values})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = (
        Path(out) if out else Path("runs") / f"{problem}-T{task.cfg.T}-{task.cfg.cell}-{stamp}"
    )
    return Trainer(task, config, run_dir).fit()


HELP = {
    "adding": "Always answering 1 scores MSE 0.167; solved means test MSE < 0.01.",
    "copy": "The memoryless baseline is 10 ln 8 / (T + 20) nats per step.",
}
EXAMPLES = {
    "adding": ("rnnkit train adding --cell lstm --T 200",
               "rnnkit train adding --cell rnn --T 200 --clip 0 --out runs/adding-rnn-noclip"),
    "copy": ("rnnkit train copy --T 100", "rnnkit train copy --cell gru --T 100 --max-time 10m"),
}  # fmt: skip


def _spec(problem: str) -> TaskSpec:
    lrs = "; ".join(f"{cell}: {lr:g}" for cell, lr in DEFAULT_LR.items())
    return TaskSpec(problem, HELP[problem], MemoryConfig, DEFAULT_TRAIN,
                    functools.partial(train, problem), format_fit, internal=("problem",),
                    shown={"T": str(DEFAULT_T[problem]), "lr": lrs},
                    extras=(Flag("threads", "Torch CPU threads.  [default: torch's]", int),),
                    examples=EXAMPLES[problem],
                    out=f"runs/{problem}-TT-CELL-DATE-TIME")  # fmt: skip


SPECS = {problem: _spec(problem) for problem in PROBLEMS}
