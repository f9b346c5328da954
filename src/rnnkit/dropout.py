"""Dropout with a fast, stateless mask: `dropout` and the drop-in module `Dropout`.

torch's CPU dropout draws its mask with ``bernoulli_`` from the Mersenne Twister generator, about
20 ns per element on two cores, which made the three dropouts of a language model's training
step (between its layers and before its head) 15-20% of the step. rnnkit's kernel
(``csrc/dropout.cpp``) keeps element i when a hash of (seed, i) says so: one draw from torch's
generator per call (the seed), so ``torch.manual_seed`` still makes training reproducible and a
checkpoint's RNG state still resumes it exactly; the mask is recomputed in the backward instead
of stored. Same distribution as ``nn.Dropout`` (each element kept with probability 1 - p and
scaled by 1 / (1 - p), to 2^-32), different draws.

Runs where the kernel applies (CPU tensors, the extension built); anywhere else it is
``nn.functional.dropout``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit import fused
from rnnkit.errors import RnnkitError


class _Dropout(torch.autograd.Function):
    """x -> x * mask / (1 - p), the mask a function of (seed, element index)."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float, seed: int) -> Tensor:
        ctx.p, ctx.seed = p, seed
        return fused.dropout_extension().dropout(x, p, seed)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _Dropout.apply(grad, ctx.p, ctx.seed), None, None  # the same mask and scale


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """``nn.functional.dropout(x, p, training)`` with rnnkit's faster mask on the CPU.

    x: any shape and floating dtype. Returns a tensor of x's shape (x itself when not training or
    p is 0).
    """
    if not 0.0 <= p <= 1.0:
        raise RnnkitError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0 or x.device.type != "cpu" or fused.dropout_extension() is None:
        return nn.functional.dropout(x, p, training=True)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    return _Dropout.apply(x, p, seed)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments and state) drawing its mask with `dropout`."""

    def forward(self, input: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(input)
        return dropout(input, self.p, self.training)
