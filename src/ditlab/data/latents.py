"""Latents extracted once, stored in shards, read directly by training (the VAE never runs in the loop).

Layout of an extraction folder::

    extract.json              what was extracted (image folder, VAE, sizes): a rerun must match it
    shard_000000.safetensors  mean, std: (n, 2, C, h, w) for [image, its horizontal flip]; labels, indices: (n,);
                              with ``--images true`` also images: (n, 3, H, W) uint8, the center crops encoded
    ...
    index.json                written last, once every shard exists: shard list, counts, class names, VAE

Shard ``k`` holds images ``[k·S, (k+1)·S)`` of the sorted folder, so its content does not depend on how many
processes ran. Each shard is written atomically (temporary file, fsync, rename) and an existing shard is never
redone, so a crashed run is resumed by running the same command again. Storing the posterior's mean and std
(as EDM2's dataset_tool and DDT do) lets training draw a fresh latent ``mean + std·ε`` every time an image is
seen, instead of freezing one sample per image as fast-DiT's ``extract_features.py`` does.

REPA aligns to the real images (DDT feeds DINOv2 the dataset's center crops, ``to_tensor`` of the uint8 pixels).
``images=True`` stores exactly those pixels, uint8 at ``image_size``, so REPA needs no VAE decode in the loop
and sees what the official sees. Stored rather than the encoder's features: features (256 tokens × 768 ×
2 bytes = 393 KB per 256² image for DINOv2-B) are twice the pixels (196 KB) and tie the extraction to one
encoder; stored rather than pixels already resized to the encoder's 224²: the official resizes in float from
the uint8 crop, which a stored uint8 224² copy cannot reproduce (its rounding), while float copies would be
larger than the crop. The encoder's forward stays in the loop, as in DDT.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from ..utils.distributed import barrier, init_distributed
from ..utils.files import atomic_write, check_or_write_identity
from .idx import FITS, IDXDataset, parse_idx_spec
from .images import BadImageError, ImageFolder, to_model_tensor

INDEX_FILE = "index.json"
CONFIG_FILE = "extract.json"
FORMAT = "ditlab-latents/1"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SourceImages = ImageFolder | IDXDataset  # what extraction reads: .load(i) -> (uint8 RGB, label), .classes
ADM_IMAGE_SIZE = 256  # image folders
IDX_IMAGE_SIZE = 32  # (fashion-)mnist: 28x28 fit to 32 (a multiple of the VAE's factor 8)


@dataclass
class ExtractConfig:
    """``ditlab extract-latents``: encode an image folder (or MNIST / Fashion-MNIST) once into latent shards."""

    data: str = ""  # image folder root/<class>/<image> (classes = sorted sub-folders), or fashion-mnist[:DIR][:test]
    out: str = "latents"  # output folder (shards + index.json); rerun the same command to resume
    vae: str = "stabilityai/sd-vae-ft-ema"  # VAE folder or cached hub id; "identity" stores pixels
    image_size: int | None = None  # ADM center-crop side (256 or 512 in the papers); None = 256, (fashion-)mnist 32
    image_fit: str = "pad"  # (fashion-)mnist only: 28x28 to image_size by "pad" (zero border) or "resize" (bilinear)
    num_classes: int | None = None  # classes the model will have; fewer class folders is an error
    shard_size: int = 1024  # images per shard
    batch_size: int = 32  # images per VAE forward
    dtype: str = "float16"  # storage dtype of mean/std: float16, bfloat16 or float32
    skip_bad: bool = False  # skip (and count) unreadable images instead of stopping at the first
    images: bool = False  # also store the uint8 center crops (REPA aligns to them; ~196 KB per 256² image)
    device: str | None = None  # "cpu" / "cuda"; None = CUDA when available
    allow_download: bool = False  # let a hub-id VAE be downloaded when not cached
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        is_idx = parse_idx_spec(self.data) is not None
        if self.image_size is None:
            self.image_size = IDX_IMAGE_SIZE if is_idx else ADM_IMAGE_SIZE
        if self.image_fit not in FITS:
            raise ValueError(f"image_fit={self.image_fit!r} is not one of {', '.join(FITS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        for name in ("shard_size", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")

    def identity(self, num_files: int) -> dict[str, Any]:
        """What must be equal for a rerun to continue a previous extraction."""
        keys = ("data", "vae", "image_size", "shard_size", "dtype", "skip_bad")
        keys += ("image_fit",) if parse_idx_spec(self.data) is not None else ()  # image folders: as before
        identity = {**{k: getattr(self, k) for k in keys}, "num_files": num_files, "format": FORMAT}
        if self.images:  # only when on, so extractions made before this option still resume
            identity["images"] = True
        return identity


def shard_path(out: Path, k: int) -> Path:
    return Path(out) / f"shard_{k:06d}.safetensors"


def shard_ranges(num_images: int, shard_size: int) -> list[range]:
    """Image index range of every shard."""
    return [range(s, min(s + shard_size, num_images)) for s in range(0, num_images, shard_size)]



def open_dataset(config: ExtractConfig) -> SourceImages:
    """The images to encode: an image folder, or an MNIST / Fashion-MNIST split (grayscale repeated to RGB)."""
    spec = parse_idx_spec(config.data)
    if spec is None:
        return ImageFolder(config.data, config.image_size, config.num_classes)
    dataset = IDXDataset(spec, config.image_size, config.image_fit)
    if config.num_classes is not None:
        if config.num_classes < dataset.num_classes:
            raise ValueError(f"num_classes={config.num_classes} is below the {dataset.num_classes} classes of "
                             f"{config.data}")
        dataset.num_classes = config.num_classes
    return dataset


def encode_shard(dataset: SourceImages, codec: Any, indices: range, batch_size: int, skip_bad: bool,
                 dtype: torch.dtype, store_images: bool = False) -> tuple[dict[str, Tensor], list[str]]:
    """Tensors of one shard (posterior of each image and its flip, the uint8 images when asked) and the
    unreadable files skipped."""
    means, stds, labels, kept, skipped, crops = [], [], [], [], [], []
    for start in range(indices.start, indices.stop, batch_size):
        images, batch_labels, batch_kept = [], [], []
        for i in range(start, min(start + batch_size, indices.stop)):
            try:
                image, label = dataset.load(i)
            except BadImageError:
                if not skip_bad:
                    raise
                skipped.append(str(dataset.files[i][0]))
                continue
            images.append(image)
            batch_labels.append(label)
            batch_kept.append(i)
        if not images:
            continue
        x = to_model_tensor(np.stack(images))
        if store_images:
            crops.append(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous())
        mean, std = codec.encode_posterior(torch.cat([x, x.flip(-1)]))  # (2n, C, h, w)
        n = len(images)
        means.append(torch.stack([mean[:n], mean[n:]], 1).to("cpu", dtype))
        stds.append(torch.stack([std[:n], std[n:]], 1).to("cpu", dtype))
        labels.extend(batch_labels)
        kept.extend(batch_kept)
    if not kept:
        raise ValueError(f"images {indices.start}..{indices.stop - 1} of {dataset.root} are all unreadable")
    tensors = {"mean": torch.cat(means), "std": torch.cat(stds), "labels": torch.tensor(labels, dtype=torch.int64),
               "indices": torch.tensor(kept, dtype=torch.int64)}
    if store_images:
        tensors["images"] = torch.cat(crops)
    return tensors, skipped


def write_shard(path: Path, tensors: dict[str, Tensor], skipped: list[str]) -> None:
    """Atomically write one shard; the list of skipped files travels in its metadata."""
    meta = {"skipped": json.dumps(skipped)}
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta))


def _shard_summary(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        count = f.get_slice("labels").get_shape()[0]
        skipped = json.loads((f.metadata() or {}).get("skipped", "[]"))
    return {"file": path.name, "count": count, "skipped": skipped}


def write_index(out: Path, dataset: SourceImages, codec: Any, config: ExtractConfig, num_shards: int) -> Path:
    """Write ``index.json`` from the shards on disk (all must exist)."""
    shards = [_shard_summary(shard_path(out, k)) for k in range(num_shards)]
    with safe_open(str(shard_path(out, 0)), framework="pt") as f:
        latent_shape = f.get_slice("mean").get_shape()[2:]
    index = {
        "format": FORMAT,
        "num_images": sum(s["count"] for s in shards),
        "num_skipped": sum(len(s["skipped"]) for s in shards),
        "num_classes": dataset.num_classes,
        "classes": dataset.classes,
        "image_size": config.image_size,
        **({"image_fit": config.image_fit} if parse_idx_spec(config.data) is not None else {}),  # FID references
        "latent_shape": list(latent_shape),
        "vae": config.vae,
        "scaling_factor": getattr(codec, "scaling_factor", 1.0),
        "images": config.images,
        "shards": [{"file": s["file"], "count": s["count"]} for s in shards],
        "skipped": [p for s in shards for p in s["skipped"]],
    }
    path = out / INDEX_FILE
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(index, indent=1) + "\n"))
    return path


def extract_latents(config: ExtractConfig, codec: Any = None, rank: int = 0, world_size: int = 1,
                    on_shard: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Encode ``config.data`` into shards under ``config.out``; rank ``r`` of ``W`` does shards ``k ≡ r (mod W)``.

    Finished shards are skipped, so a rerun continues a crashed one. ``on_shard(k)`` is called after shard
    ``k`` is written (progress hooks, tests). Returns the index (the caller's rank 0 writes it after a barrier,
    see :func:`run_extract`); on other ranks a summary of this rank's work.
    """
    from ..vae import load_codec

    out = Path(config.out)
    dataset = open_dataset(config)
    out.mkdir(parents=True, exist_ok=True)
    check_or_write_identity(out / CONFIG_FILE, config.identity(len(dataset)), rank == 0, "a different extraction")
    if codec is None:
        codec = load_codec(config.vae, 3, config.device or "cpu", config.allow_download)
    ranges = shard_ranges(len(dataset), config.shard_size)
    mine = [k for k in range(len(ranges)) if k % world_size == rank]
    todo = [k for k in mine if not shard_path(out, k).is_file()]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not (rank == 0 and config.progress),
               desc="extract-latents", unit="shard", dynamic_ncols=True)
    for k in todo:
        tensors, skipped = encode_shard(dataset, codec, ranges[k], config.batch_size, config.skip_bad,
                                        DTYPES[config.dtype], config.images)
        write_shard(shard_path(out, k), tensors, skipped)
        bar.update(1)
        if on_shard is not None:
            on_shard(k)
    bar.close()
    return {"dataset": dataset, "codec": codec, "num_shards": len(ranges), "written": todo}


def run_extract(config: ExtractConfig, codec: Any = None, on_shard: Callable[[int], None] | None = None) -> Path:
    """``ditlab extract-latents``: one process or torchrun; rank 0 writes ``index.json`` at the end."""
    from ..vae import load_codec

    info = init_distributed(config.device)
    if codec is None:
        codec = load_codec(config.vae, 3, info.device, config.allow_download)
    work = extract_latents(config, codec, info.rank, info.world_size, on_shard)
    barrier()
    index_path = Path(config.out) / INDEX_FILE
    if info.is_main:
        write_index(Path(config.out), work["dataset"], work["codec"], config, work["num_shards"])
    barrier()
    return index_path


# ----------------------------------------------------------------------------
# Reading shards.


def draw_seed(seed: int, step: int, index: int) -> int:
    """Seed of the random draws (flip, ε) of example ``index`` at training step ``step``."""
    return ((seed * 1_000_003 + step) * 2_654_435_761 + index) % (2**63 - 1)


class LatentShards:
    """The examples of an extraction folder; each read draws a flip and a fresh latent ``mean + std·ε``.

    Shards are memory-mapped (safetensors) and only the rows asked for are read.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run `ditlab extract-latents --out {self.folder}` "
                                    "to completion first")
        self.index = json.loads(path.read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} index (format={self.index.get('format')!r})")
        counts = [s["count"] for s in self.index["shards"]]
        self._starts = [sum(counts[:k]) for k in range(len(counts))]
        self._size = sum(counts)
        self._handles: dict[int, Any] = {}
        self.channels, self.input_size = self.index["latent_shape"][0], self.index["latent_shape"][1]
        self.num_classes = int(self.index["num_classes"])
        self.has_images = bool(self.index.get("images", False))  # extracted with images=True

    def __len__(self) -> int:
        return self._size

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self._size:
            raise IndexError(f"example {i} out of range [0, {self._size})")
        lo, hi = 0, len(self._starts) - 1
        while lo < hi:  # last shard whose start <= i
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self._starts[mid] <= i else (lo, mid - 1)
        return lo, i - self._starts[lo]

    def _handle(self, k: int) -> Any:
        if k not in self._handles:
            self._handles[k] = safe_open(str(self.folder / self.index["shards"][k]["file"]), framework="pt")
        return self._handles[k]

    def read(self, i: int) -> tuple[Tensor, Tensor, int]:
        """(mean (2, C, h, w), std (2, C, h, w), label) of example ``i`` (row 1 = the flipped image)."""
        k, row = self._locate(i)
        f = self._handle(k)
        return (f.get_slice("mean")[row : row + 1][0], f.get_slice("std")[row : row + 1][0],
                int(f.get_slice("labels")[row : row + 1][0]))

    def get_batch(self, indices: list[int], generators: list[torch.Generator] | None = None) -> tuple[Tensor, Tensor]:
        """Latents ``mean + std·ε`` of a random flip of each example, float32, and labels.

        ``generators`` (one per example) make the draws reproducible; None uses the global RNG.
        """
        xs, labels = [], []
        for j, i in enumerate(indices):
            mean, std, label = self.read(i)
            g = generators[j] if generators is not None else None
            flip = int(torch.randint(0, 2, (), generator=g))
            eps = torch.randn(mean.shape[1:], generator=g)
            xs.append(mean[flip].float() + std[flip].float() * eps)
            labels.append(label)
        return torch.stack(xs), torch.tensor(labels, dtype=torch.int64)

    def get_images(self, indices: list[int], flips: Tensor) -> Tensor:
        """The stored uint8 images (n, 3, H, W) of ``indices``, mirrored where ``flips`` is true."""
        if not self.has_images:
            raise ValueError(f"{self.folder} holds no images: rerun `ditlab extract-latents` with --images true "
                             "into a new folder (REPA aligns to the real images)")
        rows = []
        for i, flip in zip(indices, flips.tolist(), strict=True):
            k, row = self._locate(i)
            image = self._handle(k).get_slice("images")[row : row + 1][0]
            rows.append(image.flip(-1) if flip else image)
        return torch.stack(rows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}  # file handles are reopened where used
