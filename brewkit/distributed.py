"""Data-parallel training under ``torchrun``: process group, sharded data, the DDP-wrapped trainables.

``torchrun --nproc_per_node=N -m brewkit train RUN.yaml`` (or a Python script using the API) just works:
brewkit initialises the process group from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` when the caller has not
(gloo on CPU, nccl on CUDA). TextBrewer's way, where the user initialises the group, builds a
``DistributedSampler`` and passes ``local_rank``, works too.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
)

from .errors import ConfigError


def wanted(local_rank: int) -> bool:
    """Whether this process is one of several: a group exists, torchrun set WORLD_SIZE > 1, or local_rank >= 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return local_rank >= 0 or int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(local_rank: int, device: torch.device) -> tuple[int, int, torch.device]:
    """Initialise the process group if needed (once per process: later calls find it); returns ``(rank,
    world_size, this process's device)``."""
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError("DDP needs torchrun (or MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE in the "
                              "environment), or a process group initialised before train()", "local_rank")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        index = local_rank if local_rank >= 0 else int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


class Trainables(nn.Module):
    """The student and the projections as one module, so one DDP wrapper averages all their gradients.
    Its forward is the student's; projections are used in the loss, outside forward, which DDP allows."""

    def __init__(self, student: nn.Module, projections: list[nn.Module]):
        super().__init__()
        self.student = student
        self.projections = nn.ModuleList(projections)

    def forward(self, *args, **kwargs):
        return self.student(*args, **kwargs)


def wrap(student: nn.Module, projections: list[nn.Module], device: torch.device,
         find_unused_parameters: bool) -> nn.parallel.DistributedDataParallel:
    """DDP over the trainables only: frozen teachers stay plain modules."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(Trainables(student, projections), device_ids=ids,
                                               output_device=ids[0] if ids else None,
                                               find_unused_parameters=find_unused_parameters)


def is_sharded(loader: Any) -> bool:
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    return isinstance(sampler, DistributedSampler) or getattr(batch_sampler, "num_replicas", 1) > 1


def shard(loader: Any, rank: int, world_size: int, seed: int) -> Any:
    """This rank's share of ``loader``: unchanged when already sharded; a DataLoader over a map-style dataset
    is rebuilt with a ``DistributedSampler`` (shuffling iff the original did); a list of batches is split
    round-robin into equal shares."""
    if world_size == 1 or is_sharded(loader):
        return loader
    if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset) \
            and loader.batch_size is not None:
        sampler = DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank,
                                     shuffle=isinstance(loader.sampler, RandomSampler), seed=seed,
                                     drop_last=loader.drop_last)
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                          collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                          pin_memory=loader.pin_memory, drop_last=loader.drop_last)
    if isinstance(loader, (list, tuple)):
        n = len(loader) // world_size * world_size
        if n == 0:
            raise ConfigError(f"{len(loader)} batches cannot be shared by {world_size} processes", "dataloader")
        return list(loader[rank:n:world_size])
    raise ConfigError("under DDP pass a DataLoader over a map-style dataset (brewkit adds a DistributedSampler), "
                      "a DataLoader whose sampler is a DistributedSampler, or a list of batches", "dataloader")


def mean_over_ranks(values: dict[str, torch.Tensor], world_size: int) -> dict[str, torch.Tensor]:
    """All-reduced means of scalar tensors (one collective for all of them)."""
    if world_size == 1 or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().double().reshape(()) for k in keys])
    dist.all_reduce(stacked)
    return {k: v / world_size for k, v in zip(keys, stacked)}


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def close_process_group() -> None:
    """After a command under ``torchrun``: every process is done with every collective, then the group goes.

    A gloo group left to the interpreter's exit can abort a process (``terminate called without an active
    exception``) while the other is still in its last collective, so torchrun reports a failed run
    (pytorch/pytorch#190489). A DDP or FSDP model's objects (reference cycles of hooks and states that hold the
    group's work) can also outlive ``destroy_process_group`` and reach interpreter finalization, where a gloo
    thread that releases them aborts the process in the same way (measured with two gloo processes: 2 of 30 FSDP
    and 3 of 40 DDP runs; 0 of 130 and 0 of 40 once they are collected first): so the caller drops its
    references to the models and the distiller, and this collects them before the group goes. Nothing to do
    without a process group.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


@dataclass
class DistributedContext:
    """This process's place in the run: rank, world size, device, and the collectives the loop uses. One process
    is ``DistributedContext(device=...)`` (rank 0 of 1), and every method is then a no-op."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    control_group: Any = None  # a gloo group for small CPU-side agreements (the stop flag)

    @classmethod
    def create(cls, local_rank: int, device: torch.device) -> DistributedContext:
        """Join the process group when this process is one of several (see :func:`wanted`)."""
        if not wanted(local_rank):
            return cls(device=device)
        rank, world_size, device = setup(local_rank, device)
        group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        return cls(device=device, rank=rank, world_size=world_size, control_group=group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, student: nn.Module, projections: list[nn.Module], find_unused_parameters: bool) -> nn.Module:
        """DDP over the trainables when there are several processes; the student itself otherwise."""
        if self.world_size == 1:
            return student
        return wrap(student, projections, self.device, find_unused_parameters)

    def shard(self, loader: Any, seed: int) -> Any:
        return shard(loader, self.rank, self.world_size, seed)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        if self.world_size > 1:
            dist.all_reduce(tensor)

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return mean_over_ranks(values, self.world_size)

    def gather_to_main(self, obj: Any) -> list | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere)."""
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def barrier(self) -> None:
        barrier(self.world_size)
