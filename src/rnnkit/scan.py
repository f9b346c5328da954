"""Recurrences linear in the state: minGRU and minLSTM, all steps' gates at once.

Feng et al. 2024 ("Were RNNs All We Needed?") drop the state from the gates, so that

    minGRU:   z_t = sigmoid(W_z x_t),  h~_t = g(W_h x_t),  h_t = (1 - z_t) h_{t-1} + z_t h~_t
    minLSTM:  f_t, i_t = sigmoid(W_f x_t), sigmoid(W_i x_t);  f', i' = f, i / (f + i)
              h~_t = g(W_h x_t),  h_t = f'_t h_{t-1} + i'_t h~_t

with g(v) = v + 0.5 for v >= 0, sigmoid(v) below (positive, so the scan can run in log space).
Each is h_t = a_t h_{t-1} + b_t with a_t, b_t computed from x alone: one matrix product gives
every step's gate pre-activations at once, and what is left is pointwise gate math and the scan.
Two ways to run them (``mode``):

- ``"linear_scan"`` (default): the recurrence as it is written, with a hand-written backward,
  the reverse recurrence g_t = dL/dh_t + a_{t+1} g_{t+1}, dL/da_t = g_t h_{t-1}, dL/db_t = g_t,
  dL/dh_0 = a_1 g_1. Both walk the T steps in C++ (``csrc/scan.cpp``, built on first use like
  the GRU loops, see `rnnkit.kernels.build.scan_extension`), vectorised over the B * H elements of a
  step and split between threads by batch row: exact in float32 as the step mode is, with no
  logarithms and no chunking. For minGRU and minLSTM themselves (`_MinScan`) the gates are
  fused into the same passes (the backward recomputes them from the projection): as separate
  torch kernels with autograd they cost more than the input projection itself (at T=4096,
  B=16, H=256, one thread: 1.66 s against 0.66 s for the projection), fused about 0.15 s, so a
  layer costs little more than its ``nn.Linear``. `linear_scan` is the recurrence alone, as a
  custom autograd Function (C++ too), for other a, b. Without the extension (``RNNKIT_FUSED=0``,
  a failed build, which warns, or tensors other than CPU float32/float64) the gates run as torch
  ops (`linear_coefficients`) and `linear_scan` as a Python loop, one ``addcmul`` per step;
  2x slower at that size, the same results.
- ``"log_scan"``: Heinsen's (2023) parallel scan the paper describes, in log space with a
  cumulative sum and ``logcumsumexp`` (`coefficients`, `scan_log`),

      A_t = sum_{s<=t} log a_s                   (cumsum)
      h_t = exp(A_t) h_0 + exp(A_t + logcumsumexp_{s<=t}(log b_s - A_s))

  with the h_0 term kept apart (linear in h_0), so any initial state, of any sign, works; run in
  chunks of `CHUNK` steps for float32 accuracy. It has no sequential loop, the shape of
  computation a GPU wants, but on the CPU autograd through ``logcumsumexp`` plus the chunking
  made it 4x slower than rnnkit's GRU at the size above, where "linear_scan" is 3.3x faster
  (minLSTM: 2.2x). Its float32 gradients are also less accurate (4e-5 of the largest gradient
  against 5e-7), and with saturated gates (|pre-activation| in the hundreds) its outputs drift by
  1e-4. Kept as the paper's formulation and as a reference the tests compare the default with.

Why not 10x over the GRU, as reported on GPUs: there the GRU is latency-bound, one small step
after another. On a CPU it runs at GEMM speed, and minGRU's input projection (2H outputs) is a
third of a GRU's matrix work (3H input + 3H recurrent), minLSTM's (3H) half: the projection
alone is 4.4x / 2.5x faster than the GRU, which bounds these layers on a CPU.

Both modes give the same results (to float32 rounding), as does `step`, one step at a time for
generation. Shapes: T steps, B batch, I input size, H hidden size; time-major as the other layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.functional import logsigmoid, softplus

from rnnkit.dropout import dropout
from rnnkit.errors import RnnkitError, first_order_only
from rnnkit.kernels import build, loops, products
from rnnkit.recurrence import lengths_to_mask, reverse_within_lengths

_SECOND_ORDER = "for a second derivative through MinGRU or MinLSTM use mode='log_scan'"

CHUNK = 64  # steps per parallel scan; see `scan_log`
MODES = ("linear_scan", "log_scan")


def log_g(v: Tensor) -> Tensor:
    """log of g(v) = v + 0.5 (v >= 0) or sigmoid(v) (v < 0), computed stably."""
    return torch.where(v >= 0, torch.log(torch.relu(v) + 0.5), -softplus(-v))


def g(v: Tensor) -> Tensor:
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def scan_log(log_a: Tensor, log_b: Tensor, h0: Tensor, chunk: int = CHUNK) -> Tensor:
    """h_t = a_t h_{t-1} + b_t for all t, from log a, log b (T, B, H) and h0 (B, H) -> (T, B, H).

    Runs in chunks of ``chunk`` steps, carrying h between them: within a chunk the cumulative
    sums stay small, which keeps float32 within 1e-5 of the sequential recurrence (over one scan
    of 2048 steps, float32 drifted by 1.5e-4).
    """
    outputs = []
    for start in range(0, log_a.shape[0], chunk):
        a_star = torch.cumsum(log_a[start : start + chunk], dim=0)
        b_star = torch.logcumsumexp(log_b[start : start + chunk] - a_star, dim=0)
        h0 = torch.exp(a_star) * h0 + torch.exp(a_star + b_star)
        outputs.append(h0)
        h0 = h0[-1]
    return torch.cat(outputs)


def linear_scan(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """h_t = a_t h_{t-1} + b_t for all t, from a, b (T, B, H) and h0 (B, H) -> h (T, B, H).

    Differentiable in a, b and h0 (first order: the backward is itself not differentiable).
    """
    if a.dim() != 3 or a.shape != b.shape or a.shape[1:] != h0.shape:
        raise RnnkitError(f"linear_scan needs a and b (T, B, H) and h0 (B, H), got "
                          f"{tuple(a.shape)}, {tuple(b.shape)}, {tuple(h0.shape)}")  # fmt: skip
    if not a.dtype == b.dtype == h0.dtype:
        raise RnnkitError(f"linear_scan needs one dtype, got {a.dtype}, {b.dtype}, {h0.dtype}")
    return _LinearScan.apply(a, b, h0)


def _kernels(*tensors: Tensor) -> bool:
    """True if the scan operators take these tensors (else the Python loops run)."""
    if all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors):
        return build.scan_loaded()
    return False


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        kernel = _kernels(a, b, h0)
        h = _OPS.linear_scan_forward(a, b, h0) if kernel else _forward_loop(a, b, h0)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    @first_order_only(_SECOND_ORDER)
    def backward(ctx, grad_h: Tensor):
        a, h, h0 = ctx.saved_tensors
        if _kernels(grad_h, a, h, h0):
            grad_a, grad_b, grad_h0 = _OPS.linear_scan_backward(grad_h, a, h, h0)
        else:
            grad_a, grad_b, grad_h0 = _backward_loop(grad_h, a, h, h0)
        return grad_a, grad_b, grad_h0


class _MinScan(torch.autograd.Function):
    """The gates of minGRU (kind 0) / minLSTM (kind 1) and the scan in one C++ pass each way."""

    @staticmethod
    def forward(ctx, kind: int, projected: Tensor, h0: Tensor, mask: Tensor | None):
        flat_mask = (torch.empty(0, dtype=torch.bool, device=h0.device) if mask is None
                     else mask.reshape(mask.shape[:2]).contiguous())  # fmt: skip
        h = _OPS.min_scan_forward(projected, h0, flat_mask, kind)
        ctx.kind = kind
        ctx.save_for_backward(projected, h, h0, flat_mask)
        return h

    @staticmethod
    @first_order_only(_SECOND_ORDER)
    def backward(ctx, grad_h: Tensor):
        projected, h, h0, flat_mask = ctx.saved_tensors
        grad_p, grad_h0 = _OPS.min_scan_backward(grad_h, projected, h, h0, flat_mask, ctx.kind)
        return None, grad_p, grad_h0, None


_OPS = torch.ops.rnnkit


def _forward_loop(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    h = torch.empty_like(a, memory_format=torch.contiguous_format)
    previous = h0
    for t in range(a.shape[0]):
        previous = torch.addcmul(b[t], a[t], previous, out=h[t])
    return h


def _backward_loop(grad_h: Tensor, a: Tensor, h: Tensor, h0: Tensor):
    """The reverse recurrence g_t = dL/dh_t + a_{t+1} g_{t+1} -> (dL/da, dL/db = g, dL/dh0)."""
    grad_b = torch.empty_like(h)
    grad_b[-1] = grad_h[-1]
    for t in range(a.shape[0] - 2, -1, -1):
        torch.addcmul(grad_h[t], a[t + 1], grad_b[t + 1], out=grad_b[t])
    grad_a = torch.empty_like(h)
    torch.mul(grad_b[1:], h[:-1], out=grad_a[1:])
    torch.mul(grad_b[0], h0, out=grad_a[0])
    return grad_a, grad_b, a[0] * grad_b[0]


class _MinRecurrence(nn.Module):
    """Stacked minGRU / minLSTM layers with ``lengths``, bidirectional and dropout between layers.

    ``forward(input, hx=None, lengths=None) -> (output, h_n)`` computes every step's gates at
    once and runs the scan (``mode``: "linear_scan", the default, or "log_scan"; see the module
    docstring); ``step(x_t, hx) -> (output_t, h_n)`` one step at a time for generation (same
    result).
    Shapes: input (T, B, I) (or (B, T, I) with batch_first), hx / h_n (L * D, B, H),
    output (T, B, D * H), x_t (B, I), output_t (B, D * H).
    """

    num_gates = 2

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        mode: str = "linear_scan",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise RnnkitError(f"{type(self).__name__}: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.dropout, self.bidirectional = batch_first, dropout, bidirectional
        directions = 2 if bidirectional else 1
        self.projections = nn.ModuleList(
            nn.Linear(
                input_size if index < directions else hidden_size * directions,
                self.num_gates * hidden_size,
                bias=bias,
            )
            for index in range(num_layers * directions)
        )

    def coefficients(self, projected: Tensor) -> tuple[Tensor, Tensor]:
        """log a_t and log b_t (T, B, H) from the projected input (T, B, G*H), for "log_scan"."""
        raise NotImplementedError

    def linear_coefficients(self, projected: Tensor) -> tuple[Tensor, Tensor]:
        """a_t and b_t (T, B, H) from the projected input (T, B, G*H)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, mode={self.mode}"
        )

    def forward(self, input: Tensor, hx: Tensor | None = None, lengths: Tensor | None = None):
        x = input.transpose(0, 1) if self.batch_first else input
        if loops.exporting(x) and not self._records_scan(x):
            raise RnnkitError(
                f"{type(self).__name__} cannot be exported to ONNX or traced: its scan is not an "
                "operator ONNX has; torch.export records it as rnnkit's scan operator (mode "
                "'linear_scan', the default); or run it in PyTorch"
            )
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise RnnkitError(
                f"{type(self).__name__}: input must have shape (T, B, {self.input_size}), "
                f"got {tuple(input.shape)}"
            )
        directions = 2 if self.bidirectional else 1
        hx = self._initial_state(hx, x)
        mask = None if lengths is None else lengths_to_mask(torch.as_tensor(lengths), x.shape[0])
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                x_dir = reverse_within_lengths(x, lengths) if direction else x
                out = self._scan(self._project(index, x_dir), hx[index], mask)
                finals.append(out[-1])
                if mask is not None:
                    out = out * mask
                outputs.append(reverse_within_lengths(out, lengths) if direction else out)
            x = torch.cat(outputs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = dropout(x, self.dropout)
        output = x.transpose(0, 1) if self.batch_first else x
        return output, torch.stack(finals)

    def _records_scan(self, x: Tensor) -> bool:
        """True if ``torch.export`` may record this layer on rnnkit's min_scan operator."""
        exact = _KINDS.get(type(self)) is not None and self.mode != "log_scan"
        return exact and loops.records_operators() and _kernels(x)

    def _project(self, index: int, x: Tensor) -> Tensor:
        """The input projection of layer-direction ``index`` (T, B, G*H): a plain ``nn.Linear``
        through `rnnkit.kernels.products.linear` (oneDNN for big float32 products), else the
        module."""
        projection = self.projections[index]
        hooked = projection._forward_hooks or projection._forward_pre_hooks
        if type(projection) is not nn.Linear or hooked:
            return projection(x)
        return products.linear(x, projection.weight, projection.bias)

    def _scan(self, projected: Tensor, h0: Tensor, mask: Tensor | None) -> Tensor:
        """All T states (T, B, H) of one layer and direction; past a sequence's end (mask False)
        a = 1 and b = 0, so the state holds."""
        if self.mode == "log_scan":
            log_a, log_b = self.coefficients(projected)
            if mask is not None:
                log_a = log_a.masked_fill(~mask, 0.0)
                log_b = log_b.masked_fill(~mask, float("-inf"))
            return scan_log(log_a, log_b, h0)
        kernel = _kernels(projected, h0)
        kind = _KINDS.get(type(self))  # exact classes: a subclass may change the gates
        if kernel and kind is not None:  # gates and scan fused in C++
            return _MinScan.apply(kind, projected, h0, mask)
        a, b = self.linear_coefficients(projected)
        if mask is not None:
            a, b = a.masked_fill(~mask, 1.0), b.masked_fill(~mask, 0.0)
        return linear_scan(a, b, h0)

    def step(self, x_t: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step of a unidirectional stack: x_t (B, I), hx (L, B, H) -> (h_t (B, H), h_n)."""
        if self.bidirectional:
            raise RnnkitError(f"{type(self).__name__}.step needs bidirectional=False")
        hx = self._initial_state(hx, x_t[None])
        states = []
        for layer in range(self.num_layers):
            a, b = self.linear_coefficients(self.projections[layer](x_t))
            x_t = a * hx[layer] + b
            states.append(x_t)
        return x_t, torch.stack(states)

    def _initial_state(self, hx: Tensor | None, x: Tensor) -> Tensor:
        shape = (self.num_layers * (2 if self.bidirectional else 1), x.shape[1], self.hidden_size)
        if hx is None:
            return x.new_zeros(shape)
        if tuple(hx.shape) != shape:
            raise RnnkitError(
                f"{type(self).__name__}: hx must have shape {shape}, got {tuple(hx.shape)}"
            )
        if hx.dtype != x.dtype:
            raise RnnkitError(f"{type(self).__name__}: hx is {hx.dtype} but the input is "
                              f"{x.dtype}; give both the same dtype")  # fmt: skip
        return hx


class MinGRU(_MinRecurrence):
    """minGRU (Feng et al. 2024): h_t = (1 - z_t) h_{t-1} + z_t g(h~_t), gates from x_t only.

    ``projections[k]`` maps the input to [z | h~] pre-activations (2H). See `_MinRecurrence`.
    """

    def coefficients(self, projected: Tensor) -> tuple[Tensor, Tensor]:
        k, pre = projected.chunk(2, dim=-1)
        return -softplus(k), -softplus(-k) + log_g(pre)  # log(1 - z), log z + log g(h~)

    def linear_coefficients(self, projected: Tensor) -> tuple[Tensor, Tensor]:
        k, pre = projected.chunk(2, dim=-1)
        z = torch.sigmoid(k)
        return 1 - z, z * g(pre)


class MinLSTM(_MinRecurrence):
    """minLSTM (Feng et al. 2024): h_t = f'_t h_{t-1} + i'_t g(h~_t), f' + i' = 1.

    ``projections[k]`` maps the input to [f | i | h~] pre-activations (3H). See `_MinRecurrence`.
    """

    num_gates = 3

    def coefficients(self, projected: Tensor) -> tuple[Tensor, Tensor]:
        f, i, pre = projected.chunk(3, dim=-1)
        diff = softplus(-f) - softplus(-i)  # log i - log f
        return -softplus(diff), -softplus(-diff) + log_g(pre)  # log f', log i' + log g(h~)

    def linear_coefficients(self, projected: Tensor) -> tuple[Tensor, Tensor]:
        f, i, pre = projected.chunk(3, dim=-1)
        # f' = f / (f + i) = sigmoid(log f - log i): no 0 / 0 when both gates underflow
        f_norm = torch.sigmoid(logsigmoid(f) - logsigmoid(i))
        return f_norm, (1 - f_norm) * g(pre)


_KINDS = {MinGRU: 0, MinLSTM: 1}  # the codes of `csrc/scan.cpp`'s min_scan kernels
