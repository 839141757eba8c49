"""Work shared across processes started by torchrun: documents split by rank, results
gathered to rank 0 with torch.distributed (gloo on the CPU, nccl on CUDA).

`torchrun --nproc_per_node=N -m megazip eval ...` sets RANK, WORLD_SIZE, LOCAL_RANK and
the rendezvous address in the environment; `join` reads them. Without them (a plain run)
the world is this one process and nothing is initialized.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owned: bool = False  # the process group was initialized by join() (close() ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """The device this rank uses: its own GPU (cuda:LOCAL_RANK) under torchrun."""
        if device.startswith("cuda") and self.size > 1:
            return f"cuda:{self.local_rank}"
        return device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not a number") from None


def join(device: str = "cpu", timeout_s: float = 1800) -> World:
    """This process's place among the processes torchrun started (a world of one when not
    under torchrun), joining their process group: nccl when `device` is CUDA, else gloo."""
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return World()
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), local)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return World(rank, size, local, owned=True)


def shard(items: Iterable, world: World) -> Iterator[tuple[int, object]]:
    """(number, item) for this rank's share of `items`: item i goes to rank i mod size.
    Every rank walks the same items in the same order, so the numbers are global."""
    for i, item in enumerate(items):
        if i % world.size == world.rank:
            yield i, item


def gather(local: list, world: World) -> list | None:
    """Concatenation of every rank's `local` list on rank 0 (in rank order); None on the
    other ranks. A world of one returns `local` itself."""
    if world.size <= 1:
        return local
    parts = [None] * world.size if world.is_main else None
    dist.gather_object(local, parts, dst=0)
    return [x for part in parts for x in part] if world.is_main else None


def close(world: World) -> None:
    if world.owned and dist.is_initialized():
        dist.destroy_process_group()
