"""Next-frame model over binary frames (e.g. piano rolls), and one-to-many generation from it.

Shape legend: T frames, B batch, K outputs per frame (88 piano keys), H hidden size. Time-major
like the layers: frames (T, B, K) of 0/1 floats, the recurrent state (L, B, H) (LSTM: (h, c)).

The model factorises p(x_1, ..., x_T) = prod_t p(x_t | x_<t). Step t reads frame x_{t-1} and a
start flag (1 at step 1 only, where there is no previous frame): inputs (T, B, K + 1). The top
recurrent layer's output at step t is the features from which a `BinaryHead` gives the
distribution of frame x_t: independent Bernoulli keys, or a NADE over the keys of the frame.

    frames (T, B, K) -> [start | x_{t-1}] (T, B, K+1) -> dropout -> recurrent (T, B, H)
                     -> dropout -> head: logits (T, B, K) of x_t

`FrameModel.stream` generates frame by frame and carries the recurrent state: a primer is read
once, then every new frame costs one step (no recomputation of the past).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.dropout import Dropout
from rnnkit.errors import RnnkitError
from rnnkit.models.backbone import make_rnn
from rnnkit.models.heads import BernoulliHead, BinaryHead, NADEHead, check_sampling

HEADS = ("bernoulli", "nade")


class FrameModel(nn.Module):
    """p(x_t | x_<t) for binary frames: a recurrent layer and a `BinaryHead` on every step.

    Args:
        cell: a name in `rnnkit.models.backbone.CELLS` ("rnn", "irnn", "lstm", "gru").
        keys: K, binary outputs per frame.
        hidden_size: H.
        num_layers: recurrent layers.
        dropout: on the recurrent layer's outputs (between layers and before the head).
        input_dropout: on the input frames (training only).
        head: "bernoulli" (independent keys) or "nade" (the keys of a frame jointly).
        nade_hidden: hidden units of the NADE head.
        impl: the recurrent layer's implementation ("auto": see `rnnkit.layers`).
        **options: passed to the recurrent layer (e.g. ``weight_dropout=0.3``, DropConnect).
    """

    def __init__(
        self,
        cell: str,
        keys: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        head: str = "bernoulli",
        nade_hidden: int = 128,
        impl: str = "auto",
        **options,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise RnnkitError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        self.keys = keys
        self.rnn = make_rnn(cell, keys + 1, hidden_size, num_layers, dropout, impl, **options)
        self.in_drop, self.drop = Dropout(input_dropout), Dropout(dropout)
        self.head: BinaryHead = (
            BernoulliHead(hidden_size, keys)
            if head == "bernoulli"
            else NADEHead(hidden_size, keys, nade_hidden)
        )

    def inputs(self, frames: Tensor, start: bool) -> Tensor:
        """frames (T, B, K) -> inputs (T + start, B, K + 1): the start step (flag 1) first if
        ``start``, then each frame with flag 0."""
        T, B, _ = frames.shape
        x = torch.cat([frames, frames.new_zeros(T, B, 1)], -1)
        if not start:
            return x
        first = frames.new_zeros(1, B, self.keys + 1)
        first[..., -1] = 1.0
        return torch.cat([first, x])

    def features(self, inputs: Tensor, state: Any = None, lengths: Tensor | None = None):
        """inputs (T, B, K + 1), state or None -> features (T, B, H), final state."""
        h, state = self.rnn(self.in_drop(inputs), state, lengths=lengths)
        return self.drop(h), state

    def forward(self, frames: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Teacher-forced logits of every frame given those before it: frames (T, B, K) ->
        (T, B, K). With ``lengths`` (B,), the head runs only within each sequence (zeros after);
        the recurrence is causal, so the padding after a sequence never reaches its own steps.
        """
        self._check(frames)
        features, _ = self.features(self.inputs(frames[:-1], start=True))
        if lengths is None:
            return self.head.logits(features, frames)
        T, B, _ = frames.shape
        inside = torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
        logits = frames.new_zeros(T, B, self.keys)
        logits[inside] = self.head.logits(features[inside], frames[inside])  # (N, K)
        return logits

    def _check(self, frames: Tensor) -> None:
        if frames.dim() != 3 or frames.shape[-1] != self.keys or frames.shape[0] < 1:
            raise RnnkitError(
                f"expected frames (T >= 1, B, {self.keys}), got shape {tuple(frames.shape)}"
            )

    @torch.no_grad()
    def stream(
        self,
        n_frames: int,
        prime: Tensor | None = None,
        batch: int = 1,
        temperature: float | Sequence[float] = 1.0,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        lengths: Tensor | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(frame (B, K), logits (B, K))`` for each of ``n_frames`` new frames.

        ``prime`` (T0, B, K) is read in one pass (default: start from nothing, B = ``batch``);
        with ``lengths`` (B,) in [0, T0], column b's primer is its first ``lengths[b]`` frames
        (the rest is padding). Then each drawn frame is fed back with the carried state.
        ``logits`` are the head's logits of the drawn frame (for NADE, each key given the keys
        below it). ``temperature`` and ``generator``: one for the whole batch, or one per
        column (B of them), each column then drawn alone, the same in any batch. Runs in eval
        mode (restored after).
        """
        for t in [temperature] if isinstance(temperature, (int, float)) else temperature:
            check_sampling(t, None, None)
        if prime is None:
            dtype = self.head.proj.weight.dtype
            inputs = self.inputs(torch.zeros(0, batch, self.keys, dtype=dtype), start=True)
        else:
            self._check(prime)
            inputs = self.inputs(prime, start=True)
        steps = None if lengths is None else lengths.to(inputs.device) + 1  # the start step too
        was_training = self.training
        self.eval()
        try:
            features, state = self.features(inputs, lengths=steps)
            last = features[-1] if steps is None else features[steps - 1, torch.arange(len(steps))]
            for _ in range(n_frames):
                frame = self._draw(last, temperature, generator)  # (B, K)
                yield frame, self.head.logits(last, frame)
                features, state = self.features(self.inputs(frame.unsqueeze(0), False), state)
                last = features[-1]
        finally:
            self.train(was_training)

    def _draw(
        self,
        features: Tensor,
        temperature: float | Sequence[float],
        generator: torch.Generator | Sequence[torch.Generator] | None,
    ) -> Tensor:
        """A frame per row of ``features`` (B, H) -> (B, K), all rows at once, or with
        per-column temperatures or generators each row alone."""
        one_temperature = isinstance(temperature, (int, float))
        if one_temperature and (generator is None or isinstance(generator, torch.Generator)):
            return self.head.sample(features, temperature, generator)
        B = features.shape[0]
        temperatures = [temperature] * B if one_temperature else list(temperature)
        generators = generator if isinstance(generator, Sequence) else [generator] * B
        if len(temperatures) != B or len(generators) != B:
            raise RnnkitError(f"give one temperature and one generator per column ({B})")
        rows = zip(features.split(1), temperatures, generators)
        return torch.cat([self.head.sample(f, t, g) for f, t, g in rows])

    def generate(
        self,
        n_frames: int,
        prime: Tensor | None = None,
        batch: int = 1,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The primer (if any) followed by ``n_frames`` sampled frames: (T0 + n, B, K).
        ``temperature`` scales the logits (0: each key's likelier value); ``generator`` makes
        sampling reproducible. See `stream`."""
        frames = [f for f, _ in self.stream(n_frames, prime, batch, temperature, generator)]
        parts = ([] if prime is None else [prime]) + ([torch.stack(frames)] if frames else [])
        if not parts:
            return torch.zeros(0, batch, self.keys)
        return torch.cat(parts)
