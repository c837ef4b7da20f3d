"""Codecs between images and the space a backbone models.

A codec maps images in [-1, 1] (N, 3 or 1, H, W) to model space and back. Pixel-space runs (the digits demo)
use :class:`IdentityCodec`; latent runs use :class:`AutoencoderKLCodec`, a ``diffusers.AutoencoderKL`` (the
Stable Diffusion VAE that DiT, MDT, DDT and DiffuSSM all use) loaded from a local folder or a hub id.

Model space for the VAE is ``(z - shift) * scaling_factor`` with both read from the VAE's own config
(``sd-vae-ft-ema``/``-mse``: scale 0.18215, no shift), never hard-coded; DiT's ``vae.decode(z / 0.18215)``
is :meth:`AutoencoderKLCodec.decode`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .utils.hub import resolve_weights

HUB_VAES = ("stabilityai/sd-vae-ft-ema", "stabilityai/sd-vae-ft-mse")  # the DiT paper's two decoders


class IdentityCodec:
    """Pixel space: the model sees the images themselves."""

    downsample = 1
    name = "identity"

    def __init__(self, channels: int = 3):
        self.channels = channels  # channels of the model space = image channels

    def encode(self, images: Tensor) -> Tensor:
        return images

    def encode_posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) of a point mass: the images and zeros."""
        return images, torch.zeros_like(images)

    def decode(self, latents: Tensor) -> Tensor:
        return latents


def _import_autoencoder_kl() -> Any:
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise ValueError("the VAE needs diffusers: pip install 'ditlab[vae]' (or diffusers>=0.30)") from err
    return AutoencoderKL


def load_autoencoder_kl(source: str, allow_download: bool = False) -> Any:
    """``AutoencoderKL`` from a local folder (``config.json`` + weights, or a pipeline folder with ``vae/``) or a
    hub id (``stabilityai/sd-vae-ft-ema``, ``facebook/DiT-XL-2-256/vae``), in eval mode.

    A hub id is resolved from the local Hugging Face cache only, unless ``allow_download`` is set (and
    ``HF_HUB_OFFLINE`` is not): library code never downloads behind the user's back.
    """
    autoencoder_kl = _import_autoencoder_kl()
    local = resolve_weights(source, "VAE", allow_download)
    if not (local / "config.json").is_file() and (local / "vae" / "config.json").is_file():
        local = local / "vae"  # a whole pipeline folder (DiTPipeline): its VAE
    if not (local / "config.json").is_file():
        raise FileNotFoundError(f"VAE folder {local} has no config.json (expected a diffusers save_pretrained)")
    return autoencoder_kl.from_pretrained(str(local), local_files_only=True, low_cpu_mem_usage=False).eval()


class AutoencoderKLCodec:
    """A diffusers ``AutoencoderKL`` as a codec; the network is loaded lazily on first use and never pickled.

    Args:
        source: local folder or hub id (``stabilityai/sd-vae-ft-ema``).
        device: where the VAE runs.
        allow_download: let a hub id be fetched when it is not cached.
        vae: an already-built ``AutoencoderKL`` (tests, notebooks); ``source`` is then only a label.
    """

    def __init__(self, source: str, device: torch.device | str = "cpu", allow_download: bool = False,
                 vae: Any = None):
        self.name = source
        self.device = torch.device(device)
        self.allow_download = allow_download
        self._vae = vae.to(self.device).eval() if vae is not None else None

    @property
    def vae(self) -> Any:
        if self._vae is None:
            self._vae = load_autoencoder_kl(self.name, self.allow_download).to(self.device)
        return self._vae

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_vae": None}  # the network is rebuilt where it is used

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of the diagonal Gaussian posterior q(z|x), both in model space (scaled)."""
        dist = self.vae.encode(images.to(self.device, torch.float32)).latent_dist
        scale = self.scaling_factor
        return (dist.mean - self.shift_factor) * scale, dist.std * scale

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One sample of q(z|x) in model space, as DiT's ``latent_dist.sample().mul_(0.18215)``."""
        mean, std = self.encode_posterior(images)
        return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images in about [-1, 1] from model-space latents: ``vae.decode(z / scale + shift)``."""
        z = latents.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample


def load_codec(spec: str, channels: int = 3, device: torch.device | str = "cpu",
               allow_download: bool = False) -> IdentityCodec | AutoencoderKLCodec:
    """``"identity"`` (pixel space with ``channels`` channels) or a VAE folder / hub id."""
    if spec in ("identity", "none", ""):
        return IdentityCodec(channels)
    return AutoencoderKLCodec(spec, device=device, allow_download=allow_download)
