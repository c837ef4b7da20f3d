"""REPA's frozen target encoder: DINOv2 patch features of the real images, prepared exactly as DDT does.

DDT (``stateful_flow_matching/training_repa.py:DINOv2``) feeds the dataset's images in [0, 1] (``to_tensor`` of
the center crop), normalises them with ImageNet's mean/std, resizes them bicubically (no antialiasing) to
``224 * side / 256`` and, before the encoder runs, replaces DINOv2's position table by the pretrained one
resampled to the new patch grid with timm's ``resample_abs_pos_embed`` (bicubic **with** antialiasing, class
token kept). The encoder is transformers' ``Dinov2Model`` from a local folder (optional extra:
``pip install transformers``); its own position resampler (bicubic, no antialiasing, as the DINOv2 hub code) is
replaced by :func:`resample_pos_table`, because the two differ by far more than rounding: on a smooth table
(``tests/test_repa.py:smooth_table``) by 11% of its largest value from the 37×37 pretrained grid to 16×16
(256 px images), by 4% to 32×32 (512 px).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def images_to_unit(images: Tensor) -> Tensor:
    """Real images (uint8 in [0, 255]) or model-space pixels (float in [-1, 1]) -> float32 in [0, 1], RGB."""
    x = images.float() / 255 if images.dtype == torch.uint8 else (images.float() + 1) / 2
    if x.shape[1] == 1:  # grey images (digits, Fashion-MNIST): the encoder wants RGB
        x = x.expand(-1, 3, -1, -1)
    return x


def dinov2_preprocess(images: Tensor) -> Tensor:
    """Images -> [0, 1] -> ImageNet-normalised -> bicubic (no antialias) to ``224 * side / 256`` (official)."""
    x = images_to_unit(images)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, -1, 1, 1)
    x = (x - mean) / std
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(int(224 * h / 256), int(224 * w / 256)), mode="bicubic")


def resample_pos_table(table: Tensor, grid: tuple[int, int], prefix_tokens: int = 1) -> Tensor:
    """A (1, prefix + n², D) position table resampled to ``grid`` patches, as timm's ``resample_abs_pos_embed``.

    Unchanged when the grid is square and already the table's size; otherwise the square patch part is resized
    bicubically with antialiasing in float32 (``align_corners=False``), the prefix (class) rows kept as they are.
    """
    length, dim = table.shape[1] - prefix_tokens, table.shape[2]
    if grid[0] == grid[1] and grid[0] * grid[1] == length:
        return table
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"cannot resample a position table of {length} patch rows: not a square grid")
    prefix, patches = table[:, :prefix_tokens], table[:, prefix_tokens:]
    patches = patches.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid, mode="bicubic", antialias=True)
    patches = patches.permute(0, 2, 3, 1).reshape(1, -1, dim).to(table.dtype)
    return torch.cat([prefix, patches], dim=1)


class Dinov2Features(nn.Module):
    """Patch tokens (after the final norm) of a transformers ``Dinov2Model``: images -> (N, L, D).

    Images are uint8 in [0, 255] (the dataset's, as DDT) or float in [-1, 1] (pixel-space model tensors).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.patch_size = int(model.config.patch_size)
        self.width = int(model.config.hidden_size)
        self.skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)  # CLS (+ registers)
        self._tables: dict[tuple, Tensor] = {}
        if not hasattr(model.embeddings, "interpolate_pos_encoding"):
            raise ValueError(f"this {type(model).__name__} has no embeddings.interpolate_pos_encoding to replace "
                             "by DDT's resampling; REPA needs transformers' Dinov2Model (transformers>=4.40)")
        # transformers asks this method for the table of every forward; answer with DDT's resampling instead.
        model.embeddings.interpolate_pos_encoding = self._position_table

    def _position_table(self, embeddings: Tensor, height: int, width: int) -> Tensor:
        table = self.model.embeddings.position_embeddings
        grid = (height // self.patch_size, width // self.patch_size)
        key = (grid, table.device, table.dtype)
        if key not in self._tables:  # the table is frozen: resample once per grid, as DDT caches it
            self._tables[key] = resample_pos_table(table.detach(), grid)
        return self._tables[key]

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = dinov2_preprocess(images)
        return self.model(pixel_values=x).last_hidden_state[:, self.skip:]


def load_dinov2(path: str | Path) -> Dinov2Features:
    """DINOv2 from a local folder (``config.json`` + weights) through transformers, never the network."""
    try:
        from transformers import Dinov2Model
    except ImportError as err:
        raise ValueError("REPA's DINOv2 encoder needs the optional package transformers (pip install transformers)") \
            from err
    return Dinov2Features(Dinov2Model.from_pretrained(str(path), local_files_only=True))
