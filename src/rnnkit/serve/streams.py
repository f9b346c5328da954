"""Continuous batching of generation streams: `StreamScheduler`.

An RNN's whole memory of a stream is its state, a few vectors, so streams can share the model's
steps freely: a stream joins by reading its prompt alone (one pass, its state and first logits
kept), and from then on every step draws each active stream's next token with its own
generator and sampling settings, then advances all of them in one batched model step, their
states stacked along the batch axis. A stream leaves when it has its tokens or its client has
gone (`Stream.cancel`). Each stream draws exactly what `CharLMPredictor.stream` draws with the
same seed (its generator draws for it alone); the batched step agrees with a lone one to float
rounding.

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
from torch import Tensor

from rnnkit.models.heads import sample_logits


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
    state: Any = None
    last: Tensor | None = None  # (1, V): the logits the next token is drawn from
    previous: int = 0  # the last token read
    generator: torch.Generator | None = None

    def cancel(self) -> None:
        """Leave at the next step (the client disconnected)."""
        self.cancelled = True


class StreamScheduler:
    """Steps every active `Stream` of one charlm predictor together (module docstring)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor, self.model = predictor, predictor.model
        self.waiting: queue.Queue[Stream | None] = queue.Queue()
        self.active: list[Stream] = []
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
                for stream in joining:
                    self._guarded([stream], self._join, stream)
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
                if stream in self.active:
                    self.active.remove(stream)

    def _join(self, stream: Stream) -> None:
        """Read the prompt (alone), keep the state and the logits after its last token."""
        stream.generator = torch.Generator().manual_seed(stream.seed)
        stream.previous = int(stream.ids[-1])
        logits, stream.state = self.model(stream.ids.unsqueeze(1))
        stream.last = logits[-1]
        self.active.append(stream)

    def _step(self) -> None:
        """Draw a token for each active stream; advance those that go on in one model step."""
        going = []
        for stream in self.active:
            if stream.cancelled:
                continue
            self._draw(stream)
            if len(stream.pieces) < stream.max_tokens:
                going.append(stream)
            else:
                text = "".join(stream.pieces)
                self._say(stream, {"done": True, "text": text, "tokens": len(stream.pieces)})
        self.active = going
        if not going:
            return
        tokens = torch.tensor([[s.previous for s in going]])  # (1, B)
        logits, state = self.model(tokens, _stack([s.state for s in going]))
        for column, stream in enumerate(going):
            stream.last = logits[-1, column : column + 1]
            stream.state = _column(state, column)
        self.steps += 1

    def _draw(self, stream: Stream) -> None:
        token = sample_logits(stream.last, stream.temperature, stream.top_k, stream.top_p,
                              stream.generator)  # fmt: skip
        token_id = int(token[0])
        probability = float(stream.last.float().softmax(-1)[0, token_id])
        piece = self.predictor._piece(stream.previous, token_id)
        step = len(stream.pieces)
        stream.pieces.append(piece)
        stream.previous = token_id
        self._say(stream, {"token": piece, "probability": probability, "step": step})


def _deliver(items: list[tuple[Stream, dict[str, Any]]]) -> None:
    for stream, event in items:
        stream.emit(event)


def _stack(states: list[Any]) -> Any:
    """States of single streams ((L, 1, H) tensors, or tuples of them) stacked on axis 1."""
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*states))
    return torch.cat(states, dim=1)


def _column(state: Any, column: int) -> Any:
    """Stream ``column``'s state (batch axis 1 kept, of size 1)."""
    if isinstance(state, tuple):
        return tuple(s[:, column : column + 1] for s in state)
    return state[:, column : column + 1]
