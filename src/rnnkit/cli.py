"""The `rnnkit` command line: parses arguments and dispatches to tasks; no logic of its own."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import warnings

import click

from rnnkit.errors import RnnkitError


class _Group(click.Group):
    """A click group that turns an `RnnkitError` into one line on stderr and exit status 2,
    Ctrl-C (or a SIGTERM that training turned into KeyboardInterrupt("SIGTERM")) into
    "interrupted" and status 130 (143), and shows warnings (e.g. notes dropped from a MIDI
    file) as one line each."""

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except RnnkitError as err:
            click.echo(f"error: {' '.join(str(err).splitlines())}", err=True)  # one line
            sys.exit(2)
        except KeyboardInterrupt as err:
            click.echo("interrupted", err=True)
            sys.exit(143 if err.args == ("SIGTERM",) else 130)  # 128 + the signal's number


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


#: the types of options naming a file or a folder (no existence check: the commands say what
#: is missing in their own words)
_FILE = click.Path(dir_okay=False)
_DIR = click.Path(file_okay=False)

_ON_NONFINITE = click.option(
    "--on-nonfinite",
    type=click.Choice(["raise", "stop", "skip"]),
    help="A NaN/inf loss or gradient: error, stop keeping the last checkpoint, or skip the "
    "step with a warning.  [default: raise]",
)


def _precision_option(default: str = "fp32"):
    """The ``--precision`` flag, its help showing the task's ``default``."""
    return click.option(
        "--precision",
        type=click.Choice(["fp32", "bf16", "fp16", "auto"]),
        help="bf16: the training forward pass in bfloat16 (about 2x faster on CPUs with AMX or "
        "AVX-512 BF16); fp16 (CUDA): float16 with a gradient scaler; auto: bf16 where the "
        f"hardware has it, else fp16 on CUDA.  [default: {default}]",
    )


@contextlib.contextmanager
def predicting_on(device: str | None):
    """Trained models loaded in this block live on ``device`` (`--device` of a predict command;
    None: the CPU). torch is imported only when a device is named."""
    if device is None:
        yield
        return
    from rnnkit.training.devices import predicting_on as place

    with place(device):
        yield


def _device_option(default: str = "auto", what: str = "Train"):
    """The ``--device`` flag of the training and predict commands (checked when used: a device
    this machine lacks is one line and exit 2)."""
    return click.option(
        "--device",
        metavar="auto|cpu|cuda|mps",
        help=f"{what} on this device (cuda:N for a given GPU); auto: CUDA, else MPS, else the "
        f"CPU.  [default: {default}]",
    )


@click.group(
    cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True}
)
@click.version_option(package_name="rnnkit")
def main() -> None:
    """rnnkit: recurrent neural networks, from your sequence data to a trained model.

    \b
    Examples:
      rnnkit demo                      # the long-term memory lab, ~5 minutes
    """
    # an application may tune its process: malloc keeps the loops' buffers (rnnkit.tune_process)
    os.environ.setdefault("RNNKIT_MALLOC", "tuned")
    # and trainers may change torch's thread count with the machine's load (training.threads)
    os.environ.setdefault("RNNKIT_THREADS", "adapt")


@main.group(cls=_Group, invoke_without_command=True)
@click.option("--resume", "resume_run", metavar="RUN", help="Continue RUN, whatever its task.")
@click.pass_context
def train(ctx: click.Context, resume_run: str | None) -> None:
    """Train a model for one task; each task is a subcommand.

    \b
    Examples:
      rnnkit train charlm --text notes.txt --out runs/notes
      rnnkit train --resume runs/notes      # after a kill, a full disk, Ctrl-C...
    """
    if ctx.invoked_subcommand is not None:
        if resume_run is not None:
            raise RnnkitError("give --resume after the task (rnnkit train TASK --resume RUN)")
        return
    if resume_run is None:
        click.echo(ctx.get_help())
        return
    from rnnkit.training.checkpoint import read_config

    task = read_config(resume_run).get("task")
    command = train.commands.get(task) if isinstance(task, str) else None
    if command is None:
        raise RnnkitError(f"{resume_run} is a {task!r} run, which `rnnkit train` cannot resume")
    ctx.invoke(command, resume=resume_run)


# --- charlm, sample, eval (issue 10) -----------------------------------------------------------


@train.command("charlm")
@click.option("--text", help="Text file to learn (or a data set: tiny-shakespeare): the first "
              "90% trains, the last 10% validates.")  # fmt: skip
@click.option(
    "--config", "config_file", type=_FILE, help="TOML file of settings named like the flags."
)
@click.option("--out", type=_DIR, help="Run directory to create.  [default: runs/charlm-DATE-TIME]")
@click.option(
    "--resume", type=_DIR, help="Continue the run in this directory from its last checkpoint."
)
@click.option("--unit", type=click.Choice(["char", "word"]), help="Token unit.  [default: char]")
@click.option("--encoding", help="Encoding of the text file.  [default: utf-8]")
@click.option("--cell", type=click.Choice(["lstm", "gru", "rnn"]), help="[default: lstm]")
@click.option("--hidden", type=int, help="Hidden units per layer.  [default: 512]")
@click.option("--layers", type=int, help="Recurrent layers.  [default: 3]")
@click.option("--embed", type=int, help="Embedding size.  [default: 128]")
@click.option("--dropout", type=float, help="Dropout.  [default: 0.3]")
@click.option(
    "--weight-dropout",
    type=float,
    help="DropConnect on the recurrent weights (runs rnnkit's engine, not torch's kernel).  "
    "[default: 0]",
)
@click.option(
    "--locked-dropout/--no-locked-dropout",
    default=None,
    help="One dropout mask per sequence, the same at every step.  [default: off]",
)
@click.option("--seq-len", type=int, help="Time steps per training window.  [default: 128]")
@click.option("--batch", type=int, help="Sequences per step.  [default: 64]")
@click.option(
    "--batching",
    type=click.Choice(["random", "stream"]),
    help="random windows, or stream: truncated BPTT carrying the state.  [default: random]",
)
@click.option("--impl", type=click.Choice(["auto", "bptt", "torch"]), help="[default: auto]")
@click.option("--lr", type=float, help="Peak learning rate (AdamW).  [default: 0.003]")
@click.option("--clip", type=float, help="Clip the gradient norm; 0: off.  [default: 1.0]")
@click.option("--warmup", type=int, help="Warm-up steps.  [default: 20]")
@click.option("--max-time", help="Time budget: 900, 90s, 15m, 1h.  [default: 15m]")
@click.option("--max-steps", type=int, help="Step budget.")
@click.option("--max-epochs", type=float, help="Epoch budget.")
@click.option("--eval-every", type=int, help="Steps between evaluations.  [default: 100]")
@click.option("--log-every", type=int, help="Steps between log lines.  [default: 10]")
@click.option("--patience", type=int, help="Stop after this many evaluations without progress.")
@click.option("--checkpoint-every", type=int, help="Steps between checkpoints.  [default: eval]")
@_ON_NONFINITE
@click.option("--seed", type=int, help="Random seed.  [default: 0]")
@click.option("--progress", type=click.Choice(["auto", "bar", "log", "none"]))
@click.option("--tensorboard/--no-tensorboard", default=None, help="Also log to TensorBoard.")
@_precision_option("auto")
@_device_option()
def train_charlm(config_file: str | None, out: str | None, resume: str | None, **flags) -> None:
    """Train a character-level (or --unit word) language model on a text file.

    Ctrl-C saves a checkpoint and stops; --resume continues exactly where it stopped.

    \b
    Examples:
      rnnkit data fetch tiny-shakespeare            # once: the data set, sha256 checked
      rnnkit train charlm --text tiny-shakespeare --out runs/shakespeare
      rnnkit train charlm --text notes.txt --cell gru --hidden 256 --max-time 5m
      rnnkit train charlm --config charlm.toml --seed 2     # flags override the file
      rnnkit train charlm --resume runs/shakespeare --max-time 20m
    """
    from rnnkit.tasks import charlm

    _report_fit(charlm.train(flags, config_file, out, resume))


def _report_fit(result) -> None:
    """Print how training ended; Ctrl-C exits with status 130 after the checkpoint is saved."""
    minutes, seconds = divmod(round(result.elapsed), 60)
    click.echo(f"{result.stop_reason}: {result.step} steps in {minutes}m{seconds:02d}s; run in "
               f"{result.run_dir}")  # fmt: skip
    if result.final:
        click.echo("validation: " + "  ".join(f"{k} {v:.4f}" for k, v in result.final.items()))
    if result.stop_reason == "interrupted":
        click.echo(f"checkpoint saved; continue with --resume {result.run_dir}", err=True)
        sys.exit(130)


def _task_of(run: str, function: str):
    """The task module of a run directory, checked to offer ``function``."""
    from rnnkit.tasks import task_module
    from rnnkit.training.checkpoint import read_config

    name = read_config(run).get("task")
    module = task_module(name)
    if not hasattr(module, function):
        raise RnnkitError(f"{run} is a {name!r} run, which `rnnkit {function}` does not handle")
    return module


@main.command()
@click.argument("run", type=_DIR)
@click.option("--prompt", help="Text to start from (echoed).  [default: a line break]")
@click.option("--length", default=500, show_default=True, help="Tokens to generate.")
@click.option("--temperature", default=0.8, show_default=True, help="0: always the likeliest.")
@click.option(
    "--top-k", default=40, show_default=True, help="Sample among the k likeliest; 0: all."
)
@click.option("--top-p", type=float, help="Sample within the nucleus of probability p.")
@click.option("--seed", default=1, show_default=True, help="Seed: same seed, same text.")
@click.option(
    "--checkpoint", type=click.Choice(["last", "best"]), default="last", show_default=True
)
@_device_option("cpu", "Predict")
def sample(run: str, prompt, length, temperature, top_k, top_p, seed, checkpoint, device) -> None:
    """Generate text from a trained RUN, printing it as it is drawn.

    \b
    Examples:
      rnnkit sample runs/shakespeare --prompt "ROMEO:" --length 500
      rnnkit sample runs/shakespeare --temperature 0.5 --top-k 0 --top-p 0.9 --seed 7
    """
    module = _task_of(run, "sample")
    with predicting_on(device):
        pieces = module.sample(run, prompt, length, temperature, top_k or None, top_p, seed,
                               checkpoint)  # fmt: skip
        for piece in pieces:
            click.echo(piece, nl=False)
    click.echo()


def _named_data(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A file or folder option that also takes a data set of the registry: ``jsb-chorales``
    (its main file) or ``nab/realKnownCause/nyc_taxi.csv`` (a file in it)."""
    if not value:
        return value
    from rnnkit.data import registry

    return registry.resolve(value)


@main.command("eval")
@click.argument("run", type=_DIR)
@click.option("--text", callback=_named_data, help="charlm: the text file to score (required).")
@click.option("--encoding", help="charlm: encoding of the text file.  [default: utf-8]")
@click.option("--data", callback=_named_data,
              help="music: a JSON file or MIDI folder to score.  [default: the run's]")  # fmt: skip
@click.option(
    "--split",
    type=click.Choice(["all", "train", "valid", "test"]),
    help="charlm: all of the file, or its validation part as cut in training [default: all]; "
    "music: the split to score [default: test].",
)
@click.option(
    "--checkpoint",
    type=click.Choice(["last", "best"]),
    help="[default: charlm last, music best (the best validation loss)]",
)
@_device_option("cpu", "Predict")
def eval_(run: str, device: str | None, **options) -> None:
    """Score data with a trained RUN, by its task: charlm, loss in nats and bits per token;
    music, negative log-likelihood per frame.

    \b
    Examples:
      rnnkit eval runs/shakespeare --text tiny-shakespeare --split valid
      rnnkit eval runs/chorales                  # music: NLL per frame on the test split
    """
    module = _task_of(run, "evaluate_file")
    with predicting_on(device):
        click.echo(module.eval_report(run, _call_task(module.evaluate_file, run, options)))


def _call_task(function, run: str, options: dict):
    """``function(run, **options)`` with the options given (not None). An option the run's task
    does not take, or one it needs and was not given, is a one-line error."""
    import inspect

    from rnnkit.training.checkpoint import read_config

    task = read_config(run).get("task")
    params = list(inspect.signature(function).parameters.values())[1:]
    given = {k: v for k, v in options.items() if v is not None}
    for name in given:
        if name not in {p.name for p in params}:
            raise RnnkitError(f"--{name.replace('_', '-')} does not apply to a {task!r} run")
    for p in params:
        if p.default is inspect.Parameter.empty and p.name not in given:
            raise RnnkitError(f"a {task!r} run needs --{p.name.replace('_', '-')}")
    return function(run, **given)


# --- adding, copy, demo, diagnose (issue 3) -----------------------------------------------------


def _memory_options(default_t: int):
    """The flags shared by `rnnkit train adding` and `rnnkit train copy`."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=_FILE,
            help="TOML file of settings named like the flags.",
        ),
        click.option(
            "--out", type=_DIR, help="Run directory to create.  [default: runs/TASK-T-CELL-DATE]"
        ),
        click.option("--resume", type=_DIR, help="Continue the run in this directory."),
        click.option(
            "--cell",
            type=click.Choice(["rnn", "irnn", "lstm", "gru"]),
            help="rnn: Elman tanh; irnn: relu + identity init.  [default: lstm]",
        ),
        click.option(
            "--T", "T", type=int, help=f"Sequence length (delay).  [default: {default_t}]"
        ),
        click.option("--hidden", type=int, help="Hidden units.  [default: 64]"),
        click.option("--layers", type=int, help="Recurrent layers.  [default: 1]"),
        click.option("--batch", type=int, help="Sequences per step.  [default: 50]"),
        click.option("--forget-bias", type=float, help="LSTM forget-gate bias at init."),
        click.option("--impl", type=click.Choice(["auto", "bptt", "torch"])),
        click.option("--test-size", type=int, help="Test sequences.  [default: 10000]"),
        click.option(
            "--lr", type=float, help="Peak learning rate (AdamW).  [default: 0.01; irnn: 0.0002]"
        ),
        click.option("--clip", type=float, help="Clip the gradient norm; 0: off.  [default: 1.0]"),
        click.option("--warmup", type=int, help="Warm-up steps.  [default: 50]"),
        click.option("--max-steps", type=int, help="Step budget.  [default: 3000]"),
        click.option("--max-time", help="Time budget: 600, 90s, 10m."),
        click.option("--eval-every", type=int, help="Steps between evaluations.  [default: 100]"),
        click.option("--log-every", type=int, help="Steps between log lines.  [default: 10]"),
        click.option("--seed", type=int, help="Random seed.  [default: 0]"),
        click.option("--progress", type=click.Choice(["auto", "bar", "log", "none"])),
        click.option("--threads", type=int, help="Torch CPU threads.  [default: torch's]"),
        _device_option(),
    ]

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@train.command("adding")
@_memory_options(default_t=200)
def train_adding(config_file: str | None, out: str | None, resume: str | None, **flags) -> None:
    """The adding problem: the sum of the two marked numbers of a length-T sequence.

    Always answering 1 scores MSE 0.167; solved means test MSE < 0.01.

    \b
    Examples:
      rnnkit train adding --cell lstm --T 200
      rnnkit train adding --cell rnn --T 200 --clip 0 --out runs/adding-rnn-noclip
    """
    from rnnkit.tasks import memory

    threads = flags.pop("threads")
    _report_fit(memory.train("adding", flags, config_file, out, resume, threads))


@train.command("copy")
@_memory_options(default_t=100)
def train_copy(config_file: str | None, out: str | None, resume: str | None, **flags) -> None:
    """Copy memory: repeat 10 symbols after a delay of T blanks.

    The memoryless baseline is 10 ln 8 / (T + 20) nats per step.

    \b
    Examples:
      rnnkit train copy --T 100
      rnnkit train copy --cell gru --T 100 --max-time 10m
    """
    from rnnkit.tasks import memory

    threads = flags.pop("threads")
    _report_fit(memory.train("copy", flags, config_file, out, resume, threads))


@main.command()
@click.option(
    "--out",
    type=_DIR,
    help="Directory for the four runs and the figures.  [default: runs/demo-DATE]",
)
@click.option("--quick", is_flag=True, help="A tiny version that runs in well under a minute.")
@click.option("--T", "T", type=int, help="Sequence length.  [default: 150; --quick: 20]")
@click.option("--steps", type=int, help="Most steps per network.  [default: 3000; --quick: 40]")
@click.option("--threads", default=1, show_default=True, help="Torch CPU threads.")
def demo(out: str | None, quick: bool, T: int | None, steps: int | None, threads: int) -> None:
    """The long-term memory lab: Elman, IRNN, LSTM and GRU on the adding problem.

    Prints a table (test MSE against the 0.167 baseline, solved or not, time) and writes the
    loss curves and the gradient-flow figure as PNG files. About 5 minutes on a 2-core CPU.

    \b
    Examples:
      rnnkit demo
      rnnkit demo --quick --out /tmp/demo
    """
    import time as _time

    from rnnkit.tasks.memory_demo import run_demo

    out = out or f"runs/demo-{_time.strftime('%Y%m%d-%H%M%S')}"
    run_demo(out, quick=quick, T=T, steps=steps, threads=threads, echo=click.echo)


@main.group(cls=_Group)
def diagnose() -> None:
    """Look inside trained runs: gradient flow through time, gradient norms over training."""


@diagnose.command("gradients")
@click.argument("runs", nargs=-1, required=True, type=_DIR)
@click.option(
    "--at",
    "at",
    type=click.Choice(["init", "last", "best", "both"]),
    default="both",
    show_default=True,
    help="The model at initialisation, trained, or both panels.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the batch measured.")
@click.option(
    "--out", type=_FILE, help="PNG to write.  [default: RUN/gradient_flow.png of the first RUN]"
)
def diagnose_gradients(runs: tuple[str, ...], at: str, seed: int, out: str | None) -> None:
    """||dL/dh_t|| for every step t of one batch, for one or more RUNs on one figure.

    Prints the fitted factor per step back in time (below 1: vanishing, above 1: exploding).

    \b
    Examples:
      rnnkit diagnose gradients runs/demo-*/rnn runs/demo-*/lstm --out flow.png
    """
    from rnnkit.tasks.diagnose import gradient_flow_report

    click.echo(gradient_flow_report(runs, at, seed, out))


@diagnose.command("weight-grads")
@click.argument("runs", nargs=-1, required=True, type=_DIR)
@click.option(
    "--out", type=_FILE, help="PNG to write.  [default: RUN/weight_grads.png of the first RUN]"
)
def diagnose_weight_grads(runs: tuple[str, ...], out: str | None) -> None:
    """The recurrent weights' gradient norm (before clipping) and the loss over training.

    Reads grad_norm_hh from each RUN's metrics.jsonl (adding and copy runs log it).

    \b
    Examples:
      rnnkit diagnose weight-grads runs/rnn-clip runs/rnn-noclip --out clipping.png
    """
    from rnnkit.tasks.diagnose import weight_gradient_report

    click.echo(weight_gradient_report(runs, out))


# --- forecast, detect (issue 6) ----------------------------------------------------------------


def _csv_options(function):
    """The options `forecast` and `detect` share: the CSV, its columns, gaps, the model."""
    options = [
        click.option("--csv", "csv_path", required=True, callback=_named_data,
                     help="CSV file with a time column, or a data set's (airline-passengers, "
                     "nab/realKnownCause/nyc_taxi.csv)."),
        click.option("--time-col", required=True, help="Name of the time column."),
        click.option("--target", "targets", multiple=True, help="Target column (repeatable)."),
        click.option("--fill", type=click.Choice(["refuse", "interpolate", "ffill"]),
                     default="refuse", show_default=True, help="Policy for gaps and NaN."),
        click.option("--input-chunk-length", type=int, help="Steps the network reads."),
        click.option("--cell", type=click.Choice(["lstm", "gru", "rnn"]), default="lstm",
                     show_default=True),
        click.option("--hidden-size", type=int, default=32, show_default=True),
        click.option("--num-layers", type=int, default=1, show_default=True),
        click.option("--max-steps", type=int, help="[default: forecast 1500, detect 600]"),
        click.option("--lr", type=float, help="Peak learning rate.  [default: 0.003]"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--out", type=_DIR, required=True, help="Output directory to create."),
        _device_option("auto", "Train and predict"),
    ]  # fmt: skip
    for option in reversed(options):
        function = option(function)
    return function


def _train_settings(
    max_steps: int | None, lr: float | None, seed: int, device: str | None = None
) -> dict:
    picked = {"max_steps": max_steps, "lr": lr, "seed": seed, "device": device}
    return {k: v for k, v in picked.items() if v is not None}


@main.command()
@_csv_options
@click.option("--horizon", type=int, required=True, help="Steps to forecast.")
@click.option("--covariate", "covariates", multiple=True, help="Past covariate column.")
@click.option("--mode", type=click.Choice(["direct", "autoregressive"]), default="direct",
              show_default=True)  # fmt: skip
@click.option("--likelihood", type=click.Choice(["gaussian", "none"]), default="gaussian",
              show_default=True, help="none: a point forecast, no intervals.")  # fmt: skip
@click.option("--level", type=float, default=0.9, show_default=True, help="Interval level.")
@click.option("--log", is_flag=True, help="Model the log of the targets (positive series).")
@click.option("--detrend/--no-detrend", default=True, show_default=True,
              help="Subtract each input window's mean level.")  # fmt: skip
@click.option("--calendar", multiple=True, type=click.Choice(["month", "dayofweek", "hour"]),
              help="Calendar covariate (repeatable).")  # fmt: skip
@click.option("--returns", is_flag=True, help="Forecast the log returns of a price.")
@click.option("--backtest-start", help="First rolling origin (a date): adds the backtest table.")
@click.option("--backtest-every", type=int, default=1, show_default=True)
@click.option("--season", type=int, help="Seasonal period.  [default: from the frequency]")
def forecast(csv_path, time_col, targets, horizon, out, max_steps, lr, seed, likelihood,
             input_chunk_length, device, **flags) -> None:  # fmt: skip
    """Train a forecaster on a CSV, print the forecast with intervals, write a PNG.

    \b
    Examples:
      rnnkit data fetch airline-passengers
      rnnkit forecast --csv airline-passengers --time-col Month \\
          --target Passengers --horizon 6 --log --mode autoregressive --calendar month \\
          --backtest-start 1959-01 --out runs/airline
    """
    from rnnkit.tasks import forecast as task

    if input_chunk_length is not None:
        flags["input_chunk_length"] = input_chunk_length
    report = task.run(csv_path, time_col, list(targets), horizon, out,
                      likelihood=None if likelihood == "none" else likelihood,
                      train=_train_settings(max_steps, lr, seed, device), **flags)  # fmt: skip
    click.echo(task.format_report(report))


# --- music (issue 7) ----------------------------------------------------------------------------


def _loop_options(**defaults):
    """The training-loop flags of a `rnnkit train` task (`TRAIN_KEYS`); ``defaults`` maps a flag
    (underscored) to the default its help shows, where the task's differs from the trainer's."""
    shown = {"lr": 0.002, "weight_decay": 0.01, "clip": 1.0, "warmup": 100, "max_time": "none",
             "max_steps": "none", "max_epochs": "none", "eval_every": 500, "log_every": 50,
             "patience": "none", "checkpoint_every": "every evaluation", "seed": 0,
             **defaults}  # fmt: skip
    helps = {
        "lr": "Peak learning rate (AdamW).",
        "weight_decay": "AdamW weight decay.",
        "clip": "Clip the gradient norm; 0: off.",
        "warmup": "Warm-up steps.",
        "max_time": "Time budget: 900, 90s, 15m, 1h.",
        "max_steps": "Step budget.",
        "max_epochs": "Epoch budget.",
        "eval_every": "Steps between evaluations.",
        "log_every": "Steps between log lines.",
        "patience": "Stop after this many evaluations without progress.",
        "checkpoint_every": "Steps between checkpoints.",
        "seed": "Random seed.",
    }
    types = {
        "lr": float,
        "weight_decay": float,
        "clip": float,
        "max_time": str,
        "max_epochs": float,
    }
    options = [
        click.option(
            f"--{name.replace('_', '-')}",
            type=types.get(name, int),
            help=f"{text}  [default: {shown[name]}]",
        )  # fmt: skip
        for name, text in helps.items()
    ]
    options.append(click.option("--progress", type=click.Choice(["auto", "bar", "log", "none"])))
    options.append(_ON_NONFINITE)
    options.append(_precision_option(defaults.get("precision", "fp32")))
    options.append(_device_option())
    return lambda function: functools.reduce(lambda f, opt: opt(f), reversed(options), function)


@train.command("music")
@click.option("--data", help="JSB chorales JSON (train/valid/test), a folder of MIDI files, or a "
              "data set.  [default: jsb-chorales]")  # fmt: skip
@click.option(
    "--config", "config_file", type=_FILE, help="TOML file of settings named like the flags."
)
@click.option("--out", type=_DIR, help="Run directory to create.  [default: runs/music-DATE-TIME]")
@click.option(
    "--resume", type=_DIR, help="Continue the run in this directory from its last checkpoint."
)
@click.option(
    "--head",
    type=click.Choice(["bernoulli", "nade"]),
    help="bernoulli: independent keys; nade: the keys of a frame jointly.  [default: bernoulli]",
)
@click.option("--cell", type=click.Choice(["lstm", "gru", "rnn"]), help="[default: lstm]")
@click.option("--hidden", type=int, help="Hidden units per layer.  [default: 256]")
@click.option("--layers", type=int, help="Recurrent layers.  [default: 1]")
@click.option("--dropout", type=float, help="Dropout on the recurrent outputs.  [default: 0.3]")
@click.option("--input-dropout", type=float, help="Dropout on the input frames.  [default: 0.1]")
@click.option(
    "--weight-dropout", type=float, help="DropConnect on the recurrent weights.  [default: 0.5]"
)
@click.option("--nade-hidden", type=int, help="Hidden units of the NADE head.  [default: 128]")
@click.option("--transpose", type=int, help="Random transposition, +-semitones.  [default: 0]")
@click.option("--steps-per-quarter", type=int, help="MIDI folders: frames per quarter note.")
@click.option("--batch", type=int, help="Pieces per step.  [default: 8]")
@click.option("--impl", type=click.Choice(["auto", "bptt", "torch"]), help="[default: auto]")
@_loop_options(warmup=50, max_steps=6000, eval_every=200, patience=10)
def train_music(config_file: str | None, out: str | None, resume: str | None, **flags) -> None:
    """Train a next-frame model of polyphonic music (88-key piano rolls).

    The validation loss is the negative log-likelihood per frame (nats, summed over the keys).

    \b
    Examples:
      rnnkit data fetch jsb-chorales                # once: the data set, sha256 checked
      rnnkit train music --out runs/jsb             # --data jsb-chorales
      rnnkit train music --head nade
      rnnkit train music --data my_midi_folder/ --steps-per-quarter 2 --max-time 10m
    """
    from rnnkit.tasks import music

    _report_fit(music.train(flags, config_file, out, resume))


@main.command()
@click.argument("run", type=_DIR)
@click.option(
    "--out", type=_FILE, required=True, help="MIDI file to write; the piano roll goes beside it."
)
@click.option("--frames", default=64, show_default=True, help="Frames to compose.")
@click.option("--tempo", default=80.0, show_default=True, help="Quarter notes per minute.")
@click.option(
    "--prime", type=_FILE, help="MIDI file to continue (kept at the start of the output)."
)
@click.option("--temperature", default=1.0, show_default=True, help="0: each key's likelier value.")
@click.option("--seed", default=1, show_default=True, help="Seed: same seed, same piece.")
@click.option(
    "--checkpoint", type=click.Choice(["last", "best"]), default="best", show_default=True
)
@_device_option("cpu", "Predict")
def compose(run: str, out: str, frames, tempo, prime, temperature, seed, checkpoint,
            device) -> None:  # fmt: skip
    """Compose music with a trained music RUN: a playable MIDI file and a piano-roll PNG.

    \b
    Examples:
      rnnkit compose runs/jsb --frames 64 --tempo 80 --out piece.mid
      rnnkit compose runs/jsb --prime opening.mid --frames 32 --seed 7 --out more.mid
    """
    module = _task_of(run, "compose")
    with predicting_on(device):
        made = module.compose(run, out, frames, tempo, prime, seed, temperature, checkpoint)
    click.echo(
        f"wrote {made['midi']} ({made['prime_frames']} primer + {made['frames']} composed "
        f"frames, {made['notes']} notes at {tempo:g} quarter notes per minute) and {made['png']}"
    )


@main.command()
@_csv_options
@click.option("--rows-as-steps", is_flag=True,
              help="Take the rows in file order as the steps (irregular times).")  # fmt: skip
@click.option("--windows", callback=_named_data,
              help="NAB combined_windows.json: shade and score the labelled windows.")  # fmt: skip
@click.option("--series-key", help="The series' key in --windows.  [default: FOLDER/FILE.csv]")
@click.option("--train-fraction", type=float, help="Early part that trains.  [default: 0.15]")
@click.option("--accumulate", type=int, help="Rows averaged into a score.  [default: 20]")
@click.option("--threshold", type=click.Choice(["calibrated", "dynamic", "quantile"]),
              help="Label-free rule.  [default: calibrated]")  # fmt: skip
@click.option("--p-value", type=float, help="calibrated: tail probability.  [default: 1e-6]")
@click.option("--quantile", type=float, help="quantile: of the scores.  [default: 0.999]")
@click.option("--refractory", type=int, help="Quiet rows after a detection.  [default: 300]")
def detect(csv_path, time_col, targets, out, max_steps, lr, seed, rows_as_steps, windows,
           series_key, fill, device, **flags) -> None:  # fmt: skip
    """Detect anomalies: a forecaster learns the early part, large errors are flagged.

    \b
    Examples:
      rnnkit data fetch nab
      rnnkit detect --csv nab/realKnownCause/nyc_taxi.csv \\
          --time-col timestamp --target value --rows-as-steps \\
          --windows nab/combined_windows.json --out runs/nyc
    """
    from rnnkit.tasks import anomaly

    model = {k: flags.pop(k) for k in ("cell", "hidden_size", "num_layers")}
    cfg = anomaly.DetectConfig(**{k: v for k, v in flags.items() if v is not None})
    report = anomaly.run(csv_path, time_col, list(targets), out, fill, not rows_as_steps,
                         windows, series_key, cfg, _train_settings(max_steps, lr, seed, device),
                         **model)  # fmt: skip
    click.echo(anomaly.format_report(report))


# --- sentiment, speech-digits, speech-ctc, predict, transcribe (issue 4) -----------------------


def _classifier_options(function):
    """The model flags `train sentiment` and `train speech-digits` share."""
    options = [
        click.option("--config", "config_file", type=_FILE,
                     help="TOML file of settings named like the flags."),
        click.option("--out", type=_DIR,
                     help="Run directory (or, with --cv/--loso, folder of runs)."),
        click.option("--resume", type=_DIR, help="Continue the run in this directory."),
        click.option("--cell", type=click.Choice(["lstm", "gru", "rnn"]), help="[default: lstm]"),
        click.option("--hidden", type=int, help="Hidden units per direction."),
        click.option("--layers", type=int, help="Recurrent layers."),
        click.option("--bidirectional/--unidirectional", default=None, help="[default: bi]"),
        click.option("--pooling", type=click.Choice(["last", "mean", "max", "attention"])),
        click.option("--dropout", type=float, help="Dropout (inputs, between layers, head)."),
        click.option("--batch", type=int, help="Examples per step."),
        click.option("--bucket", type=int,
                     help="Draw a batch among BUCKET x batch examples of similar length; 0: any."),
        click.option("--valid-fraction", type=float, help="Training part held out to validate."),
        click.option("--impl", type=click.Choice(["auto", "bptt", "torch"])),
    ]  # fmt: skip
    return functools.reduce(lambda f, opt: opt(f), reversed(options), function)


@train.command("sentiment")
@click.option("--data", help="MR folder (rt-polarity.pos/.neg), a CSV/TSV, a folder per class, "
              "or a data set.  [default: mr]")  # fmt: skip
@click.option("--text-col", help="CSV/TSV: the text column.  [default: text]")
@click.option("--label-col", help="CSV/TSV: the label column.  [default: label]")
@click.option("--encoding", help="Encoding of the files.  [default: utf-8]")
@click.option("--min-count", type=int, help="Keep words seen this often; others <unk>. [2]")
@click.option("--embed", type=int, help="Word embedding size.  [default: 300]")
@click.option("--word-dropout", type=float, help="Training words turned <unk> at this rate. [0]")
@click.option("--folds", type=int, help="Stratified folds.  [default: 10]")
@click.option("--fold", type=int, help="The fold that tests (one run).  [default: 0]")
@click.option("--cv", is_flag=True, help="Cross-validate: every fold tests once; mean and std.")
@_classifier_options
@_loop_options(lr=0.004, warmup=50, max_epochs=8, eval_every=60, log_every=20, patience=8)
def train_sentiment(config_file, out, resume, cv, **flags) -> None:
    """Train a sentence classifier (sentiment) on labelled texts; test on a held-out fold.

    \b
    Examples:
      rnnkit data fetch mr                          # once: the data set, sha256 checked
      rnnkit train sentiment --out runs/mr          # --data mr
      rnnkit train sentiment --cv --out runs/mr-cv
      rnnkit train sentiment --data reviews.csv --text-col review --label-col stars
    """
    from rnnkit.tasks import classify, sentiment

    result = sentiment.train(flags, config_file, out, resume, cv=cv)
    click.echo(classify.format_summary(result) if cv else classify.format_test(result))


@train.command("speech-digits")
@click.option("--data", help="FSDD recordings folder ({digit}_{speaker}_{index}.wav) or a data "
              "set.  [default: fsdd]")  # fmt: skip
@click.option("--split", help="standard (index 0-4 tests) or speaker:NAME.  [default: standard]")
@click.option("--loso", is_flag=True, help="Leave one speaker out, each in turn; mean and std.")
@click.option("--features", type=click.Choice(["mfcc", "logmel"]), help="[default: mfcc]")
@click.option("--n-mels", type=int, help="Mel bands.  [default: 40]")
@click.option("--n-mfcc", type=int, help="MFCC coefficients.  [default: 20]")
@click.option("--specaugment/--no-specaugment", default=None, help="[default: on]")
@_classifier_options
@_loop_options(lr=0.003, warmup=50, max_epochs=20, eval_every=60, log_every=20, patience=8)
def train_speech_digits(config_file, out, resume, loso, **flags) -> None:
    """Train a spoken-digit recogniser (one digit per recording); test on held-out recordings.

    \b
    Examples:
      rnnkit data fetch fsdd                        # once: the data set, sha256 checked
      rnnkit train speech-digits --out runs/fsdd    # --data fsdd
      rnnkit train speech-digits --loso
    """
    from rnnkit.tasks import classify, speech

    result = speech.train(flags, config_file, out, resume, loso=loso)
    click.echo(classify.format_summary(result) if loso else classify.format_test(result))


@train.command("speech-ctc")
@click.option("--data", help="FSDD recordings folder ({digit}_{speaker}_{index}.wav) or a data "
              "set.  [default: fsdd]")  # fmt: skip
@click.option(
    "--config", "config_file", type=_FILE, help="TOML file of settings named like the flags."
)
@click.option("--out", type=_DIR, help="Run directory.  [default: runs/speech-ctc-DATE-TIME]")
@click.option("--resume", type=_DIR, help="Continue the run in this directory.")
@click.option("--hidden", type=int, help="LSTM units per direction.  [default: 64]")
@click.option("--layers", type=int, help="Bidirectional LSTM layers.  [default: 2]")
@click.option("--stack", type=int, help="Feature frames per step.  [default: 3]")
@click.option("--batch", type=int, help="Utterances per step.  [default: 16]")
@click.option("--min-digits", type=int, help="[default: 2]")
@click.option("--max-digits", type=int, help="[default: 6]")
@click.option("--test-size", type=int, help="Test utterances.  [default: 500]")
@click.option("--valid-size", type=int, help="Validation utterances.  [default: 100]")
@click.option("--specaugment/--no-specaugment", default=None, help="[default: on]")
@_loop_options(warmup=100, max_steps=3000, eval_every=150, log_every=25)
def train_speech_ctc(config_file, out, resume, **flags) -> None:
    """Train a recogniser of spoken digit strings (bidirectional LSTM + CTC).

    \b
    Examples:
      rnnkit train speech-ctc --out runs/ctc        # --data fsdd (rnnkit data fetch fsdd)
    """
    from rnnkit.tasks import speech_ctc

    click.echo(speech_ctc.format_report(speech_ctc.train(flags, config_file, out, resume)))


@main.command()
@click.argument("run", type=_DIR)
@click.argument("inputs", nargs=-1, metavar="[INPUT]...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input and line.")
@click.option("--explain", is_flag=True, help="Classifiers: the attention weight of each step.")
@click.option("--horizon", type=click.IntRange(min=1), help="Forecasts: steps ahead.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              show_default=True)  # fmt: skip
@_device_option("cpu", "Predict")
def predict(run: str, inputs: tuple[str, ...], as_json: bool, explain: bool, horizon: int | None,
            checkpoint: str, device: str | None) -> None:  # fmt: skip
    """Answer each INPUT with a trained RUN, whatever its task: a text (sentiment,
    translate), a WAV file (speech-digits, speech-ctc), a prompt (charlm), an image (caption),
    a CSV (forecast, anomaly; none: the run's own series).

    \b
    Examples:
      rnnkit predict runs/mr "an oddly moving film" "a dull mess" --explain
      rnnkit predict runs/fsdd "$(rnnkit data path fsdd)/recordings/7_lucas_3.wav" --json
      rnnkit predict runs/airline --horizon 12
    """
    from rnnkit.predictor import answer, load

    options = {"horizon": horizon} if horizon is not None else {}
    with predicting_on(device):
        predictor = load(run, checkpoint)
        for result in answer(predictor, inputs, options):
            if as_json:
                click.echo(json.dumps(result.to_dict(), allow_nan=False))
            else:
                click.echo(result.explained() if explain else result.summary())


@main.command()
@click.argument("run", type=_DIR)
@click.option("--format", "fmt", type=click.Choice(["onnx", "pt2"]), default="onnx",
              show_default=True, help="onnx: for ONNX Runtime; pt2: torch.export.")  # fmt: skip
@click.option("--out", type=_DIR, help="Folder to write into.  [default: RUN/export]")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              show_default=True)  # fmt: skip
def export(run: str, fmt: str, out: str | None, checkpoint: str) -> None:
    """Export a trained RUN's model with dynamic batch and time axes, checked against PyTorch
    on the run's own inputs at two lengths, and model.json beside it (inputs, outputs,
    vocabulary or classes).

    \b
    Examples:
      rnnkit export runs/mr                      # runs/mr/export/model.onnx
      rnnkit export runs/mr --format pt2 --out exported/
    """
    from rnnkit.export import export_run
    from rnnkit.predictor import load

    report = export_run(load(run, checkpoint), fmt, out)
    checks = report["check"]["lengths"]
    worst = max(c["max_abs_diff"] for c in checks)
    lengths = ", ".join(str(c["steps"]) for c in checks)
    runtime = "ONNX Runtime" if fmt == "onnx" else "the saved program"
    click.echo(f"exported {run} ({report['task']}) to {report['path']}")
    click.echo(f"checked: {runtime} against PyTorch at T = {lengths} on "
               f"{report['check']['data']}: largest difference {worst:.2g}")  # fmt: skip
    inputs = "; ".join(f"{d['name']} {tuple(d['shape'])} {d['dtype']}" for d in report["inputs"])
    outputs = ", ".join(d["name"] for d in report["outputs"])
    click.echo(f"inputs: {inputs}; outputs: {outputs}")
    click.echo(f"described in {report['described']}")


@main.command()
@click.argument("run", type=_DIR)
@click.argument("wav", type=_FILE)
@click.option("--beam", type=int, help="Prefix-beam width; 0: greedy.  [default: the run's, 8]")
@_device_option("cpu", "Predict")
def transcribe(run: str, wav: str, beam: int | None, device: str | None) -> None:
    """The digits spoken in WAV, by a trained speech-ctc RUN.

    \b
    Examples:
      rnnkit transcribe runs/ctc recording.wav
    """
    with predicting_on(device):
        click.echo(_task_of(run, "transcribe").transcribe(run, wav, beam))


# --- translate, caption (issue 5) -------------------------------------------------------------


@train.command("translate")
@click.option("--src", help="Source sentences, one per line (plain or .gz).")
@click.option("--tgt", help="Their translations, line by line.")
@click.option("--valid-src", help="Validation sources.  [default: the last 5% of the pairs]")
@click.option("--valid-tgt", help="Validation targets.")
@click.option("--test-src", help="Test sources: translated with beam search after training.")
@click.option("--test-tgt", help="Test references (BLEU, chrF).")
@click.option(
    "--config", "config_file", type=_FILE, help="TOML file of settings named like the flags."
)
@click.option("--out", type=_DIR, help="Run directory.  [default: runs/translate-DATE-TIME]")
@click.option("--resume", type=_DIR, help="Continue the run in this directory.")
@click.option("--src-vocab", type=int, help="Source subword pieces.  [default: 8000]")
@click.option("--tgt-vocab", type=int, help="Target subword pieces.  [default: 8000]")
@click.option("--cell", type=click.Choice(["gru", "lstm"]), help="[default: gru]")
@click.option(
    "--attention",
    type=click.Choice(["additive", "dot", "general"]),
    help="Bahdanau (additive) or Luong (dot, general).  [default: additive]",
)
@click.option("--embed", type=int, help="Embedding size.  [default: 256]")
@click.option("--hidden", type=int, help="Encoder units per direction.  [default: 256]")
@click.option("--decoder-hidden", type=int, help="Decoder units.  [default: 512]")
@click.option("--dropout", type=float, help="[default: 0.3]")
@click.option("--teacher-forcing", type=float, help="Teacher-forcing ratio.  [default: 1.0]")
@click.option("--max-len", type=int, help="Subword pieces kept per sentence.  [default: 80]")
@click.option("--batch", type=int, help="Sentence pairs per step.  [default: 64]")
@click.option("--beam", type=int, help="Beam size of the final evaluation.  [default: 5]")
@_loop_options(max_time=3600, warmup=200, eval_every=500)
def train_translate(config_file, out, resume, **flags) -> None:  # fmt: skip
    """Train an attention encoder-decoder to translate (subword vocabularies, BLEU).

    \b
    Examples:
      rnnkit data fetch multi30k                    # once: the data set, sha256 checked
      rnnkit train translate --src multi30k/train.en.gz --tgt multi30k/train.de.gz \\
        --valid-src multi30k/val.en.gz --valid-tgt multi30k/val.de.gz \\
        --test-src multi30k/test_2016_flickr.en.gz --test-tgt multi30k/test_2016_flickr.de.gz \\
        --out runs/en-de
    """
    from rnnkit.tasks import translate

    click.echo(translate.format_report(translate.train(flags, config_file, out, resume)))


@main.command("translate")
@click.argument("run", type=_DIR)
@click.argument("text", required=False)
@click.option("--file", type=_FILE, help="Translate each line of this file instead.")
@click.option(
    "--ref", type=_FILE, help="With --file: reference translations; prints BLEU and chrF."
)
@click.option("--beam", type=int, help="Beam size; 1: greedy.  [default: the run's, 5]")
@click.option("--plot", type=_FILE, help="Write the attention of the (first) sentence to this PNG.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              show_default=True)  # fmt: skip
@_device_option("cpu", "Predict")
def translate_(run, text, file, ref, beam, plot, checkpoint, device) -> None:
    """Translate TEXT (or --file) with a trained translate RUN.

    \b
    Examples:
      rnnkit translate runs/en-de "A man rides a bike." --plot attention.png
      rnnkit translate runs/en-de --file test.en --ref test.de
    """
    from rnnkit.tasks import translate

    with predicting_on(device):
        click.echo(translate.translate(run, text, file, ref, beam, plot, checkpoint))


@train.command("caption")
@click.option("--data", help="Fashion-MNIST folder (IDX files, gzip'd or not), or the data "
              "set fashion-mnist.  "
              "[default: /usr/share/datasets/fashion-mnist, from apt-get install "
              "dataset-fashion-mnist]")  # fmt: skip
@click.option(
    "--config", "config_file", type=_FILE, help="TOML file of settings named like the flags."
)
@click.option("--out", type=_DIR, help="Run directory.  [default: runs/caption-DATE-TIME]")
@click.option("--resume", type=_DIR, help="Continue the run in this directory.")
@click.option("--slots", type=int, help="28-pixel cells of a scene (its width).  [default: 4]")
@click.option("--min-items", type=int, help="Fewest items in a scene.  [default: 1]")
@click.option("--max-items", type=int, help="Most items in a scene.  [default: 4]")
@click.option("--valid-images", type=int,
              help="Training pictures kept for validation scenes.  [default: 5000]")  # fmt: skip
@click.option("--valid-scenes", type=int, help="Validation scenes.  [default: 1000]")
@click.option("--eval-scenes", type=int,
              help="Validation scenes captioned at each evaluation.  [default: 500]")  # fmt: skip
@click.option("--test-scenes", type=int,
              help="Test scenes (Fashion-MNIST test pictures) scored after training.  "
              "[default: 1000]")  # fmt: skip
@click.option("--channels", type=int, help="Feature maps of the last conv stage.  [default: 64]")
@click.option("--stages", type=int, help="Conv + ReLU + pool stages.  [default: 3]")
@click.option("--cell", type=click.Choice(["gru", "lstm"]), help="[default: gru]")
@click.option(
    "--attention",
    type=click.Choice(["additive", "dot", "general"]),
    help="Bahdanau (additive) or Luong (dot, general).  [default: additive]",
)
@click.option("--embed", type=int, help="Word embedding size.  [default: 64]")
@click.option("--decoder-hidden", type=int, help="Decoder units.  [default: 256]")
@click.option("--dropout", type=float, help="[default: 0.1]")
@click.option("--batch", type=int, help="Scenes per step.  [default: 64]")
@click.option("--beam", type=int, help="Beam size of the final evaluation.  [default: 3]")
@_loop_options(warmup=100, max_steps=3000, eval_every=250)
def train_caption(config_file, out, resume, **flags) -> None:  # fmt: skip
    """Train a CNN encoder + attention decoder to caption Fashion-MNIST scenes (BLEU, exact).

    \b
    Examples:
      rnnkit train caption --out runs/caption
      rnnkit caption runs/caption --example scene.png --plot attention.png
      rnnkit caption runs/caption scene.png
    """
    from rnnkit.tasks import caption

    click.echo(caption.format_report(caption.train(flags, config_file, out, resume)))


@main.command("caption")
@click.argument("run", type=_DIR)
@click.argument("image", required=False, type=_FILE)
@click.option("--example", type=_FILE, metavar="PNG",
              help="Instead of IMAGE: write a test scene to this PNG and caption it.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="The --example scene.")
@click.option("--beam", type=int, help="Beam size; 1: greedy.  [default: the run's, 3]")
@click.option("--plot", type=_FILE, help="Write where each word looked to this PNG.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              show_default=True)  # fmt: skip
@_device_option("cpu", "Predict")
def caption_(run, image, example, seed, beam, plot, checkpoint, device) -> None:
    """Caption IMAGE (a grayscale scene of the run's size) with a trained caption RUN.

    \b
    Examples:
      rnnkit caption runs/caption --example scene.png   # a test scene, and its caption
      rnnkit caption runs/caption scene.png --plot attention.png
    """
    from rnnkit.tasks import caption

    with predicting_on(device):
        click.echo(caption.caption(run, image, example, beam, plot, seed, checkpoint))


# --- data (the data-set registry) ----------------------------------------------------------------

from rnnkit.cli_data import data  # noqa: E402  (a click group only; the registry loads in it)
from rnnkit.cli_kernels import kernels  # noqa: E402  (likewise: torch loads in its commands)

main.add_command(data)
main.add_command(kernels)


if __name__ == "__main__":
    main()
