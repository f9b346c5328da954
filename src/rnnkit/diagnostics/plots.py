"""Figures of the diagnostics, drawn with matplotlib's Agg canvas (no display needed) as PNG.

Every function takes plain data (tensors, metric records) and a path, and writes one PNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rnnkit.diagnostics.gradient_flow import fit_decay
from rnnkit.io import atomic_write_bytes


def _figure(panels: int, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6 * panels + 0.8, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_gradient_flow(
    panels: Mapping[str, Mapping[str, Tensor]], path: str | Path, title: str = ""
) -> Path:
    """log ||dL/dh_t|| against t: one subplot per panel (e.g. "at initialisation", "trained"),
    one line per model, labelled with its fitted factor per step back in time.

    panels: {panel title: {model label: norms (T,)}}.
    """
    fig, axes = _figure(len(panels))
    for ax, (name, curves) in zip(axes, panels.items()):
        for label, norms in curves.items():
            norms = norms.double()
            shown = norms.where(norms > 0, torch.nan)  # log scale: zeros (underflow) left out
            ax.semilogy(
                range(len(norms)), shown, lw=1.4, label=f"{label} (x{fit_decay(norms):.3f}/step)"
            )
        ax.set_title(name)
        ax.set_xlabel("time step t (the loss is read after the last step)")
        ax.set_ylabel("||dL/dh_t||")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_validation_curves(
    runs: Mapping[str, Sequence[dict[str, Any]]],
    path: str | Path,
    baseline: float | None = None,
    target: float | None = None,
    ylabel: str = "validation loss",
    title: str = "",
) -> Path:
    """Validation loss against step for several runs (records of their metrics.jsonl), log y,
    with the memoryless ``baseline`` (dashed) and the ``target`` that counts as solved (dotted).
    A run's final evaluation (its ``"final"`` record: the test set for the memory tasks) is a
    star at the step where training stopped."""
    fig, (ax,) = _figure(1)
    for label, records in runs.items():
        valid = [r for r in records if r.get("split") == "valid"]
        points = [(r["step"], r["loss"]) for r in valid if not r.get("final")]
        color = None
        if points:
            (line,) = ax.plot(*zip(*points), "o-", ms=2.5, lw=1.2, label=label)
            color = line.get_color()
        for r in valid:
            if r.get("final"):
                ax.plot([r["step"]], [r["loss"]], "*", ms=10, color=color)
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="grey", lw=1, label=f"baseline {baseline:.3g}")
    if target is not None:
        ax.axhline(target, ls=":", color="black", lw=1, label=f"solved < {target:g}")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_weight_gradients(
    runs: Mapping[str, Sequence[dict[str, Any]]],
    path: str | Path,
    key: str = "grad_norm_hh",
    title: str = "",
) -> Path:
    """Left: the gradient norm of the recurrent weights (``key`` of the train records, before
    clipping) against step; right: the training loss. One line per run, log y on both."""
    fig, (left, right) = _figure(2)
    for label, records in runs.items():
        train = [r for r in records if r.get("split") == "train"]
        norms = [(r["step"], r[key]) for r in train if key in r and math.isfinite(r[key])]
        if norms:
            left.plot(*zip(*norms), lw=1.1, label=label)
        right.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1.1, label=label)
    left.set_ylabel("||dL/dW_hh|| before clipping")
    right.set_ylabel("training loss")
    for ax in (left, right):
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(confusion: Tensor, classes: Sequence[str], path: str | Path, title: str = ""):
    """A confusion matrix (C, C), rows the true class, columns the predicted, with counts."""
    fig, (ax,) = _figure(1, height=5.0)
    fig.set_size_inches(max(4.5, 0.55 * len(classes) + 2.5), max(4.0, 0.5 * len(classes) + 2))
    ax.imshow(confusion.numpy(), cmap="Blues")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=90 if max(map(len, classes)) > 3 else 0)
    ax.set_yticks(ticks, classes)
    high = float(confusion.max())
    for (i, j), n in zip(confusion.nonzero().tolist(), confusion[confusion > 0].tolist()):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                color="white" if n > high / 2 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_ctc_alignment(
    features: Tensor, log_probs: Tensor, labels: Sequence[str], path: str | Path, title: str = ""
):
    """Features (T, F) above the CTC posteriors (T, K) (class 0 the blank, dotted), on the same
    time axis; each non-blank class's peak is labelled with ``labels[k]``."""
    fig, (ax,) = _figure(1, height=5.6)
    ax.remove()
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    top.imshow(features.T.numpy(), origin="lower", aspect="auto", cmap="magma")
    top.set_ylabel("feature")
    top.set_title(title, fontsize=10)
    probs = log_probs.exp()
    bottom.plot(probs[:, 0].numpy(), ":", color="grey", label="blank")
    for k in range(1, probs.shape[1]):
        bottom.plot(probs[:, k].numpy(), lw=1.2)
    best = probs.argmax(1)
    for t in range(len(best)):
        if best[t] != 0 and (t == 0 or best[t] != best[t - 1]):
            bottom.annotate(labels[int(best[t])], (t, float(probs[t, best[t]])), fontsize=9,
                            ha="center", va="bottom")  # fmt: skip
    bottom.set_ylim(0, 1.12)
    bottom.set_xlabel("frame")
    bottom.set_ylabel("posterior")
    return _save(fig, path)


def plot_attention(
    weights: Tensor,
    source: Sequence[str],
    target: Sequence[str],
    path: str | Path,
    title: str = "",
):
    """An attention heat map (T, S): row t is where output token ``target[t]`` looked among the
    ``source`` tokens (or image regions)."""
    fig, (ax,) = _figure(1)
    fig.set_size_inches(max(4.5, 0.32 * len(source) + 2.5), max(3.5, 0.3 * len(target) + 2))
    ax.imshow(weights.detach().float().numpy(), cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source)), source, rotation=90, fontsize=8)
    ax.set_yticks(range(len(target)), target, fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_captioned_images(
    images: Sequence[Any],
    captions: Sequence[str],
    path: str | Path,
    title: str = "",
    references: Sequence[str] | None = None,
):
    """Grayscale pictures (H, W) one under the other, each with its caption above it; with
    ``references``, the true caption too, and the caption green if it is exactly right, else
    red."""
    import numpy as np

    count = len(images)
    height, width = np.asarray(images[0]).shape
    fig, (ax,) = _figure(1)
    ax.remove()
    fig.set_size_inches(max(4.0, 2.2 * width / height), 1.5 + 1.45 * count)
    axes = fig.subplots(count, 1, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        ax.imshow(np.asarray(images[i]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        text, color = captions[i], "black"
        if references is not None:
            color = "darkgreen" if captions[i] == references[i] else "firebrick"
            text = f"{captions[i]}\n(true: {references[i]})" if color != "darkgreen" else text
        ax.set_title(text, fontsize=8, color=color)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_image_attention(
    image: Any,
    weights: Tensor,
    words: Sequence[str],
    path: str | Path,
    title: str = "",
    region: int | None = None,
):
    """Where each output word looked: the picture (H, W) once per word, one under the other (a
    wide scene reads best that way), with that word's attention (T, h, w) over the image
    regions laid on it in red. Region (i, j) covers ``region`` pixels from (i, j) * region
    (default H // h); the weights are scaled to each word's own maximum."""
    import numpy as np

    image = np.asarray(image)
    steps, h, w = weights.shape
    region = region or image.shape[0] // h
    fig, (ax,) = _figure(1)
    ax.remove()
    ratio = image.shape[1] / image.shape[0]
    fig.set_size_inches(max(4.0, 1.6 * ratio + 1.2), 1.0 + 1.0 * max(1, steps))
    axes = fig.subplots(max(1, steps), 1, squeeze=False)[:, 0]
    for t, ax in enumerate(axes):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if t >= steps:
            continue
        heat = weights[t].detach().float().numpy()
        heat = heat / max(float(heat.max()), 1e-12)
        overlay = np.zeros((h, w, 4))
        overlay[..., 0], overlay[..., 3] = 1.0, 0.75 * heat
        ax.imshow(overlay, extent=(-0.5, w * region - 0.5, h * region - 0.5, -0.5),
                  interpolation="nearest")  # fmt: skip
        ax.set_xlim(-0.5, image.shape[1] - 0.5)
        ax.set_ylim(image.shape[0] - 0.5, -0.5)
        ax.set_ylabel(words[t], rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
