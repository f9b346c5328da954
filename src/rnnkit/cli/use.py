"""Using trained runs: `rnnkit predict` and `rnnkit export` for every task, `rnnkit eval`, and
the task verbs that read better than ``predict`` (sample, translate, caption, compose,
transcribe)."""

from __future__ import annotations

import contextlib
import json

import click

from rnnkit.cli.options import DIR, FILE
from rnnkit.errors import RnnkitError


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


#: the ``--device`` flag of the commands that use a trained run (checked when used: a device
#: this machine lacks is one line and exit 2)
DEVICE = click.option(
    "--device",
    metavar="cpu|cuda|mps",
    help="Predict on this device (cuda:N for a given GPU).  [default: cpu]",
)


def checkpoint_option(default: str = "best"):
    """The ``--checkpoint`` flag: the run's best validation checkpoint, or its last."""
    return click.option(
        "--checkpoint",
        type=click.Choice(["best", "last"]),
        default=default,
        show_default=True,
        help="The best validation checkpoint, or the last.",
    )


def _task_of(run: str, function: str):
    """The task module of a run directory, checked to offer ``function``."""
    from rnnkit.tasks import task_module
    from rnnkit.training.checkpoint import read_config

    name = read_config(run).get("task")
    module = task_module(name)
    if not hasattr(module, function):
        raise RnnkitError(f"{run} is a {name!r} run, which `rnnkit {function}` does not handle")
    return module


@click.command()
@click.argument("run", type=DIR)
@click.option("--prompt", help="Text to start from (echoed).  [default: a line break]")
@click.option("--length", default=500, show_default=True, help="Tokens to generate.")
@click.option("--temperature", default=0.8, show_default=True, help="0: always the likeliest.")
@click.option(
    "--top-k", default=40, show_default=True, help="Sample among the k likeliest; 0: all."
)
@click.option("--top-p", type=float, help="Sample within the nucleus of probability p.")
@click.option("--seed", default=1, show_default=True, help="Seed: same seed, same text.")
@checkpoint_option("last")
@DEVICE
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


@click.command("eval")
@click.argument("run", type=DIR)
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
@DEVICE
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


@click.command()
@click.argument("run", type=DIR)
@click.argument("inputs", nargs=-1, metavar="[INPUT]...")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: per input (forecast: per step).")
@click.option("--explain", is_flag=True, help="Classifiers: the attention weight of each step.")
@click.option("--horizon", type=click.IntRange(min=1), help="Forecasts: steps ahead.")
@checkpoint_option()
@DEVICE
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
                for row in result.rows():
                    click.echo(json.dumps(row, allow_nan=False))
            else:
                click.echo(result.explained() if explain else result.summary())


@click.command()
@click.argument("run", type=DIR)
@click.option("--format", "fmt", default="onnx", show_default=True,
              help="onnx (for ONNX Runtime) or pt2 (torch.export).")  # fmt: skip
@click.option("--out", type=DIR, help="Folder to write into.  [default: RUN/export]")
@checkpoint_option()
def export(run: str, fmt: str, out: str | None, checkpoint: str) -> None:
    """Export a trained RUN's model with dynamic batch and time axes, checked against PyTorch
    on the run's own inputs at two lengths, and model.json beside it (inputs, outputs,
    vocabulary or classes). Generative runs export their step function, the state in and out;
    translate and caption runs an encoder and a decoder step (encoder.onnx, decoder.onnx),
    checked together by greedy decoding.

    \b
    Examples:
      rnnkit export runs/mr                      # runs/mr/export/model.onnx
      rnnkit export runs/mr --format pt2 --out exported/
      rnnkit export runs/en-de --out en-de/      # en-de/encoder.onnx, decoder.onnx, *.spm
    """
    from rnnkit.export import check_format, export_run
    from rnnkit.predictor import load

    check_format(fmt)
    report = export_run(load(run, checkpoint), fmt, out)
    click.echo(f"exported {run} ({report['task']}) to {', '.join(report['paths'].values())}")
    runtime = "ONNX Runtime" if fmt == "onnx" else "the saved program"
    for name, graph in report.get("graphs", {"": report}).items():
        checks, label = graph["check"]["lengths"], f"{name}: " if name else ""
        worst = max(c["max_abs_diff"] for c in checks)
        lengths = ", ".join(str(c["steps"]) for c in checks)
        click.echo(f"{label}checked: {runtime} against PyTorch at {graph['check']['axis']} = "
                   f"{lengths} on {graph['check']['data']}: largest difference "
                   f"{worst:.2g}")  # fmt: skip
        inputs = "; ".join(f"{d['name']} {tuple(d['shape'])} {d['dtype']}" for d in graph["inputs"])
        outputs = ", ".join(d["name"] for d in graph["outputs"])
        click.echo(f"{label}inputs: {inputs}; outputs: {outputs}")
    chained = report["check"].get("chained")
    if chained:
        click.echo(f"chained: greedy decoding of {chained['data']} gives PyTorch's tokens "
                   f"({chained['steps']} steps, largest difference "
                   f"{chained['max_abs_diff']:.2g})")  # fmt: skip
    click.echo(f"described in {report['described']}")


@click.command()
@click.argument("run", type=DIR)
@click.argument("wav", type=FILE)
@click.option("--beam", type=int, help="Prefix-beam width; 0: greedy.  [default: the run's --beam]")
@DEVICE
def transcribe(run: str, wav: str, beam: int | None, device: str | None) -> None:
    """The digits spoken in WAV, by a trained speech-ctc RUN.

    \b
    Examples:
      rnnkit transcribe runs/ctc recording.wav
    """
    with predicting_on(device):
        click.echo(_task_of(run, "transcribe").transcribe(run, wav, beam))


@click.command("translate")
@click.argument("run", type=DIR)
@click.argument("text", required=False)
@click.option("--file", type=FILE, help="Translate each line of this file instead.")
@click.option("--ref", type=FILE, help="With --file: reference translations; prints BLEU and chrF.")
@click.option("--beam", type=int, help="Beam size; 1: greedy.  [default: the run's --beam]")
@click.option("--plot", type=FILE, help="Write the attention of the (first) sentence to this PNG.")
@checkpoint_option()
@DEVICE
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


@click.command("caption")
@click.argument("run", type=DIR)
@click.argument("image", required=False, type=FILE)
@click.option("--example", type=FILE, metavar="PNG",
              help="Instead of IMAGE: write a test scene to this PNG and caption it.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="The --example scene.")
@click.option("--beam", type=int, help="Beam size; 1: greedy.  [default: the run's --beam]")
@click.option("--plot", type=FILE, help="Write where each word looked to this PNG.")
@checkpoint_option()
@DEVICE
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


@click.command()
@click.argument("run", type=DIR)
@click.option(
    "--out", type=FILE, required=True, help="MIDI file to write; the piano roll goes beside it."
)
@click.option("--frames", default=64, show_default=True, help="Frames to compose.")
@click.option("--tempo", default=80.0, show_default=True, help="Quarter notes per minute.")
@click.option("--prime", type=FILE, help="MIDI file to continue (kept at the start of the output).")
@click.option("--temperature", default=1.0, show_default=True, help="0: each key's likelier value.")
@click.option("--seed", default=1, show_default=True, help="Seed: same seed, same piece.")
@checkpoint_option()
@DEVICE
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


COMMANDS = (predict, export, eval_, sample, translate_, compose, caption_, transcribe)
