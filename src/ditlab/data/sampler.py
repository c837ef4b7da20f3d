"""Deterministic batch order that can start at any step, so a resumed run sees exactly the same data."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's index list for every global step from ``start_step`` on, forever.

    The stream is the concatenation of epochs, each a permutation drawn from ``seed + epoch``; global batch
    ``s`` is positions ``[s*B, (s+1)*B)`` of that stream and rank ``r`` takes its contiguous ``B/W`` slice.
    Hence the order depends only on (seed, dataset size, global batch), never on how the run was split.
    """

    def __init__(
        self, dataset_size: int, global_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1,
        start_step: int = 0,
    ):
        if dataset_size < 1:
            raise ValueError("the dataset is empty")
        if global_batch % world_size:
            raise ValueError(
                f"global batch size {global_batch} is not divisible by the number of processes {world_size}"
            )
        self.dataset_size = dataset_size
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self._cached: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**64)  # manual_seed's range
            self._cached = (epoch, torch.randperm(self.dataset_size, generator=g))
        return self._cached[1]

    def batch_at(self, step: int) -> list[int]:
        """This rank's indices for global step ``step``."""
        start = step * self.global_batch + self.rank * self.local_batch
        out: list[int] = []
        while len(out) < self.local_batch:
            epoch, offset = divmod(start + len(out), self.dataset_size)
            take = min(self.local_batch - len(out), self.dataset_size - offset)
            out.extend(self._permutation(epoch)[offset : offset + take].tolist())
        return out

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield self.batch_at(step)
            step += 1
