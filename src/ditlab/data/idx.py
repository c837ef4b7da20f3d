"""MNIST and Fashion-MNIST from their four standard IDX files (gzipped or raw), as a dataset for the model.

A dataset spec names the files: ``fashion-mnist`` (Debian's package ``dataset-fashion-mnist`` puts them in
``/usr/share/datasets/fashion-mnist``), ``fashion-mnist:DIR`` or ``mnist:DIR`` (a folder holding the four files),
each optionally followed by ``:train`` or ``:test`` (default train) and then by ``:N`` (only the first N images
of the split; both splits come shuffled, so that is a fair subset). Examples: ``fashion-mnist:test``,
``mnist:/data/mnist:test``, ``fashion-mnist:train:5000``.

The 28x28 images reach the model's side by zero padding (default: 28 -> 32 adds a 2-pixel black border, the
background of both datasets) or by bilinear resizing; the model sees one channel in [-1, 1], and the VAE and
Inception see grayscale repeated to three channels.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..imageio import to_rgb_uint8

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
KINDS = ("fashion-mnist", "mnist")
SPLITS = ("train", "test")
FITS = ("pad", "resize")
NATIVE_SIZE = 28
# Stem of each split's (images, labels) files; "train-images.idx3-ubyte" (a dot, as some mirrors spell it) is
# accepted too, each raw or gzipped.
FILE_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASS_NAMES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "mnist": [str(d) for d in range(10)],
}
WHERE_FROM = {
    "fashion-mnist": "install the Debian package dataset-fashion-mnist (`apt-get install dataset-fashion-mnist` puts "
                     f"them in {DEBIAN_FASHION_MNIST}) or pass fashion-mnist:DIR with the four IDX files from "
                     "github.com/zalandoresearch/fashion-mnist",
    "mnist": "mnist:DIR needs the four IDX files of MNIST (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
             "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, raw or .gz) as distributed on Yann LeCun's MNIST "
             "page and its mirrors",
}
IDX_UINT8 = 0x08  # the IDX type code of unsigned bytes, the only one MNIST-style files use


@dataclass(frozen=True)
class IDXSpec:
    """Which IDX dataset: ``kind`` (fashion-mnist or mnist), the folder of its files, the split, and
    ``limit`` (only the first N images; None = all)."""

    kind: str
    root: Path
    split: str = "train"
    limit: int | None = None

    def __str__(self) -> str:
        text = f"{self.kind}:{self.root}:{self.split}"
        return text if self.limit is None else f"{text}:{self.limit}"

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES[self.kind])


def parse_idx_spec(spec: str) -> IDXSpec | None:
    """The :class:`IDXSpec` a string names, or None when it is not an IDX spec (e.g. ``digits``, ``images:DIR``).

    Grammar: ``KIND[:DIR][:train|:test][:N]``. A folder literally called ``train``, ``test`` or a number is
    written ``./train``.
    """
    kind, _, rest = str(spec).partition(":")
    if kind not in KINDS:
        return None
    parts = rest.split(":") if rest else []
    limit = None
    if parts and parts[-1].isdigit():
        limit = int(parts.pop())
        if limit < 1:
            raise ValueError(f"data spec {spec!r}: the image count {limit} must be positive")
    split = parts.pop() if parts and parts[-1] in SPLITS else "train"
    folder = ":".join(parts)
    if not folder:
        if kind != "fashion-mnist":
            raise ValueError(f"data spec {spec!r} needs a folder: {kind}:DIR[:train|:test] "
                             f"({WHERE_FROM[kind]})")
        folder = str(DEBIAN_FASHION_MNIST)
    return IDXSpec(kind, Path(folder).expanduser(), split, limit)


def as_idx_spec(spec: str | IDXSpec) -> IDXSpec:
    """``spec`` as an :class:`IDXSpec`; a string that is not one is a one-line error listing the forms."""
    if isinstance(spec, IDXSpec):
        return spec
    parsed = parse_idx_spec(spec)
    if parsed is None:
        raise ValueError(f"{spec!r} is not an IDX dataset spec; allowed: fashion-mnist, fashion-mnist:DIR, "
                         "mnist:DIR, each with an optional :train or :test and :N")
    return parsed


def find_idx_file(spec: IDXSpec, which: int) -> Path:
    """The images (``which=0``) or labels (1) file of the spec's split, raw or gzipped."""
    stem = FILE_STEMS[spec.split][which]
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (spec.root / name).is_file():
            return spec.root / name
    raise FileNotFoundError(f"{spec.root / (stem + '.gz')} does not exist (nor {stem} raw): {WHERE_FROM[spec.kind]}")


def _read_bytes(path: Path, count: int) -> bytes:
    """Up to ``count`` bytes from the start of ``path`` (-1: all), decompressing a .gz file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read(count)
        with open(path, "rb") as f:
            return f.read(count)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({err})") from err


def read_idx(path: Path, ndim: int, limit: int | None = None) -> tuple[np.ndarray, int]:
    """(uint8 array, item count in the header) of an IDX file whose data has ``ndim`` dimensions; the array
    holds all items, or the first ``limit``.

    Header: two zero bytes, the type code (0x08 = uint8), the number of dimensions, then each size as a
    big-endian uint32; the data follows in C order.
    """
    head = _read_bytes(path, 4 + 4 * ndim)
    if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] != IDX_UINT8:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {head[:4].hex() or 'missing'}, "
                         f"expected 0000{IDX_UINT8:02x}{ndim:02x})")
    if head[3] != ndim or len(head) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX data has {head[3]} dimensions, expected {ndim}")
    shape = tuple(int(v) for v in np.frombuffer(head[4:], dtype=">u4"))
    count = shape[0] if limit is None else min(limit, shape[0])
    item = int(np.prod(shape[1:], dtype=np.int64))
    need = count * item
    data = _read_bytes(path, len(head) + need)[len(head):]
    if len(data) < need:
        raise ValueError(f"{path}: truncated: the header announces {shape[0]} items of shape {shape[1:]}, "
                         f"but the file holds only {len(data)} bytes of the {need} needed")
    return np.frombuffer(data, dtype=np.uint8).reshape(count, *shape[1:]).copy(), shape[0]


def load_idx(spec: str | IDXSpec) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the spec's split (its first ``limit`` images if set)."""
    spec = as_idx_spec(spec)
    images_path, labels_path = find_idx_file(spec, 0), find_idx_file(spec, 1)
    images, num_images = read_idx(images_path, 3, spec.limit)
    if images.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE):
        raise ValueError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected "
                         f"{NATIVE_SIZE}x{NATIVE_SIZE} ({spec.kind})")
    labels, num_labels = read_idx(labels_path, 1, spec.limit)
    if num_images != num_labels:
        raise ValueError(f"{labels_path}: {num_labels} labels for the {num_images} images of {images_path}")
    num_classes = len(CLASS_NAMES[spec.kind])
    if len(labels) and int(labels.max()) >= num_classes:
        raise ValueError(f"{labels_path}: label {int(labels.max())} is outside 0..{num_classes - 1}")
    return images, labels.astype(np.int64)


def fit_images(images: np.ndarray, size: int = 32, fit: str = "pad") -> np.ndarray:
    """uint8 (N, 28, 28) -> uint8 (N, size, size): centred zero padding (``pad``; the larger half of an odd
    margin goes right and bottom) or bilinear resizing (``resize``; antialiased when shrinking, as PIL does)."""
    if fit not in FITS:
        raise ValueError(f"image fit {fit!r} is not one of {', '.join(FITS)}")
    if size < 1:
        raise ValueError(f"image size {size} must be positive")
    side = images.shape[-1]
    if size == side:
        return images
    if fit == "pad":
        if size < side:
            raise ValueError(f"image size {size} is smaller than the {side}x{side} images: padding cannot shrink "
                             f"them; use fit 'resize' (--image-fit resize) or a size of at least {side} (32 is usual)")
        before = (size - side) // 2
        return np.pad(images, ((0, 0), (before, size - side - before), (before, size - side - before)))
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < side)
    return x.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()


class IDXDataset:
    """A split of MNIST / Fashion-MNIST in memory at ``image_size`` (uint8), served as model tensors.

    ``get_batch`` gives ``(N, 1, S, S)`` float32 in [-1, 1] (``x / 127.5 - 1``, so padding is -1) and labels;
    ``load`` gives one image as uint8 ``(S, S, 3)`` RGB (grayscale repeated), as :class:`ImageFolder` does, for
    the VAE and Inception.
    """

    channels = 1

    def __init__(self, spec: str | IDXSpec, image_size: int = 32, fit: str = "pad"):
        self.spec = as_idx_spec(spec)
        images, labels = load_idx(self.spec)
        self.images = torch.from_numpy(fit_images(images, image_size, fit))
        self.labels = torch.from_numpy(labels)
        self.image_size = image_size
        self.fit = fit
        self.classes = self.spec.class_names
        self.num_classes = len(self.classes)
        self.root = self.spec.root

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index].unsqueeze(0).float() / 127.5 - 1.0, self.labels[index]

    def get_batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """Model tensors (N, 1, S, S) in [-1, 1] and labels, by fancy indexing."""
        idx = torch.as_tensor(indices)
        return self.images[idx].unsqueeze(1).float() / 127.5 - 1.0, self.labels[idx]

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """(uint8 (S, S, 3) image, label): grayscale repeated to RGB."""
        return to_rgb_uint8(self.images[index].numpy()[None, ..., None])[0], int(self.labels[index])

    def rgb_uint8(self) -> np.ndarray:
        """Every image as uint8 (N, S, S, 3), grayscale repeated: the layout ADM's evaluator reads."""
        return to_rgb_uint8(self.images.numpy()[..., None])
