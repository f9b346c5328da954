"""Data-parallel training over processes and machines with `torch.distributed`.

Launch any ``rnnkit train`` command with ``torchrun`` (see docs/distributed.md)::

    torchrun --nproc-per-node 2 -m rnnkit train charlm --text notes.txt --out runs/notes

`Trainer` finds torchrun's environment (``WORLD_SIZE`` > 1), joins the process group (NCCL on
GPUs, gloo on CPU) and trains data-parallel, the scheme of ``DistributedDataParallel``: every rank
starts from rank 0's parameters; every rank draws the same global batch from the shared, seeded
generator and keeps its own 1/world slice of it (`shard_batch`: disjoint parts of each global
batch, the role a distributed sampler plays); after the backward pass the gradients and the loss
are averaged over the ranks (`average`), so every rank applies the same update, equal to one
process training on the global batch. Only rank 0 writes the run (config, checkpoints, metrics,
plots); the other ranks read it when resuming. Stopping (budget, Ctrl-C/SIGTERM, early stopping,
divergence) is decided for all ranks at once.

The gradients are averaged by one all-reduce after the backward pass rather than by wrapping the
model in ``torch.nn.parallel.DistributedDataParallel``: tasks call their models in many ways
(submodules, methods), which the wrapper does not see, and the result is the same.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
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

    @property
    def writer(self) -> bool:
        """Whether this process writes the run (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def any(self, flag: int) -> int:
        """The largest ``flag`` of all ranks (a stop decision taken by any is taken by all)."""
        if self.size == 1:
            return flag
        value = torch.tensor([flag], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value)


def join() -> World:
    """Join torchrun's process group if this process was launched by it (``WORLD_SIZE`` > 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_available():
        raise RnnkitError("this PyTorch build has no torch.distributed; train in one process")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(dist.destroy_process_group)
    return World(dist.get_rank(), dist.get_world_size())


def broadcast_parameters(model: nn.Module, world: World) -> None:
    """Give every rank rank 0's parameters and buffers."""
    if world.size > 1:
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average(params: Iterable[nn.Parameter], loss: Tensor, world: World) -> Tensor:
    """Average the gradients of ``params`` and ``loss`` (returned, detached) over the ranks,
    with one all-reduce of one flat buffer."""
    loss = loss.detach()
    if world.size == 1:
        return loss
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1).to(grads[0].dtype)])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[-1].to(loss.dtype)


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
