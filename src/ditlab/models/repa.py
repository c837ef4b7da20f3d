"""REPA: representation alignment of an intermediate block with a frozen vision encoder (Yu et al. 2025).

As DDT's ``stateful_flow_matching/training_repa.py:REPATrainer``: a forward hook takes the output of
``blocks[align_layer - 1]`` (DDT: 8, inside the condition encoder), a projector MLP
``Linear-SiLU-Linear-SiLU-Linear`` maps it to the vision encoder's width, and the loss is the mean over tokens of
``1 - cos`` against the encoder's patch features; the total is ``flow loss + weight * cos loss`` (weight 0.5).
The projector is trained with the backbone and saved by the official code under ``diffusion_trainer.proj.``.

The target encoder is DINOv2 ViT-B/14, loaded from a local folder with ``transformers``' ``Dinov2Model`` (an
optional extra: ``pip install transformers``); any module mapping images in [-1, 1] to (N, L, D) patch features
works. Preprocessing as the official: [0, 1] images, ImageNet mean/std, bicubic resize to ``224 * side / 256``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..objectives.flow import FlowMatching
from ..utils.hub import resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class REPAConfig:
    """REPA settings (defaults: DDT-XL/2's config)."""

    enabled: bool = False  # add the REPA alignment loss (needs encoder_path)
    encoder_path: str | None = None  # local folder of a DINOv2 ViT-B/14 in transformers format
    align_layer: int = 8  # align the output of blocks[align_layer - 1] (1-based, DDT: 8)
    weight: float = 0.5  # total loss = flow + weight * mean(1 - cos)
    projector_dim: int | None = None  # hidden width of the projector; None = the backbone's hidden_size (DDT)

    def __post_init__(self) -> None:
        if self.align_layer < 1:
            raise ValueError(f"align_layer={self.align_layer} must be >= 1 (1-based block index)")
        if self.weight < 0:
            raise ValueError(f"weight={self.weight} must be >= 0")

    def check_encoder_path(self) -> Path:
        """The encoder folder, or a one-line error when REPA is on without one."""
        if not self.encoder_path:
            raise ValueError("REPA is on but repa.encoder_path is not set; give a local DINOv2 folder or turn REPA off")
        try:
            path = resolve_weights(self.encoder_path, "REPA encoder_path")  # a folder or a cached Hub id
        except FileNotFoundError as err:
            raise ValueError(f"REPA encoder_path {self.encoder_path!r} is not a folder: {err}") from err
        if not path.is_dir():
            raise ValueError(f"REPA encoder_path {str(path)!r} is not a folder; give a local DINOv2 folder")
        return path


def build_projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """The official projector, nested as there so its keys are ``0.0.weight``, ``0.2.weight``, ``0.4.weight``."""
    return nn.Sequential(nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.SiLU(),
        nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
        nn.Linear(hidden_dim, out_dim),
    ))


def match_token_count(features: Tensor, length: int) -> Tensor:
    """Bilinearly rescale a square (N, L', D) feature map to ``length`` tokens (official: when counts differ)."""
    n, src_len, dim = features.shape
    if src_len == length:
        return features
    src_side, dst_side = math.isqrt(src_len), math.isqrt(length)
    if src_side**2 != src_len or dst_side**2 != length:
        raise ValueError(f"cannot rescale {src_len} feature tokens to {length}: both must be square grids")
    grid = features.transpose(1, 2).reshape(n, dim, src_side, src_side)
    grid = F.interpolate(grid, size=(dst_side, dst_side), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def cosine_alignment_loss(projected: Tensor, target: Tensor) -> Tensor:
    """Per-sample (N,) mean over tokens of ``1 - cos(projected, target)``; the target is rescaled to fit."""
    target = match_token_count(target.to(projected.dtype), projected.shape[1])
    return (1 - F.cosine_similarity(projected, target, dim=-1)).mean(dim=1)


def dinov2_preprocess(images: Tensor) -> Tensor:
    """Images in [-1, 1] -> [0, 1], ImageNet-normalised, bicubic-resized to ``224 * side / 256`` (official)."""
    x = (images.float() + 1) / 2
    if x.shape[1] == 1:  # grey images (the embedded digits): the encoder wants RGB
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, -1, 1, 1)
    x = (x - mean) / std
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(int(224 * h / 256), int(224 * w / 256)), mode="bicubic")


class Dinov2Features(nn.Module):
    """Patch tokens (after the final norm) of a transformers ``Dinov2Model``: images in [-1, 1] -> (N, L, D).

    transformers interpolates the position table to the grid itself (bicubic, as timm's ``resample_abs_pos_embed``
    the official code uses; the two resamplers may differ in the last digits).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.patch_size = int(model.config.patch_size)
        self.width = int(model.config.hidden_size)
        self.skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)  # CLS (+ registers)

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


def _feature_dim(encoder: nn.Module) -> int:
    width = getattr(encoder, "width", None)
    if width is None:
        raise ValueError("the REPA encoder must expose its feature width as .width")
    return int(width)


class REPAFlowMatching(nn.Module):
    """Flow matching plus REPA: ``loss(model, x, y) -> {"loss", "fm", "cos"}`` per sample.

    Args:
        flow: the flow-matching objective. config: REPA settings. hidden_size: the backbone's width.
        encoder: frozen module, images in [-1, 1] -> (N, L, D) features, with ``.width = D``.
        to_images: model-space tensors -> images in [-1, 1] (a codec's ``decode``; identity in pixel space).
    """

    def __init__(self, flow: FlowMatching, config: REPAConfig, hidden_size: int, encoder: nn.Module,
                 to_images: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        self.flow = flow
        self.config = config
        self.proj = build_projector(hidden_size, config.projector_dim or hidden_size, _feature_dim(encoder))
        self._frozen = [encoder.eval().requires_grad_(False)]  # a plain list: not trained, not in the state dict
        self.to_images = to_images

    @property
    def encoder(self) -> nn.Module:
        return self._frozen[0]

    def _aligned_block(self, model: nn.Module) -> nn.Module:
        blocks = getattr(getattr(model, "module", model), "blocks", None)
        if blocks is None:
            raise ValueError(f"REPA needs a backbone with a .blocks list; {type(model).__name__} has none")
        if self.config.align_layer > len(blocks):
            raise ValueError(f"align_layer={self.config.align_layer} but the backbone has {len(blocks)} blocks")
        return blocks[self.config.align_layer - 1]

    def loss(self, model: nn.Module, x: Tensor, y: Tensor | None = None, **model_kwargs) -> dict[str, Tensor]:
        captured: list[Tensor] = []
        handle = self._aligned_block(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            terms = self.flow.loss(model, x, y, **model_kwargs)
        finally:
            handle.remove()
        with torch.no_grad():
            images = x if self.to_images is None else self.to_images(x)
            target = self.encoder(images)
        cos = cosine_alignment_loss(self.proj(captured[0]).float(), target.float())
        return {"loss": terms["fm"] + self.config.weight * cos, "fm": terms["fm"], "cos": cos}
