"""Metrics of a run: ``metrics.jsonl``, the loss-curve PNG, and the progress display.

Every line of ``metrics.jsonl`` is one JSON object with ``step`` and ``split``:

- ``split="train"``: ``loss`` (mean over the steps since the last line), ``lr``, ``grad_norm``
  (global gradient norm *before* clipping, last step), ``grad_norm_max`` (largest since the last
  line), ``clipped`` (steps clipped since the last line), ``tokens_per_s``, ``elapsed`` (seconds);
- ``split="valid"``: ``loss`` and the task's other evaluation metrics, ``elapsed``; the final,
  full evaluation also has ``"final": true``.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from rnnkit.io import append_text, atomic_write_bytes, json_line, read_bytes


class MetricsLog:
    """Append-only ``metrics.jsonl``; each record is flushed as it is written."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled  # disabled: a process that does not write

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line of strict JSON (NaN and infinities as null;
        RnnkitError if the disk is full or read-only)."""
        if self.enabled:
            append_text(self.path, json_line(record))

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (logged after the checkpoint a run resumes from)."""
        if not self.enabled:
            return
        kept = [r for r in self.read() if r["step"] <= step]
        atomic_write_bytes(self.path, "".join(json_line(r) for r in kept).encode())


#: the largest ``metrics.jsonl`` read (a line per logged step: millions of steps)
MAX_METRICS_BYTES = 1 << 30


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``: objects with an integer ``step`` and a string
    ``split`` (anything else, such as a torn last line from a kill, is skipped)."""
    if not os.path.lexists(path):
        return []
    records = []
    for line in read_bytes(path, MAX_METRICS_BYTES).decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if (
            isinstance(record, dict)
            and type(record.get("step")) is int
            and 0 <= record["step"] < 1 << 53
            and isinstance(record.get("split"), str)
        ):
            records.append(record)
    return records


def plot_loss_curve(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Train and validation loss against step, written atomically as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [(r["step"], r["loss"]) for r in records if r["split"] == "train" and _number(r)]
    valid = [(r["step"], r["loss"]) for r in records if r["split"] == "valid" and _number(r)]
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train", lw=1, color="tab:blue")
    if valid:
        ax.plot(*zip(*valid), "o-", label="validation", ms=3, color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def _number(record: dict[str, Any]) -> bool:
    """Whether ``record`` has a finite number as its loss (null where it was NaN)."""
    loss = record.get("loss")
    if not isinstance(loss, (int, float)) or isinstance(loss, bool):
        return False
    return abs(loss) < 1e300 if isinstance(loss, int) else math.isfinite(loss)


class Progress:
    """A tqdm bar on a terminal; plain log lines otherwise (``mode="auto"``).

    ``total_steps`` sizes the bar; with only a time budget the bar counts seconds.
    """

    def __init__(
        self,
        mode: str,
        total_steps: int | None,
        max_time: float | None,
        start_step: int,
        start_elapsed: float,
    ) -> None:
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "log"
        self.mode, self.total_steps, self.max_time = mode, total_steps, max_time
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            by_time = total_steps is None
            self.bar = tqdm(
                total=math.ceil(max_time) if by_time else total_steps,
                initial=int(start_elapsed) if by_time else start_step,
                unit="s" if by_time else "step",
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
            )

    def update(self, step: int, elapsed: float, fields: dict[str, Any]) -> None:
        """Show the state after ``step`` optimizer steps."""
        if self.bar is not None:
            self.bar.n = step if self.total_steps is not None else min(int(elapsed), self.bar.total)
            self.bar.set_postfix_str(_fmt(fields), refresh=True)
        elif self.mode == "log":
            eta = self._eta(step, elapsed)
            tail = f" eta {eta:.0f}s" if eta is not None else ""
            print(f"step {step} {_fmt(fields)} elapsed {elapsed:.0f}s{tail}", flush=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        elif self.mode == "log":
            print(text, flush=True)

    def _eta(self, step: int, elapsed: float) -> float | None:
        etas = []
        if self.total_steps and step:
            etas.append(elapsed / step * (self.total_steps - step))
        if self.max_time:
            etas.append(self.max_time - elapsed)
        return max(0.0, min(etas)) if etas else None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " ".join(parts)
