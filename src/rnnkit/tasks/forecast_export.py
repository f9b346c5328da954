"""What ``rnnkit export`` records of a forecast run: the network over scaled input windows.

A client scales its history as `Scalers.inputs` does (model.json: ``scalers``, the targets
then the covariates, then the calendar features), feeds the last rows as ``window``
(B, T, F), and unscales the outputs (``mean``, and ``scale`` for a Gaussian run) with the
targets' scaler; direct mode answers the ``output_chunk_length`` steps after the window,
autoregressive mode one step ahead at every step of it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.errors import RnnkitError
from rnnkit.export import Graph


class _WindowGraph(nn.Module):
    """window (B, T, F) -> mean (B, L_out or T, C) and, for a Gaussian run, scale (same)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, window: Tensor):
        mean, scale = self.net(window)
        return mean if scale is None else (mean, scale)


def export_graph(forecaster, extra: dict | None = None) -> Graph:
    """The `Graph` of a forecast or anomaly run's fitted `Forecaster`, checked on windows of
    the run's own history; ``extra``: more metadata (an anomaly run's threshold)."""
    cfg = forecaster.cfg
    rows = forecaster.scalers.inputs(forecaster.history, cfg.calendar)  # (N, F) scaled
    gaussian = cfg.likelihood is not None
    step_axis = {0: "B"} if cfg.mode == "direct" else {0: "B", 1: "T"}

    def samples(steps: int) -> dict[str, Tensor]:
        """Three windows of ``steps`` rows of the history, ending at 60%, 80% and 100% of it."""
        if len(rows) < steps:
            raise RnnkitError(f"the run's history has {len(rows)} rows, fewer than the {steps} "
                              "steps the export is checked at")  # fmt: skip
        ends = [max(steps, round(f * len(rows))) for f in (0.6, 0.8, 1.0)]
        windows = np.stack([rows[end - steps : end] for end in ends])
        return {"window": torch.tensor(windows, dtype=torch.float32)}

    outputs = ["mean", "scale"] if gaussian else ["mean"]
    axes = {"window": {0: "B", 1: "T"}, **{name: step_axis for name in outputs}}
    metadata = {"scalers": forecaster.scalers.to_dict(), "targets": cfg.targets,
                "covariates": cfg.covariates, "calendar": cfg.calendar, "freq": cfg.freq,
                "mode": cfg.mode, "input_chunk_length": cfg.input_chunk_length,
                "output_chunk_length": cfg.output_chunk_length, "log": cfg.log,
                "likelihood": cfg.likelihood, **(extra or {})}  # fmt: skip
    longest = min(len(rows), cfg.input_chunk_length)
    lengths = (max(2, longest // 2), longest)  # the window the run reads, and half of it
    if lengths[0] == lengths[1]:
        raise RnnkitError(f"the run's history ({len(rows)} rows) is too short to check an export")
    graph = _WindowGraph(forecaster.model)
    source = "windows of the run's own history"
    return Graph(graph, samples(longest), outputs, axes, metadata, samples, source, lengths)
