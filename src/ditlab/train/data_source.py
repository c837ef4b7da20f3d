"""What the training loop reads: a dataset in model space with its sizes, behind one small interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..data.digits import DigitsDataset
from ..data.idx import IDXDataset, parse_idx_spec
from ..data.images import ImageFolder
from ..data.latents import LatentShards, draw_seed
from ..utils.distributed import DistInfo
from ..vae import IdentityCodec, load_codec

DATA_KINDS = ("digits", "fashion-mnist", "fashion-mnist:DIR", "mnist:DIR", "latents:DIR", "images:DIR")
DEFAULT_IMAGE_SIZE = 16  # digits and image folders when image_size is None; IDX data: IDX_IMAGE_SIZE
IDX_IMAGE_SIZE = 32  # 28x28 padded to a side that patch sizes 2, 4 and 8 divide


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

    seed: int = 0  # seeds the per-example draws (flip, latent sample) of random datasets

    def batch(self, indices: list[int], step: int | None = None) -> tuple[Tensor, Tensor]:
        """The examples ``indices``; random datasets (latents, images) draw each example's flip and latent
        sample from a generator seeded by (seed, step, index) when ``step`` is given, so the draws do not
        depend on the global RNG (hence survive a resume and any number of processes); without ``step``
        they use the global RNG."""
        if isinstance(self.dataset, (LatentShards, ImageFolder)):
            generators = None if step is None else [
                torch.Generator().manual_seed(draw_seed(self.seed, step, i)) for i in indices]
            if isinstance(self.dataset, LatentShards):
                x, y = self.dataset.get_batch(indices, generators)
            else:
                flips = torch.stack([torch.randint(0, 2, (), generator=g) for g in generators]) if generators \
                    else torch.randint(0, 2, (len(indices),))
                x, y = self.dataset.get_batch(indices, flips.bool())
        else:
            x, y = self.dataset.get_batch(indices)
        if self.device.type == "cuda":  # from pinned memory the copy is queued: the host does not wait for the GPU
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    @property
    def codec_name(self) -> str:
        """What ``ditlab sample --vae`` needs to decode this run's samples: "identity" or the latents' VAE."""
        return "identity" if self.pixel_space else str(self.dataset.index["vae"])

    @property
    def image_size(self) -> int:
        """Side of the images the codec decodes to: the extraction's ``image_size`` for latents (not the latent
        side), else the model-space side itself."""
        if isinstance(self.dataset, LatentShards):
            return int(self.dataset.index["image_size"])
        return self.input_size

    def image_fit(self, default: str) -> str:
        """How 28x28 IDX images were fit to ``image_size``: as the latents' extraction recorded it, else
        ``default`` (the run's ``image_fit``)."""
        if isinstance(self.dataset, LatentShards):
            return str(self.dataset.index.get("image_fit", default))
        return default

    @property
    def pixel_space(self) -> bool:
        """True when the model-space tensors are the images themselves (identity codec)."""
        return isinstance(self.codec, IdentityCodec)

    @property
    def has_images(self) -> bool:
        """Whether :meth:`images` can give the real images of a batch (REPA's targets)."""
        return self.pixel_space or bool(getattr(self.dataset, "has_images", False))

    def images(self, indices: list[int], step: int) -> Tensor | None:
        """The real uint8 images of the batch ``batch(indices, step)``, flipped as its latents; None in pixel
        space, where the batch itself is the images.

        A latent example's flip is the first draw of its (seed, step, index) generator (``LatentShards.get_batch``
        draws it before ε), so it is drawn again here from a fresh generator with that seed.
        """
        if self.pixel_space:
            return None
        if not isinstance(self.dataset, LatentShards):
            raise ValueError(f"{type(self.dataset).__name__} data has no stored images")
        flips = torch.stack([torch.randint(0, 2, (), generator=torch.Generator().manual_seed(
            draw_seed(self.seed, step, i))) for i in indices]).bool()
        images = self.dataset.get_images(indices, flips)
        if self.device.type == "cuda":
            images = images.pin_memory()
        return images.to(self.device, non_blocking=True)


def build_data_source(config: Any, info: DistInfo) -> DataSource:
    """The data source a ``TrainConfig.data`` spec names."""
    kind = config.data.split(":", 1)[0]
    idx_spec = parse_idx_spec(config.data)
    if idx_spec is not None:  # MNIST / Fashion-MNIST in pixel space, one channel
        ds = IDXDataset(idx_spec, config.image_size or IDX_IMAGE_SIZE, config.image_fit)
        return DataSource(ds, len(ds), ds.channels, ds.image_size, ds.num_classes, IdentityCodec(ds.channels),
                          info.device)
    image_size = config.image_size or DEFAULT_IMAGE_SIZE
    if kind == "digits":
        ds = DigitsDataset(image_size)
        return DataSource(ds, len(ds), ds.channels, ds.image_size, ds.num_classes, IdentityCodec(ds.channels),
                          info.device)
    path = config.data.split(":", 1)[1] if ":" in config.data else ""
    if kind in ("latents", "images") and not path:
        raise ValueError(f"data={config.data!r} needs a folder: {kind}:DIR")
    if kind == "latents":  # extracted by `ditlab extract-latents`; the VAE only decodes sample grids
        ds = LatentShards(path)
        codec = load_codec(ds.index["vae"], ds.channels, info.device)
        if info.is_main and getattr(config, "sample_every", -1) >= 0:
            getattr(codec, "vae", None)  # sample grids decode with it: a missing VAE is found now, not at a grid
        return DataSource(ds, len(ds), ds.channels, ds.input_size, ds.num_classes, codec, info.device, config.seed)
    if kind == "images":  # pixel space: ADM center crop to image_size, random flip
        ds = ImageFolder(path, image_size, skip_bad=getattr(config, "skip_bad", False))
        return DataSource(ds, len(ds), ds.channels, ds.image_size, ds.num_classes, IdentityCodec(ds.channels),
                          info.device, config.seed)
    raise ValueError(f"data={config.data!r} is not a known dataset; allowed: {', '.join(DATA_KINDS)}")
