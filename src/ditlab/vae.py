"""Codecs between images and the space a backbone models.

A codec maps images in [-1, 1] (N, 3 or 1, H, W) to model space and back. Pixel-space runs (the digits demo)
use :class:`IdentityCodec`.
"""

from __future__ import annotations

from torch import Tensor


class IdentityCodec:
    """Pixel space: the model sees the images themselves."""

    downsample = 1

    def __init__(self, channels: int = 3):
        self.channels = channels  # channels of the model space = image channels

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, latents: Tensor) -> Tensor:
        return latents
