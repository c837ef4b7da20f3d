"""The embedded default dataset: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes).

No download: the data ships inside scikit-learn. Images are upsampled (bilinear) to ``image_size`` and
scaled to [-1, 1], one channel, so a pixel-space model trains on them through the identity codec.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

DIGITS_MAX = 16.0  # sklearn digits are integers in [0, 16]


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 in [0, 16], labels (1797,) int64) from scikit-learn."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def digits_to_tensor(images: np.ndarray, image_size: int) -> Tensor:
    """(N, 8, 8) in [0, 16] -> (N, 1, S, S) float32 in [-1, 1], bilinearly upsampled."""
    x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / DIGITS_MAX
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1)


class DigitsDataset(Dataset):
    """All 1,797 digits in memory as ``(image (1, S, S) in [-1, 1], label)`` pairs."""

    num_classes = 10
    channels = 1

    def __init__(self, image_size: int = 16):
        if image_size < 8:
            raise ValueError(f"digits image_size={image_size} must be at least 8 (the native size)")
        images, labels = load_digits_arrays()
        self.image_size = image_size
        self.images = digits_to_tensor(images, image_size)
        self.labels = torch.as_tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def get_batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """A whole batch by fancy indexing (no per-item Python loop)."""
        idx = torch.as_tensor(indices)
        return self.images[idx], self.labels[idx]
