"""Data-parallel training over processes and machines: `torch.distributed` and
`torch.nn.parallel.DistributedDataParallel`.

Launch any ``rnnkit train`` command with ``torchrun`` (see docs/distributed.md)::

    torchrun --nproc-per-node 2 -m rnnkit train charlm --text notes.txt --out runs/notes

`Trainer` finds torchrun's environment (``WORLD_SIZE`` > 1) and joins the process group with the
backend of its device (`join`): gloo on the CPU, NCCL on CUDA with every rank on its own GPU
(``LOCAL_RANK``). Every rank draws the same global batch from the shared, seeded generator and
keeps its own 1/world slice of it (`shard_batch`: disjoint parts of each global batch that cover
it, the role a ``DistributedSampler`` plays, with the exactness of one process). The task's loss
runs inside ``DistributedDataParallel`` (`wrap`: the wrapper holds the task's loss as a module, so
tasks keep calling their models through submodules and methods); DDP starts every rank from rank
0's parameters and averages the gradients in buckets during the backward pass, so every rank
applies the same update, equal to one process training on the global batch. The loss is
averaged too (`mean`), for the log and the NaN check. Only rank 0 writes the run (config,
checkpoints, metrics, plots); the other ranks read it when resuming. Stopping (budget,
Ctrl-C/SIGTERM, early stopping, divergence) is decided for all ranks at once (`World.any`).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rnnkit.errors import RnnkitError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    size: int = 1
    #: this rank's device: its tensors and its collectives' (gloo: CPU, NCCL: its GPU)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def writer(self) -> bool:
        """Whether this process writes the run (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def any(self, flag: int) -> int:
        """The largest ``flag`` of all ranks (a stop decision taken by any is taken by all)."""
        if self.size == 1:
            return flag
        value = torch.tensor([flag], dtype=torch.int64, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value)


def join(device: torch.device | None = None) -> World:
    """Join torchrun's process group if this process was launched by it (``WORLD_SIZE`` > 1),
    for training on ``device`` (default: the CPU): gloo on the CPU, NCCL on CUDA, where every
    rank takes the GPU of its ``LOCAL_RANK`` (the returned `World`'s device)."""
    device = device or torch.device("cpu")
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=device)
    if not dist.is_available():
        raise RnnkitError("this PyTorch build has no torch.distributed; train in one process")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            gpus = torch.cuda.device_count()
            raise RnnkitError(
                f"process {local} of this machine has no GPU of its own ({gpus} CUDA devices): "
                "start at most that many processes per machine (--nproc-per-node)"
            )
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    elif device.type != "cpu":
        raise RnnkitError(
            f"data-parallel training runs on CPUs (gloo) or CUDA GPUs (NCCL), not {device.type}; "
            "use --device cpu or cuda"
        )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        options = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **options)
        atexit.register(dist.destroy_process_group)
    return World(dist.get_rank(), dist.get_world_size(), device)


class TaskLoss(nn.Module):
    """A task's loss over its model as one module, the unit `DistributedDataParallel` wraps:
    ``forward(batch, state)`` returns ``task.loss(model, batch, state).loss`` and keeps the whole
    `StepOutput` in ``last``."""

    def __init__(self, task: Any, model: nn.Module) -> None:
        super().__init__()
        self.__dict__["task"] = task  # not registered, even if it were a module
        self.model = model
        self.last: Any = None

    def forward(self, batch: Any, state: Any) -> Tensor:
        self.last = self.task.loss(self.model, batch, state)
        return self.last.loss


def wrap(task: Any, model: nn.Module, world: World) -> nn.Module:
    """``TaskLoss(task, model)``, in `DistributedDataParallel` when there are several ranks
    (which gives every rank rank 0's parameters and buffers now, and averages the gradients in
    the backward pass). Parameters a step does not use are allowed."""
    loss = TaskLoss(task, model)
    if world.size == 1:
        return loss
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the C++ reducer's notes on unused parameters
        return DistributedDataParallel(loss, device_ids=ids, find_unused_parameters=True)


def mean(value: Tensor, world: World) -> Tensor:
    """``value`` (detached) averaged over the ranks."""
    value = value.detach()
    if world.size == 1:
        return value
    total = value.to(torch.float64).reshape(1).clone()
    dist.all_reduce(total)
    return (total[0] / world.size).to(value.dtype)


def shard_batch(batch: Any, world: World, dim: int = 0) -> Any:
    """This rank's slice of every tensor of ``batch`` (nested tuples, lists, dicts and
    dataclasses of tensors; other values kept) along ``dim``, the batch dimension.

    Raises:
        RnnkitError: the batch does not split into equal slices.
    """
    if world.size == 1:
        return batch
    if isinstance(batch, Tensor):
        size = batch.shape[dim]
        if size % world.size:
            raise RnnkitError(
                f"a batch of {size} does not split over {world.size} processes; make --batch a "
                f"multiple of {world.size}"
            )
        part = size // world.size
        return batch.narrow(dim, world.rank * part, part)
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard_batch(b, world, dim) for b in batch)
    if isinstance(batch, dict):
        return {k: shard_batch(v, world, dim) for k, v in batch.items()}
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        values = {f.name: shard_batch(getattr(batch, f.name), world, dim)
                  for f in dataclasses.fields(batch)}  # fmt: skip
        return dataclasses.replace(batch, **values)
    return batch
