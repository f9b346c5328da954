"""Continuous batching of generation streams: `StreamScheduler`.

An RNN's whole memory of a stream is its state, a few vectors, so streams can share the model's
steps freely. The active streams are the rows of one batch whose state, logits, sampling
settings and generators stay stacked; rows are selected only when streams leave (they have
their tokens, or their client has gone: `Stream.cancel`) and appended when streams join (the
prompts that arrived since the last step read together in one pass with lengths). Every step
draws all the rows' tokens at once (`rnnkit.models.heads.draw_rows`: each row's settings, each
row's generator drawing for it alone) and advances them in one model step. Each stream draws
exactly what `CharLMPredictor.stream` draws with the same seed; the batched steps agree with
lone ones to float rounding.

The scheduler runs on a thread of its own. A stream's events go to its ``emit``: on the event
loop ``loop`` if the stream names one (all the events of a step in one hand-over per loop), else
on the scheduler's thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.models.heads import Sampling, draw_rows


@dataclasses.dataclass(eq=False)
class Stream:
    """One generation: prompt ids (T,), its settings and where its events go (``emit``: a
    token event dict per token, then a final event with the whole text)."""

    ids: Tensor
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int
    emit: Callable[[dict[str, Any]], None]
    loop: asyncio.AbstractEventLoop | None = None
    cancelled: bool = False
    pieces: list[str] = dataclasses.field(default_factory=list)
    previous: int = 0  # the last token read

    def cancel(self) -> None:
        """Leave at the next step (the client disconnected)."""
        self.cancelled = True


class StreamScheduler:
    """Steps every active `Stream` of one charlm predictor together (module docstring)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor, self.model = predictor, predictor.model
        self.waiting: queue.Queue[Stream | None] = queue.Queue()
        self.active: list[Stream] = []  # the streams of the batch's rows, in order
        # the batch's rows, stacked: state (axis 1), logits (B, V) the next tokens are drawn
        # from, sampling settings, generators, and each row's Exp(1) draws (`draw_rows`) for
        # the rest of the current block of steps: noise[:, position] is this step's
        self.state: Any = None
        self.last: Tensor | None = None
        self.settings: Sampling | None = None
        self.generators: list[torch.Generator] = []
        self.noise: Tensor | None = None  # (B, K, V)
        self.position = 0
        self.outbox: list[tuple[Stream, dict[str, Any]]] = []  # this step's events
        self.steps = 0  # batched model steps taken (for the tests and the benchmark)
        self.thread = threading.Thread(target=self._run, name="rnnkit-streams", daemon=True)
        self.thread.start()

    def submit(self, stream: Stream) -> None:
        """Join ``stream`` at the next step."""
        self.waiting.put(stream)

    def close(self) -> None:
        """Stop the thread after its current step; streams still active are cancelled."""
        self.waiting.put(None)
        self.thread.join(timeout=10)

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                joining = [self.waiting.get()] if not self.active else []
                while True:
                    try:
                        joining.append(self.waiting.get_nowait())
                    except queue.Empty:
                        break
                if None in joining:
                    for stream in self.active + [s for s in joining if s is not None]:
                        self._say(stream, {"done": True, "error": "the server is shutting down"})
                    self._send()
                    return
                self._guarded(joining, self._join, joining)
                self._guarded(list(self.active), self._step)
                self._send()

    def _say(self, stream: Stream, event: dict[str, Any]) -> None:
        self.outbox.append((stream, event))

    def _send(self) -> None:
        """Hand this step's events over: one call per event loop, the rest directly."""
        by_loop: dict[Any, list] = {}
        for stream, event in self.outbox:
            by_loop.setdefault(stream.loop, []).append((stream, event))
        self.outbox = []
        for loop, items in by_loop.items():
            if loop is None:
                _deliver(items)
            else:
                loop.call_soon_threadsafe(_deliver, items)

    def _guarded(self, streams: list[Stream], work, *args) -> None:
        """``work(*args)``; if it raises, end ``streams`` (those it was working on) with an
        error event rather than the thread, so that the others go on."""
        try:
            work(*args)
        except Exception as err:  # a failure must not stall every stream
            for stream in streams:
                self._say(stream, {"done": True, "error": f"generation failed: {err}"})
            failed = set(streams)
            self._keep([b for b, s in enumerate(self.active) if s not in failed])

    def _join(self, joining: list[Stream]) -> None:
        """Read the prompts of ``joining`` in one pass (with lengths) and add their rows: state,
        logits after the last prompt token, sampling settings, seeded generator."""
        for stream in joining:
            if stream.max_tokens == 0 and not stream.cancelled:
                self._say(stream, {"done": True, "text": "", "tokens": 0})
        joining = [s for s in joining if s.max_tokens > 0 and not s.cancelled]
        if not joining:
            return
        ids = nn.utils.rnn.pad_sequence([s.ids for s in joining])  # (T, K)
        lengths = torch.tensor([len(s.ids) for s in joining])
        logits, state = self.model(ids, lengths=lengths)
        last = logits[lengths - 1, torch.arange(len(joining))]  # (K, V)
        rows = [(s.temperature, s.top_k, s.top_p) for s in joining]
        settings = Sampling.of(rows, last.shape[-1])
        generators = [torch.Generator().manual_seed(s.seed) for s in joining]
        # the rest of this block of steps: a generator's draws for several steps in one call
        # are its draws step by step, so a row draws as it would alone
        noise = torch.ones(len(joining), _block(last.shape[-1]), last.shape[-1])
        for row, drawn, generator in zip(noise, settings.drawn, generators):
            if drawn:
                row[self.position :].exponential_(generator=generator)
        for stream in joining:
            stream.previous = int(stream.ids[-1])
        if self.active:
            state = _cat([self.state, state])
            last = torch.cat([self.last, last])
            settings = Sampling.cat([self.settings, settings], last.shape[-1])
            generators = self.generators + generators
            noise = torch.cat([self.noise, noise])
        self.state, self.last, self.settings, self.generators = state, last, settings, generators
        self.noise = noise
        self.active = self.active + joining

    def _step(self) -> None:
        """Draw a token for each active stream (all rows at once, each with its own settings
        and generator); advance those that go on in one model step."""
        self._keep([b for b, s in enumerate(self.active) if not s.cancelled])
        if not self.active:
            return
        if self.position == self.noise.shape[1]:  # a new block of steps for every row
            for row, drawn, generator in zip(self.noise, self.settings.drawn, self.generators):
                if drawn:
                    row.exponential_(generator=generator)
            self.position = 0
        tokens = draw_rows(self.last, self.settings, noise=self.noise[:, self.position])  # (B,)
        self.position += 1
        logits = self.last if self.last.dtype == torch.float32 else self.last.float()
        chances = logits.softmax(-1).gather(1, tokens[:, None])  # (B, 1)
        going = []
        for row, (stream, token, (chance,)) in enumerate(
            zip(self.active, tokens.tolist(), chances.tolist())
        ):
            piece = self.predictor._piece(stream.previous, token)
            self._say(stream, {"token": piece, "probability": chance, "step": len(stream.pieces)})
            stream.pieces.append(piece)
            stream.previous = token
            if len(stream.pieces) < stream.max_tokens:
                going.append(row)
            else:
                text = "".join(stream.pieces)
                self._say(stream, {"done": True, "text": text, "tokens": len(stream.pieces)})
        if len(going) < len(self.active):
            tokens = tokens[going]
            self._keep(going)
        if not self.active:
            return
        logits, self.state = self.model(tokens.unsqueeze(0), self.state)  # (1, B, V)
        self.last = logits[0]
        self.steps += 1

    def _keep(self, rows: list[int]) -> None:
        """Keep only the streams of batch rows ``rows`` (ascending), their rows selected."""
        if len(rows) == len(self.active):
            return
        self.active = [self.active[b] for b in rows]
        if not rows:
            self.state = self.last = self.settings = self.noise = None
            self.generators, self.position = [], 0
            return
        index = torch.tensor(rows)
        self.state = _select(self.state, index)
        self.last = self.last.index_select(0, index)
        self.noise = self.noise.index_select(0, index)
        self.settings = self.settings.rows(rows, self.last.shape[-1])
        self.generators = [self.generators[b] for b in rows]


def _deliver(items: list[tuple[Stream, dict[str, Any]]]) -> None:
    for stream, event in items:
        stream.emit(event)


def _block(classes: int) -> int:
    """Steps of Exp(1) draws made at once per row: up to 64, at most 2^16 floats a row."""
    return max(1, min(64, (1 << 16) // classes))


def _cat(states: list[Any]) -> Any:
    """Batched states ((L, B_i, H) tensors, or tuples of them) joined on axis 1."""
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*states))
    return torch.cat(states, dim=1)


def _select(state: Any, index: Tensor) -> Any:
    """Rows ``index`` (K,) of a batched state (axis 1)."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)
    return state.index_select(1, index)
