"""The HTTP API over trained runs (FastAPI on uvicorn; docs/serving.md says why).

Routes (every answer JSON, errors as ``{"error": "..."}`` with a 4xx status):

- ``GET /health``; ``GET /v1/runs``: each run's name, task, settings, figures and routes;
  ``GET /openapi.json``: every route described; ``GET /``: the playground page.
- ``POST /v1/runs/{name}/predict`` ``{"inputs": [...], options}`` -> ``{"outputs": [...]}``,
  what ``Predictor.predict`` answers, requests that arrive together run as one batch
  (`Batcher`). An input that is a file (a WAV, a PNG, a CSV, a MIDI) is sent as
  ``{"wav" | "png" | "csv" | "mid": BASE64}``.
- ``POST /v1/runs/{name}/generate`` (charlm): the text after a prompt; ``"stream": true``
  answers a ``text/event-stream``, one ``data: {...}`` event per token then a final one, the
  streams stepped together (`StreamScheduler`).
- ``POST /v1/runs/{name}/compose`` (music): the MIDI file (``"format": "json"``: the
  `Composition` with its piano roll); ``POST /v1/runs/{name}/forecast`` (forecast).

Run names are fixed when the server starts; a request's name is only looked up among them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from rnnkit.errors import RnnkitError
from rnnkit.models.heads import check_sampling
from rnnkit.predictor import Predictor, check_options
from rnnkit.serve.batching import Batcher
from rnnkit.serve.streams import Stream, StreamScheduler

STATIC = Path(__file__).parent / "static"
FILE_KINDS = {"wav": ".wav", "png": ".png", "csv": ".csv", "mid": ".mid"}


@dataclass
class Limits:
    """What one request may ask: body bytes, inputs, tokens, streams at once, seconds."""

    max_body: int = 1 << 20
    max_inputs: int = 64
    max_tokens: int = 2000
    max_streams: int = 64
    timeout: float = 60.0
    window: float = 0.005  # how long the batcher waits for requests to join a batch


class ApiError(Exception):
    """A client's mistake: ``status`` and one line saying what to fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PredictBody(BaseModel):
    """``inputs`` and the options the run's predictor takes (``horizon``, ``beam``, ...)."""

    model_config = ConfigDict(extra="allow")
    inputs: list[Any] = Field(description="one input per answer")


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    max_tokens: int = Field(200, ge=0)
    temperature: float = Field(0.8, ge=0)
    top_k: int | None = Field(40, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = 1
    stream: bool = False


class ComposeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    frames: int = Field(64, ge=1, le=4096)
    seed: int = 1
    temperature: float = Field(1.0, gt=0)
    tempo: float = Field(80.0, gt=0)
    format: str = Field("midi", pattern="^(midi|json)$")


class ForecastBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    horizon: int | None = Field(None, ge=1)
    level: float = Field(0.9, gt=0, lt=1)


class Served:
    """One run being served: its predictor, batcher and (charlm) stream scheduler."""

    def __init__(self, name: str, predictor: Predictor) -> None:
        self.name, self.predictor = name, predictor
        self.batcher = Batcher(predictor)
        self.scheduler = StreamScheduler(predictor) if predictor.task == "charlm" else None
        self.streams = 0

    def routes(self) -> list[str]:
        extra = {"charlm": ["generate"], "music": ["compose"], "forecast": ["forecast"]}
        return ["predict", *extra.get(self.predictor.task, [])]

    def close(self) -> None:
        self.batcher.close()
        if self.scheduler is not None:
            self.scheduler.close()


def create_app(runs: dict[str, Predictor], limits: Limits | None = None,
               token: str | None = None) -> FastAPI:  # fmt: skip
    """The application serving ``runs`` (name -> predictor) within ``limits``; with ``token``,
    every ``/v1`` route needs ``Authorization: Bearer TOKEN``."""
    limits = limits or Limits()
    served = {name: Served(name, p) for name, p in runs.items()}
    for s in served.values():
        s.batcher.window, s.batcher.max_inputs = limits.window, 4 * limits.max_inputs

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for s in served.values():
            s.close()

    about = "Trained rnnkit runs over HTTP: predict, generate, compose, forecast."
    app = FastAPI(title="rnnkit", description=about, lifespan=lifespan, docs_url=None,
                  redoc_url=None)  # fmt: skip
    app.state.served, app.state.limits = served, limits
    _errors(app)
    _guards(app, limits, token)
    _routes(app, served, limits)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _errors(app: FastAPI) -> None:
    """Every error as ``{"error": one line}``: a client's mistake 4xx, never a 500."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(RnnkitError)
    async def rnnkit_error(request: Request, err: RnnkitError):
        return JSONResponse({"error": str(err)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse({"error": "the body is not valid JSON"}, status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        message = "no such route" if err.status_code == 404 else str(err.detail)
        return JSONResponse({"error": message}, status_code=err.status_code)


def _guards(app: FastAPI, limits: Limits, token: str | None) -> None:
    """The body-size limit and the token check, before any route reads the request."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse({"error": "give the server's token: Authorization: "
                                     "Bearer TOKEN"}, status_code=401)  # fmt: skip
        too_large = {"error": f"the body is larger than {limits.max_body:,} bytes"}
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body):
            return JSONResponse(too_large, status_code=413)
        if request.method == "POST" and declared is None:
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > limits.max_body:
                    return JSONResponse(too_large, status_code=413)
            request._body = body  # read once, within the limit; the route reads it from here
        return await call_next(request)


def _routes(app: FastAPI, served: dict[str, Served], limits: Limits) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "runs": len(served)}

    @app.get("/v1/runs")
    async def runs() -> dict[str, Any]:
        return {"runs": [{**s.predictor.describe(), "name": name, "routes": s.routes()}
                         for name, s in served.items()]}  # fmt: skip

    @app.post("/v1/runs/{name}/predict")
    async def predict(name: str, body: PredictBody) -> dict[str, Any]:
        run = _run(served, name)
        if not body.inputs or len(body.inputs) > limits.max_inputs:
            raise ApiError(413 if body.inputs else 422, f"give 1 to {limits.max_inputs} inputs "
                           f"per request, got {len(body.inputs)}")  # fmt: skip
        options = dict(body.model_extra or {})
        check_options(run.predictor, options)
        with _files(body.inputs) as inputs:
            results = await _within(limits, run.batcher.predict(inputs, options))
        return {"outputs": [r.to_dict() for r in results]}

    @app.post("/v1/runs/{name}/generate")
    async def generate(name: str, body: GenerateBody, request: Request):
        run = _run(served, name, "charlm")
        if body.max_tokens > limits.max_tokens:
            raise ApiError(422, f"max_tokens: at most {limits.max_tokens}, got {body.max_tokens}")
        settings = body.model_dump(exclude={"stream"})
        settings["top_k"] = settings["top_k"] or None  # 0: sample among all tokens
        if not body.stream:
            result = await _within(limits, run.batcher.run(
                lambda: run.predictor.generate(**settings)))  # fmt: skip
            return result.to_dict()
        return _event_stream(run, settings, limits, request)

    @app.post("/v1/runs/{name}/compose")
    async def compose(name: str, body: ComposeBody):
        run = _run(served, name, "music")
        settings = body.model_dump(exclude={"format"})
        result = await _within(limits, run.batcher.run(lambda: run.predictor.compose(**settings)))
        if body.format == "json":
            return result.to_dict()
        return Response(result.midi, media_type="audio/midi")

    @app.post("/v1/runs/{name}/forecast")
    async def forecast(name: str, body: ForecastBody) -> dict[str, Any]:
        run = _run(served, name, "forecast")
        call = lambda: run.predictor.forecast(horizon=body.horizon, level=body.level)  # noqa: E731
        return (await _within(limits, run.batcher.run(call))).to_dict()


def _run(served: dict[str, Served], name: str, task: str | None = None) -> Served:
    """The served run ``name`` (404 if none), of ``task`` if given (else 400)."""
    run = served.get(name)
    if run is None:
        raise ApiError(404, f"no run named {name[:80]!r}; served: {', '.join(sorted(served))}")
    if task is not None and run.predictor.task != task:
        raise ApiError(400, f"{name} is a {run.predictor.task} run; this route serves {task} runs")
    return run


async def _within(limits: Limits, work):
    """``await work``, or 503 after ``limits.timeout`` seconds."""
    try:
        return await asyncio.wait_for(work, limits.timeout)
    except asyncio.TimeoutError:
        raise ApiError(503, f"the request took longer than {limits.timeout:g} s; send fewer or "
                       "shorter inputs, or try again") from None  # fmt: skip


@contextlib.contextmanager
def _files(inputs: list[Any]):
    """``inputs`` with each ``{"wav"|"png"|"csv"|"mid": BASE64}`` written to a file of a
    private temporary folder (its path passed on), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="rnnkit-serve-") as folder:
        yield [_file(item, Path(folder), i) for i, item in enumerate(inputs)]


def _file(item: Any, folder: Path, index: int) -> Any:
    if not isinstance(item, dict):
        return item
    kinds = [k for k in item if k in FILE_KINDS]
    if len(kinds) != 1 or len(item) != 1:
        raise ApiError(422, f"an input object holds one file: {{kind: base64}} with kind one of "
                       f"{', '.join(FILE_KINDS)}; got keys {sorted(item)[:5]}")  # fmt: skip
    try:
        data = base64.b64decode(item[kinds[0]], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ApiError(422, f"input {index}: {kinds[0]} is not base64") from None
    path = folder / f"input-{index}{FILE_KINDS[kinds[0]]}"
    path.write_bytes(data)
    return str(path)


def _event_stream(run: Served, settings: dict, limits: Limits, request: Request):
    """A ``text/event-stream`` of the generation's events; 429 when the run has
    ``max_streams`` streams already. A client that leaves frees its slot at the next step."""
    if run.streams >= limits.max_streams:
        raise ApiError(429, f"{run.name} is serving {limits.max_streams} streams already; try "
                       "again shortly")  # fmt: skip
    ids = run.predictor.encode(settings.pop("prompt"))  # a bad prompt: 400 before streaming
    check_sampling(settings["temperature"], settings["top_k"], settings["top_p"])
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict] = asyncio.Queue()
    stream = Stream(ids, emit=events.put_nowait, loop=loop, **settings)
    run.streams += 1
    run.scheduler.submit(stream)

    async def send():
        try:
            while True:  # every event waiting goes out in one write
                try:
                    batch = [await asyncio.wait_for(events.get(), limits.timeout)]
                except asyncio.TimeoutError:
                    stalled = f"no token for {limits.timeout:g} s; the stream is ended"
                    batch = [{"done": True, "error": stalled}]
                while not events.empty() and not batch[-1].get("done"):
                    batch.append(events.get_nowait())
                yield "".join(f"data: {json.dumps(e, allow_nan=False)}\n\n" for e in batch)
                if batch[-1].get("done"):
                    return
        finally:
            stream.cancel()
            run.streams -= 1

    return StreamingResponse(send(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})  # fmt: skip
