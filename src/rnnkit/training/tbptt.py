"""Truncated backpropagation through time (TBPTT) for long streams.

A stream of N tokens is cut into B parallel streams of N // B tokens (row b continues where it
was, chunk after chunk). Step s trains on chunk ``s mod steps_per_epoch``: inputs (B, L) and
targets shifted by one. The task's loss runs the model from the state the previous chunk ended in
(`StreamChunk.first` says when to start again from zeros) and returns the new state; the trainer
detaches it (`detach_state`) so gradients flow through at most L steps, and carries it to the next
step (and into checkpoints, so resuming is exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnkit.errors import RnnkitError


def detach_state(state: Any) -> Any:
    """``state`` (None, a tensor, or nested tuples/lists of them) cut from the autograd graph."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


@dataclass
class StreamChunk:
    """One TBPTT step: ``inputs`` and ``targets`` (B, L) token ids; ``first``: reset the state."""

    inputs: Tensor
    targets: Tensor
    first: bool


class StreamBatches:
    """Consecutive chunks of ``chunk_len`` from ``batch_size`` parallel streams of ``data``.

    Args:
        data: (N,) token ids.
        batch_size: B parallel streams.
        chunk_len: L, time steps per chunk (the truncation length).
    """

    def __init__(self, data: Tensor, batch_size: int, chunk_len: int) -> None:
        per_stream = (data.numel() - 1) // batch_size
        if per_stream < 2:
            raise RnnkitError(
                f"the text has {data.numel()} tokens, too few for {batch_size} streams; "
                "lower --batch or give a longer text"
            )
        self.batch_size, self.chunk_len = batch_size, chunk_len
        used = per_stream * batch_size
        self.inputs = data[:used].view(batch_size, per_stream)  # (B, N/B)
        self.targets = data[1 : used + 1].view(batch_size, per_stream)
        self.steps_per_epoch = math.ceil(per_stream / chunk_len)

    def chunk(self, step: int) -> StreamChunk:
        """The chunk trained at optimizer step ``step`` (0-based); wraps around every epoch."""
        i = step % self.steps_per_epoch
        sl = slice(i * self.chunk_len, (i + 1) * self.chunk_len)
        return StreamChunk(self.inputs[:, sl], self.targets[:, sl], first=i == 0)


def stream_loss_sum(model, data: Tensor, batch_size: int, chunk_len: int) -> tuple[float, int]:
    """Sum of token losses (nats) and token count over all of ``data``, carrying the state.

    ``model(ids (B, L), state) -> (logits (B, L, V), state)``; runs under ``torch.no_grad``.
    Every token after the first is scored once, with all the context before it in its stream.
    """
    batch_size = max(1, min(batch_size, (data.numel() - 1) // 2))
    stream = StreamBatches(data, batch_size, chunk_len)
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for i in range(stream.steps_per_epoch):
            chunk = stream.chunk(i)
            logits, state = model(chunk.inputs, state)
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), chunk.targets.flatten(), reduction="sum"
            )
            total, count = total + float(loss), count + chunk.targets.numel()
    return total, count
