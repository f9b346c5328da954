"""Dropout with a fast, stateless mask: `dropout`, the drop-in module `Dropout`,
`locked_dropout` (one mask per sequence) and zoneout's `keep_mask`.

torch's CPU dropout draws its mask with ``bernoulli_`` from the Mersenne Twister generator, about
20 ns per element on two cores, which made the three dropouts of a language model's training
step (between its layers and before its head) 13-25% of the step on the machines measured.
rnnkit's kernel (``csrc/dropout.cpp``) keeps element i when a hash of (seed, i) says so: one
draw from torch's generator per call (the seed), so ``torch.manual_seed`` still makes training
reproducible and a checkpoint's RNG state still resumes it exactly; the mask is recomputed in
the backward instead of stored. Same distribution as ``nn.Dropout`` (each element kept with
probability 1 - p and scaled by 1 / (1 - p), to 2^-32), different draws.

Runs where the kernel applies (CPU tensors, the extension built); anywhere else, and within
`torch_masks`, it is ``nn.functional.dropout`` (and ``torch.rand`` for `keep_mask`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit.errors import RnnkitError
from rnnkit.kernels import build, loops

_switch = {"kernel": True}


@contextlib.contextmanager
def torch_masks() -> Iterator[None]:
    """Within the block, draw masks as torch does (``nn.functional.dropout``, ``torch.rand``):
    under one seed the same masks as ``torch.nn``'s layers."""
    before = _switch["kernel"]
    _switch["kernel"] = False
    try:
        yield
    finally:
        _switch["kernel"] = before


def _kernel(x: Tensor) -> bool:
    """True if rnnkit's dropout operator takes ``x``: a CPU tensor, outside `torch_masks` and
    any graph recording or compiling (its seed is a Python int drawn per call), the extension
    built."""
    if not _switch["kernel"] or x.device.type != "cpu" or loops.exporting(x):
        return False
    return not torch.compiler.is_compiling() and build.dropout_loaded()


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """``nn.functional.dropout(x, p, training)`` with rnnkit's faster mask on the CPU.

    x: any shape and floating dtype. Returns a tensor of x's shape (x itself when not training or
    p is 0).
    """
    if _unchanged(x, p, training):
        return x
    if not x.is_floating_point():
        raise RnnkitError(f"dropout takes a floating-point tensor, got {x.dtype}")
    if p == 1.0 or not _kernel(x):
        return nn.functional.dropout(x, p, training=True)
    return torch.ops.rnnkit.masked_scale(x, p, _seed(), 1.0 / (1.0 - p))


def locked_dropout(
    x: Tensor, p: float, training: bool = True, packed: PackedSequence | None = None
) -> Tensor:
    """Dropout with one mask per sequence, the same at every step (variational dropout on a
    layer's inputs or outputs, Gal & Ghahramani 2016; AWD-LSTM's LockedDropout).

    x: (T, B, F), or the (N, F) data of ``packed`` (its rows step by step, each step's
    sequences in ``packed.sorted_indices`` order: sequence b gets the same mask either way).
    Returns a tensor of x's shape (x itself when not training or p is 0).
    """
    if _unchanged(x, p, training):
        return x
    if x.dim() != (3 if packed is None else 2):
        wanted = "(T, B, F)" if packed is None else "packed.data (N, F)"
        raise RnnkitError(f"locked_dropout takes {wanted}, got shape {tuple(x.shape)}")
    batch = x.shape[1] if packed is None else int(packed.batch_sizes[0])
    mask = dropout(torch.ones(batch, x.shape[-1], dtype=x.dtype, device=x.device), p)  # (B, F)
    if packed is None:
        return x * mask
    order = packed.sorted_indices
    order = torch.arange(batch, device=x.device) if order is None else order.to(x.device)
    sizes = packed.batch_sizes.to(x.device)
    present = torch.arange(batch, device=x.device) < sizes[:, None]  # (T, B): step t's rows
    return x * mask[order.expand(len(sizes), batch)[present]]  # row n's sequence b, (N,)


def keep_mask(shape: tuple[int, ...], keep: float, like: Tensor) -> Tensor:
    """A tensor of ``shape`` with ``like``'s dtype and device: 1 with probability ``keep``, else
    0 (zoneout's masks). The kernel where `dropout` has it, else ``torch.rand(shape) < keep``."""
    if not 0.0 <= keep <= 1.0:
        raise RnnkitError(f"keep probability must be in [0, 1], got {keep}")
    if not 0.0 < keep < 1.0 or not _kernel(like):
        return torch.rand(shape, dtype=like.dtype, device=like.device).lt_(keep).to(like.dtype)
    ones = torch.ones(shape, dtype=like.dtype)
    return torch.ops.rnnkit.masked_scale(ones, 1.0 - keep, _seed(), 1.0)


def _unchanged(x: Tensor, p: float, training: bool) -> bool:
    """True when dropout leaves x as it is (not training, or p = 0); refuses p outside [0, 1]."""
    _check_probability(p)
    return not training or p == 0.0


def _check_probability(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise RnnkitError(f"dropout probability must be in [0, 1], got {p}")


def _seed() -> int:
    """One draw from torch's default generator: the seed of a mask."""
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments and state) drawing its mask with `dropout`."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        _check_probability(p)
        super().__init__(p, inplace)

    def forward(self, input: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(input)
        return dropout(input, self.p, self.training)
