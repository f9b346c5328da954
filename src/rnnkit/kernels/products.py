"""The engine's big matrix products (the input projection, the weight gradients): float32 on the
CPU through the extension's ``rnnkit::matmul`` operator, which runs them on oneDNN's matmul where
torch runs it (up to twice as fast as MKL's on CPUs MKL does not tune for,
``csrc/products.h``); float64, ``RNNKIT_GEMM=aten`` and everything else on torch's own."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.kernels.build import _state, handles, loops_loaded


def _tuned_products(x: Tensor) -> bool:
    """True if the extension's products take tensors like ``x`` (CPU float32, loops enabled)."""
    return x.dtype == torch.float32 and handles(x) and _state["enabled"] and loops_loaded()


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a (M, K) @ b (K, N) for the engine's big products (the input projection, the weight
    gradients): big float32 products through oneDNN, whose kernels run them up to twice as fast
    as MKL's on CPUs MKL does not tune for (``csrc/products.h``); else ``@``."""
    if not _tuned_products(a):
        return a @ b
    return torch.ops.rnnkit.matmul(a, b)


class _Linear(torch.autograd.Function):
    """x (N, I) @ w^T + b with every product through `matmul`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = matmul(x, weight.t())
        return out if bias is None else out.add_(bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        # building a graph for a higher-order gradient: torch's own (differentiable) products
        product = torch.mm if torch.is_grad_enabled() else matmul
        grad_x = product(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = product(grad.t(), x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``nn.functional.linear`` over x (..., I) with its products through `matmul` (float32 on
    the CPU with the extension; else ``nn.functional.linear`` itself)."""
    if not _tuned_products(x):
        return torch.nn.functional.linear(x, weight, bias)
    out = _Linear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])
