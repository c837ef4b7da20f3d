"""REPA: representation alignment of an intermediate block with a frozen vision encoder (Yu et al. 2025).

As DDT's ``stateful_flow_matching/training_repa.py:REPATrainer``: a forward hook takes the output of
``blocks[align_layer - 1]`` (DDT: 8, inside the condition encoder), the projector
(:func:`ditlab.models.repa.build_projector`) maps it to the vision encoder's width, and the loss is the mean
over tokens of ``1 - cos`` against the encoder's patch features of the **real images**; the total is
``flow loss + weight * cos loss`` (weight 0.5). The target encoder is DINOv2 (:mod:`.dinov2`); any module
mapping images to (N, L, D) features with a ``.width`` works.

Where the images come from: in pixel space the model's x are the images; on latents, ``ditlab extract-latents
--images true`` stores the center-cropped uint8 images beside the latents, and the loop hands them to
:meth:`REPAFlowMatching.loss` as ``images`` (the VAE never runs in the loop, as in DDT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.repa import build_projector
from ..utils.hub import resolve_weights
from .flow import FlowMatching


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


def _feature_dim(encoder: nn.Module) -> int:
    width = getattr(encoder, "width", None)
    if width is None:
        raise ValueError("the REPA encoder must expose its feature width as .width")
    return int(width)


class REPAFlowMatching(nn.Module):
    """Flow matching plus REPA: ``loss(model, x, y, images=None) -> {"loss", "fm", "cos"}`` per sample.

    Args:
        flow: the flow-matching objective. config: REPA settings. hidden_size: the backbone's width.
        encoder: frozen module, images -> (N, L, D) features, with ``.width = D``.
    """

    needs_images = True  # the loop passes the real images of latent batches as ``images=``

    def __init__(self, flow: FlowMatching, config: REPAConfig, hidden_size: int, encoder: nn.Module):
        super().__init__()
        self.flow = flow
        self.config = config
        self.proj = build_projector(hidden_size, config.projector_dim or hidden_size, _feature_dim(encoder))
        self._frozen = [encoder.eval().requires_grad_(False)]  # a plain list: not trained, not in the state dict

    @property
    def encoder(self) -> nn.Module:
        return self._frozen[0]

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        """``.to(device)`` and friends move the frozen encoder too (it is hidden from the state dict, not from
        the device)."""
        self.encoder._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def _aligned_block(self, model: nn.Module) -> nn.Module:
        blocks = getattr(getattr(model, "module", model), "blocks", None)
        if blocks is None:
            raise ValueError(f"REPA needs a backbone with a .blocks list; {type(model).__name__} has none")
        if self.config.align_layer > len(blocks):
            raise ValueError(f"align_layer={self.config.align_layer} but the backbone has {len(blocks)} blocks")
        return blocks[self.config.align_layer - 1]

    def loss(self, model: nn.Module, x: Tensor, y: Tensor | None = None, images: Tensor | None = None,
             **model_kwargs) -> dict[str, Tensor]:
        """``images``: the real images of the batch (uint8, or float in [-1, 1]); None when x are the images.

        Random draws are the flow objective's alone (DDT: label dropout, t, ε); the encoder draws nothing.
        """
        captured: list[Tensor] = []
        handle = self._aligned_block(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            terms = self.flow.loss(model, x, y, **model_kwargs)
        finally:
            handle.remove()
        with torch.no_grad():
            target = self.encoder(x if images is None else images)
        cos = cosine_alignment_loss(self.proj(captured[0]).float(), target.float())
        return {"loss": terms["fm"] + self.config.weight * cos, "fm": terms["fm"], "cos": cos}
