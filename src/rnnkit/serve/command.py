"""``rnnkit serve RUN [RUN...]``: the runs behind the HTTP API and the playground page."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from rnnkit.errors import RnnkitError


@click.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN [RUN]...",
                type=click.Path(exists=True, file_okay=False))  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 serves other machines too.")  # fmt: skip
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="RNNKIT_SERVE_TOKEN", help="Require Authorization: Bearer "
              "TOKEN on every /v1 route (or set RNNKIT_SERVE_TOKEN).")  # fmt: skip
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              show_default=True)  # fmt: skip
@click.option("--max-body", default=1 << 20, show_default=True, help="Bytes per request.")
@click.option("--max-inputs", default=64, show_default=True, help="Inputs per request.")
@click.option("--max-tokens", default=2000, show_default=True, help="Tokens per generation.")
@click.option("--max-streams", default=64, show_default=True, help="Streams at once, per run.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds per request.")
def serve(runs: tuple[str, ...], host: str, port: int, token: str | None, checkpoint: str,
          max_body: int, max_inputs: int, max_tokens: int, max_streams: int,
          timeout: float) -> None:  # fmt: skip
    """Serve trained RUNs over HTTP, each under its folder's name: predict, generate
    (streamed), compose, forecast, and a playground page at /. Ctrl-C or SIGTERM finishes
    the requests in flight and exits.

    \b
    Examples:
      rnnkit serve runs/shakespeare runs/mr            # http://127.0.0.1:8000/
      rnnkit serve runs/mr --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    try:
        import uvicorn

        from rnnkit.serve.app import Limits, create_app
    except ImportError as err:
        raise RnnkitError(f"rnnkit serve needs FastAPI and uvicorn ({err.name} is missing): "
                          "pip install 'rnnkit[serve]'") from None  # fmt: skip
    from rnnkit.predictor import load

    names = [Path(run).resolve().name for run in runs]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise RnnkitError(f"two runs are named {doubled[0]!r}; serve runs in folders of "
                          "different names")  # fmt: skip
    predictors = {name: load(run, checkpoint) for name, run in zip(names, runs)}
    limits = Limits(max_body, max_inputs, max_tokens, max_streams, timeout)
    app = create_app(predictors, limits, token)
    where = f"http://{host}:{port}/"
    click.echo(f"serving {', '.join(names)} at {where} (the playground; API: {where}openapi.json)")
    # uvicorn drains on SIGTERM, then raises it again with the handler found before it: this
    # one only notes it, so the command ends normally (exit 0) rather than by the signal
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo("stopped")
