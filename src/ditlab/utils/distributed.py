"""torchrun-aware process-group helpers with a single-process fallback.

Under ``torchrun`` the environment carries RANK, LOCAL_RANK and WORLD_SIZE; without it everything runs as
rank 0 of 1 and no process group is created.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, local rank on its node, world size and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None, timeout_s: float | None = None) -> DistInfo:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU) or run single-process.

    ``device`` forces "cpu" or "cuda"; by default CUDA is used when available. ``timeout_s`` bounds how long a
    collective waits for a frozen or dead peer before failing (None or 0: torch's default, 10 to 30 minutes).
    """
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s >= 0):
        raise ValueError(f"dist_timeout={timeout_s} must be a finite number of seconds >= 0 (0 = torch's default)")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but CUDA is not available; use device='cpu'")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # The device index is the LOCAL rank: using the global rank breaks every node but the first.
        timeout = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None,
                                **timeout)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over all processes (a copy; ``x`` itself is untouched)."""
    if not is_distributed():
        return x.clone()
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from ``src`` to every rank (identity when single-process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (every rank must call it: one tiny all-reduce)."""
    if not is_distributed():
        return flag
    box = torch.tensor([int(flag)], device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def gather_objects(obj: object) -> list[object] | None:
    """Every rank's picklable ``obj`` on rank 0, in rank order; None on the other ranks."""
    if not is_distributed():
        return [obj]
    box = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, box, dst=0)
    return box


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
