"""Where a model trains and predicts: ``--device auto|cpu|cuda|mps`` resolved once, batches moved
to it, and the mixed precision each kind of device supports.

- `resolve_device` turns a name into a `torch.device` ("auto": CUDA if available, else Apple's
  MPS if available, else the CPU), or raises `RnnkitError` (one line, exit 2 in the CLI) when the
  device asked for is not there.
- `to_device` moves every tensor of a batch (nested tuples, lists, dicts and dataclasses) to the
  device; tasks build their batches on the CPU and the trainer moves them.
- `autocast_dtype` picks the precision: bfloat16 on a CPU (``--precision bf16``, or ``auto`` on a
  CPU with native bfloat16), on CUDA bfloat16 where the GPU has it, else float16 with a gradient
  scaler (``--precision fp16``).
- `device_of` is the device a model lives on, for code that builds tensors for it.
- `boundary` lets task code that builds CPU tensors (evaluation, prediction) use a model on
  another device: the outermost call into any of the model's modules moves its inputs to the
  device and its outputs back to the CPU. The trainer evaluates under it; `predicting_on` makes
  the models that `rnnkit.training.checkpoint.load_trained` loads (every predict command) live
  on a device behind it.

Checkpoints do not depend on the device: tensors are written from CPU copies
(`rnnkit.training.checkpoint.tensors_to_bytes`) and loaded into the model wherever it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.errors import RnnkitError

#: the names ``--device`` takes
DEVICES = ("auto", "cpu", "cuda", "mps")

#: the names ``--precision`` takes
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The `torch.device` that ``name`` (auto, cpu, cuda, cuda:N, mps) means on this machine.

    Raises:
        RnnkitError: an unknown name, or a device this machine does not have.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    kind, _, index = name.partition(":")
    if kind == "auto" and not index:
        if cuda_available():
            return torch.device("cuda", torch.cuda.current_device())
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind not in DEVICES[1:] or (index and not (kind == "cuda" and index.isdigit())):
        raise RnnkitError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not mps_available():
            raise RnnkitError(
                "--device mps: this machine has no Apple MPS device "
                "(torch.backends.mps.is_available() is False); use --device cpu"
            )
        return torch.device("mps")
    if not cuda_available():
        raise RnnkitError(
            f"--device {name}: this machine has no CUDA device (torch.cuda.is_available() is "
            "False); use --device cpu"
        )
    number = int(index) if index else torch.cuda.current_device()
    if number >= torch.cuda.device_count():
        raise RnnkitError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", number)


def to_device(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor moved to ``device``: tensors in nested tuples (named tuples
    too), lists, dicts and dataclasses; other values kept as they are. A tensor already there is
    returned as it is (no copy)."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(to_device(b, device, non_blocking) for b in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device, non_blocking) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        values = {f.name: to_device(getattr(batch, f.name), device, non_blocking)
                  for f in dataclasses.fields(batch) if f.init}  # fmt: skip
        return dataclasses.replace(batch, **values)
    return batch


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a model without."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CUDA device with bf16, or a
    CPU with AMX or AVX-512 BF16 (where oneDNN's bf16 LSTM runs about 2x faster than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # torch's private probes of the CPU's features; absent: no
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training forward pass for ``precision`` on ``device``, or None
    (float32). fp16 needs a gradient scaler (`needs_scaler`).

    Raises:
        RnnkitError: fp16 on a device other than CUDA.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise RnnkitError(
                f"--precision fp16 needs a CUDA device (training on {device.type}); use bf16"
            )
        return torch.float16
    # auto: what the hardware does natively
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if native_bf16(device) else None


def needs_scaler(dtype: torch.dtype | None) -> bool:
    """float16 gradients underflow: they need `torch.amp.GradScaler`."""
    return dtype == torch.float16


def fused_adamw(device: torch.device) -> bool:
    """Whether torch's fused AdamW runs on ``device`` (one pass over each tensor)."""
    if device.type in ("cpu", "cuda"):
        return True
    try:  # newer builds support more devices
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        return device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # pragma: no cover
        return False


def boundary(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Make ``model`` (on ``device``) usable from code that holds CPU tensors: the outermost
    call into any of its modules (the model, a submodule, or one a method of it calls) gets its
    tensor arguments moved to ``device`` and returns its tensor outputs on the CPU; calls nested
    in it stay on the device. Returns the function that removes the hooks. Nothing is moved
    when ``device`` is the CPU (no hooks)."""
    if device.type == "cpu":
        return lambda: None
    depth = [0]

    def enter(module, args, kwargs):
        depth[0] += 1
        if depth[0] == 1:
            return to_device(args, device), to_device(kwargs, device)
        return None

    def leave(module, args, kwargs, output):
        depth[0] = max(0, depth[0] - 1)
        return to_device(output, "cpu") if depth[0] == 0 else None

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(module.register_forward_hook(leave, with_kwargs=True, always_call=True))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


_PREDICT_DEVICE: ContextVar[torch.device | None] = ContextVar("rnnkit_predict_device", default=None)


@contextmanager
def predicting_on(name: str | None) -> Iterator[torch.device]:
    """Within this block, trained models loaded for prediction (`place_trained`) live on the
    device ``name`` (`resolve_device`; None: the CPU)."""
    device = resolve_device(name or "cpu")
    token = _PREDICT_DEVICE.set(device)
    try:
        yield device
    finally:
        _PREDICT_DEVICE.reset(token)


def place_trained(model: nn.Module) -> nn.Module:
    """``model`` on the device of the enclosing `predicting_on` (unchanged outside one or on
    the CPU), behind a `boundary`, so that the task's CPU tensors reach it."""
    device = _PREDICT_DEVICE.get()
    if device is None or device.type == "cpu":
        return model
    boundary(model.to(device), device)
    return model
