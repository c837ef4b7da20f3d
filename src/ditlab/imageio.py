"""Image conversions and grids (Pillow + numpy; no torchvision)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8, as the official sampler: clamp(127.5 x + 128, 0, 255)."""
    x = torch.clamp(127.5 * images.detach().float() + 128.0, 0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def to_rgb_uint8(images: Tensor | np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3), the layout ADM's evaluator and the FID Inception read, grayscale repeated to RGB.

    ``images``: a model-space tensor (N, C, H, W) in [-1, 1] (through :func:`to_uint8`) or a uint8 array
    (N, H, W, 1 or 3)."""
    array = to_uint8(images) if isinstance(images, Tensor) else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 (N, H, W, 1 or 3), got {array.dtype} {array.shape}")
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def make_grid(images: np.ndarray, nrow: int, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images into one (rows*(H+pad)+pad, nrow*(W+pad)+pad, C) array."""
    n, h, w, c = images.shape
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def save_grid(images: Tensor, path: str | Path, nrow: int, scale: int = 1) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid, optionally upscaled (nearest) by ``scale``."""
    grid = make_grid(to_uint8(images), nrow)
    pil = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path)
    return path
