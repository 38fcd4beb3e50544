"""Data-parallel setup for ``torchrun``: the same command runs as one process or many.

``torchrun --nproc_per_node N -m d3llm.cli.main train ...`` (or ``torchrun ... $(which d3llm) train ...``) sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``; we then join a process group (NCCL on CUDA, gloo on CPU) and
each rank trains on its slice of every global batch. Without those variables everything is single-process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from d3llm.errors import ConfigError


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun; pick this rank's device (``cuda:LOCAL_RANK`` or CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {want!r} was requested but CUDA is not available on this machine; use 'cpu'")
        dev = torch.device("cuda", local_rank if world > 1 else (torch.device(want).index or 0))
        torch.cuda.set_device(dev)
    elif want == "cpu":
        dev = torch.device("cpu")
    else:
        raise ConfigError(f"device {want!r} is not supported for training; use 'cpu' or 'cuda'")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def set_threads(info: DistInfo, threads: int | None) -> None:
    """torch's CPU threads for this process: ``threads`` when given, else (CPU, several processes) the machine's
    cores split between the processes, else torch's default."""
    if threads is not None:
        torch.set_num_threads(threads)
    elif info.device.type == "cpu" and info.world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))


def teardown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(info: DistInfo, values: list[float]) -> list[float]:
    """Sum a few numbers over ranks (float64 on the rank's device)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_flag(info: DistInfo, ok: bool) -> bool:
    """True iff every rank reports ``ok`` (used to stop all ranks when one fails to read a checkpoint)."""
    if not info.distributed:
        return ok
    t = torch.tensor([0.0 if ok else 1.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() == 0.0
