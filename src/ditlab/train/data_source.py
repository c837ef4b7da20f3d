"""What the training loop reads: a dataset in model space with its sizes, behind one small interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..data.digits import DigitsDataset
from ..vae import IdentityCodec
from .distributed import DistInfo

DATA_KINDS = ("digits",)


@dataclass
class DataSource:
    """A dataset the loop can index by batches, already in the space the model works in.

    Attributes:
        size: number of examples; channels/input_size: the model-space tensor shape; num_classes: label count;
        codec: turns model-space tensors back into images (identity for pixel space).
    """

    dataset: Any
    size: int
    channels: int
    input_size: int
    num_classes: int
    codec: Any
    device: torch.device

    def batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        x, y = self.dataset.get_batch(indices)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def build_data_source(config: Any, info: DistInfo) -> DataSource:
    """The data source a ``TrainConfig.data`` spec names."""
    kind = config.data.split(":", 1)[0]
    if kind == "digits":
        ds = DigitsDataset(config.image_size)
        return DataSource(ds, len(ds), ds.channels, ds.image_size, ds.num_classes, IdentityCodec(ds.channels),
                          info.device)
    raise ValueError(f"data={config.data!r} is not a known dataset; allowed: {', '.join(DATA_KINDS)}")
