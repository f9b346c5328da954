"""What ``rnnkit export`` records of a music run: the step function composing frame by frame.

    step: x (T, B, K + 1), noise (B, K), temperature (B,), h (L, B, H) [, c (L, B, H)]
        -> frame (B, K), logits (B, K), h_n [, c_n]

K = 88 piano keys (column k is MIDI pitch 21 + k). Row t of ``x`` is what the model reads at
step t: the previous frame's keys (0/1) and a start flag in column K, 1 only at a piece's first
step, whose keys are all 0. The graph reads the T steps with the state carried (a primer in one
call, then one step per call), and draws the next frame after the last one: key k is on where
``noise[:, k] < sigmoid(logit_k / temperature)`` (temperature 0: where logit_k > 0), the same
draw as `rnnkit.models.heads`; ``logits`` are the draw's logits, for a NADE head each key's
given the keys below it as drawn. ``noise`` is uniform in [0, 1): a client drawing it as
``torch.rand(K, generator=g)`` per row and frame, g seeded with a `MusicPredictor.compose`
seed, composes that seed's piece. To compose: h (and c) zeros, x the start step alone (or with
a primer after it), then each frame drawn, with flag 0, and the state the call gave back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.data.music import KEYS, LOWEST, read_music
from rnnkit.errors import RnnkitError
from rnnkit.export import Graph, first_rows
from rnnkit.models.frames import FrameModel
from rnnkit.models.heads import NADEHead

#: frames each check window is entered after (their state carried in)
LEAD = 4


class _ComposeStep(nn.Module):
    """x (T, B, K + 1), noise (B, K), temperature (B,), h [, c] -> frame (B, K), logits (B, K),
    h_n [, c_n] (module docstring)."""

    def __init__(self, model: FrameModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, noise: Tensor, temperature: Tensor, *state: Tensor):
        features, final = self.model.features(x, state if len(state) > 1 else state[0])
        frame, logits = self._draw(features[-1], noise, temperature.unsqueeze(-1))
        return (frame, logits, *(final if isinstance(final, tuple) else (final,)))

    def _draw(self, features: Tensor, noise: Tensor, temperature: Tensor) -> tuple[Tensor, Tensor]:
        """The next frame (B, K) drawn from features (B, H) with ``noise``, and its logits."""
        head = self.model.head
        if not isinstance(head, NADEHead):
            logits = head.proj(features)
            return _bernoulli(logits, noise, temperature), logits
        b, a = head.proj(features).split([head.out_features, head.hidden_size], -1)
        frame, logits = [], []
        for k in range(head.out_features):  # each key given those drawn below it
            logit = b[:, k : k + 1] + torch.sigmoid(a) @ head.V[k].unsqueeze(-1)  # (B, 1)
            key = _bernoulli(logit, noise[:, k : k + 1], temperature)
            a = a + key * head.W[k]
            frame.append(key)
            logits.append(logit)
        return torch.cat(frame, -1), torch.cat(logits, -1)


def _bernoulli(logits: Tensor, noise: Tensor, temperature: Tensor) -> Tensor:
    """0/1 floats: noise < sigmoid(logits / temperature), or logits > 0 where temperature is 0."""
    hot = temperature > 0
    probs = torch.sigmoid(logits / torch.where(hot, temperature, torch.ones_like(temperature)))
    return torch.where(hot, (noise < probs).to(logits.dtype), (logits > 0).to(logits.dtype))


def export_graph(
    predictor: Any, build: Callable[[Any], FrameModel], tempo: float
) -> Graph:  # fmt: skip
    """The `Graph` of a music run's `MusicPredictor`, checked on windows of the run's own
    pieces. ``build(settings)`` makes the run's model: the graph records a copy built without
    weight dropout (a training-time noise the exporters refuse; it does nothing in evaluation),
    and is checked against the run's model itself. ``tempo``: compose's default, for
    model.json."""
    cfg, model = predictor.cfg, predictor.model
    try:
        pieces = read_music(cfg.data, cfg.steps_per_quarter).train
    except RnnkitError as err:
        raise RnnkitError(f"the export is checked on the run's pieces: {err}") from None
    plain = build(dataclasses.replace(cfg, weight_dropout=0.0))
    plain.load_state_dict(model.state_dict())
    names = ["h", "c"] if cfg.cell == "lstm" else ["h"]

    def samples(steps: int) -> dict[str, Tensor]:
        """Three windows of ``steps`` steps: the first piece from its start (the start step
        first, a zero state), two others after their first `LEAD` frames (their state)."""
        rolls = [_long(pieces[k % len(pieces)], steps + LEAD) for k in range(3)]
        x = [model.inputs(rolls[0][: steps - 1, None], start=True)]
        with torch.no_grad():
            _, state = model.features(model.inputs(torch.stack([r[:LEAD] for r in rolls], 1),
                                                   start=True))  # fmt: skip
        state = state if isinstance(state, tuple) else (state,)
        state = tuple(torch.cat([torch.zeros_like(s[:, :1]), s[:, 1:]], 1) for s in state)
        x += [model.inputs(r[LEAD : LEAD + steps, None], start=False) for r in rolls[1:]]
        noise = torch.rand(3, KEYS, generator=torch.Generator().manual_seed(steps))
        temperature = torch.tensor([1.0, 0.5, 0.0])
        return dict(zip(["x", "noise", "temperature", *names],
                        (torch.cat(x, 1), noise, temperature, *state)))  # fmt: skip

    axes = {"x": {0: "T", 1: "B"}, "noise": {0: "B"}, "temperature": {0: "B"},
            "frame": {0: "B"}, "logits": {0: "B"}, **{n: {1: "B"} for n in names},
            **{f"{n}_n": {1: "B"} for n in names}}  # fmt: skip
    outputs = ["frame", "logits", *(f"{n}_n" for n in names)]
    metadata = {"keys": KEYS, "lowest_pitch": LOWEST, "highest_pitch": LOWEST + KEYS - 1,
                "start_column": KEYS, "steps_per_quarter": cfg.steps_per_quarter,
                "tempo": tempo, "head": cfg.head, "cell": cfg.cell, "state": names,
                "layers": cfg.layers, "hidden": cfg.hidden}  # fmt: skip
    example = first_rows(samples(7), axes, 2)
    return Graph(_ComposeStep(plain), example, outputs, axes, metadata, samples,
                 f"the run's pieces ({cfg.data})", reference=_ComposeStep(model))  # fmt: skip


def _long(roll: Tensor, frames: int) -> Tensor:
    """``roll`` (T, K) repeated to at least ``frames`` frames."""
    return roll.repeat(-(-frames // len(roll)), 1)
