"""An ImageFolder with Pillow + numpy: ``root/<class>/<image>``, classes in sorted folder order.

Images go through ADM's ``center_crop_arr`` (the crop DiT's train.py uses) and come out as uint8 HWC RGB
arrays, or as CHW float tensors in [-1, 1] (``ToTensor`` + ``Normalize(0.5, 0.5)``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

ADM_SIZES = (256, 512)  # the resolutions DiT's train.py allows; others are accepted for small experiments


class BadImageError(ValueError):
    """A file in the image folder cannot be decoded as an image (corrupt, truncated or not an image)."""


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """ADM's center crop: halve with BOX while the short side is ≥ 2·size, BICUBIC so that the short side
    is ``size`` (rounded), then crop the centre ``size × size``. Returns uint8 (size, size, 3)."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def to_model_tensor(images: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def list_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(file, class index)]) with classes = sorted sub-folders and files sorted per class.

    Hidden files (``.DS_Store``) are ignored; every other file is expected to be an image.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    ]
    return classes, files


def read_image(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` fully, convert to RGB and center-crop; any decoding failure is a :class:`BadImageError`."""
    try:
        with Image.open(path) as image:
            image.load()  # Image.open only reads the header: truncation shows up here
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(f"{path}: not a readable image ({err}); fix or remove it, or pass --skip-bad") from err
    return center_crop_arr(rgb, size)


class ImageFolder:
    """Images under ``root/<class>/`` as center-cropped uint8 arrays with class labels.

    Args:
        root: folder with one sub-folder per class.
        image_size: crop side (256 or 512 in the papers).
        num_classes: classes the model expects; fewer class folders is an error (None: as found).
        skip_bad: check every file once now, drop those that cannot be decoded and count them in ``skipped``;
            otherwise the first bad file read raises :class:`BadImageError` naming it.
    """

    channels = 3

    def __init__(self, root: str | Path, image_size: int = 256, num_classes: int | None = None,
                 skip_bad: bool = False):
        if image_size < 1:
            raise ValueError(f"image_size={image_size} must be positive")
        self.root = Path(root)
        self.image_size = image_size
        self.classes, self.files = list_image_folder(self.root)
        if not self.files:
            raise ValueError(f"image folder {self.root} has no images (expected {self.root}/<class>/<image>)")
        if num_classes is not None and len(self.classes) < num_classes:
            raise ValueError(f"image folder {self.root} has {len(self.classes)} class folders, "
                             f"fewer than num_classes={num_classes}")
        self.num_classes = num_classes or len(self.classes)
        self.skipped: list[Path] = []
        if skip_bad:
            self.files, self.skipped = self._drop_bad(self.files)
            if not self.files:
                raise ValueError(f"image folder {self.root}: all {len(self.skipped)} files are unreadable")

    def _drop_bad(self, files: list[tuple[Path, int]]) -> tuple[list[tuple[Path, int]], list[Path]]:
        good, bad = [], []
        for path, label in files:
            try:
                with Image.open(path) as image:
                    image.load()
                good.append((path, label))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                bad.append(path)
        return good, bad

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """(uint8 (S, S, 3) image, label) of one file."""
        path, label = self.files[index]
        return read_image(path, self.image_size), label

    def load_batch(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (N, S, S, 3), int64 (N,)) for ``indices``."""
        pairs = [self.load(i) for i in indices]
        return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=np.int64)

    def get_batch(self, indices: list[int], flips: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Model tensors in [-1, 1] and labels; ``flips`` (bool per image) mirrors images horizontally."""
        images, labels = self.load_batch(indices)
        x = to_model_tensor(images)
        if flips is not None:
            x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        return x, torch.from_numpy(labels)
