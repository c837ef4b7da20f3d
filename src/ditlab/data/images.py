"""An ImageFolder with Pillow + numpy: ``root/<class>/<image>``, classes in sorted folder order.

Images go through ADM's ``center_crop_arr`` (the crop DiT's train.py uses) and come out as uint8 HWC RGB
arrays, or as CHW float tensors in [-1, 1] (``ToTensor`` + ``Normalize(0.5, 0.5)``).

Modes that Pillow's ``convert("RGB")`` would clip instead of scale are converted here: 16-bit grayscale
(``I;16*``, and ``I``, the 32-bit mode Pillow also opens 16-bit files as) is taken as 0..65535 and float
(``F``) as 0..1, both rounded to 0..255; values outside those ranges are refused by file name.
"""

from __future__ import annotations

import os
import warnings
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

    Hidden files (``.DS_Store``) are ignored; every other file is expected to be an image. A symbolic link that
    resolves inside ``root``, or to a folder or file already listed, is skipped with a warning: it would list
    the same images twice, under a second label when it links a class folder. A class folder without images is
    refused, since it would become a class (a label) that no image teaches.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    real_root = root.resolve()
    walked, skipped = {real_root}, []  # real paths of the folders (and linked files) listed so far
    classes, files = [], []
    for entry in sorted(_entries(root), key=lambda e: e.name):
        real = _new_place(entry, real_root / entry.name, real_root, walked) if entry.is_dir() else None
        if real is None:
            skipped += [Path(entry.path)] if entry.is_dir() else []
            continue
        classes.append(entry.name)
        found = _walk_images(Path(entry.path), real, real_root, walked, skipped)
        files.extend((path, len(classes) - 1) for path in sorted(found))
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warnings.warn(f"image folder {root}: skipped {len(skipped)} symbolic link(s) into the folder or to a place "
                      f"already listed ({shown})", stacklevel=2)
    empty = sorted(set(classes) - {classes[label] for _, label in files})
    if empty and files:
        raise ValueError(f"image folder {root}: class folder(s) without images: {', '.join(empty)}; each sub-folder "
                         f"is a class, so remove them or add images")
    return classes, files


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return [e for e in it if not e.name.startswith(".")]


def _new_place(entry: os.DirEntry, real: Path, real_root: Path, walked: set[Path]) -> Path | None:
    """The real path of ``entry`` (``real`` when it is no link) if listing it adds images; None for a link into
    the root or to one of its parents, or for a place already listed."""
    if entry.is_symlink():
        real = Path(entry.path).resolve()
        if real == real_root or real_root in real.parents or real in real_root.parents:
            return None
    if real in walked or (not entry.is_dir() and real.parent in walked and entry.is_symlink()):
        return None
    walked.add(real)
    return real


def _walk_images(folder: Path, real: Path, real_root: Path, walked: set[Path], skipped: list[Path]) -> list[Path]:
    """Non-hidden files under ``folder`` (whose real path is ``real``), following links to new places only."""
    found = []
    for entry in _entries(folder):
        if not (entry.is_dir() or entry.is_file()):
            continue
        if not entry.is_symlink() and entry.is_file():  # the common case: no path resolution per file
            found.append(Path(entry.path))
            continue
        place = _new_place(entry, real / entry.name, real_root, walked)
        if place is None:
            skipped.append(Path(entry.path))
        elif entry.is_dir():
            found.extend(_walk_images(Path(entry.path), place, real_root, walked, skipped))
        else:
            found.append(Path(entry.path))
    return found


def to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """``image`` as 8-bit RGB; 16-bit and float modes are scaled (``convert`` would clip them to white / black)."""
    if image.mode.startswith("I"):  # "I;16", "I;16B", ... and "I"
        high, what = 65535, "16-bit"
    elif image.mode == "F":
        high, what = 1.0, "float"
    else:
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    if not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= high):
        raise BadImageError(f"{path}: {what} pixels ({image.mode}) outside 0..{high:g} (found {values.min():g}.."
                            f"{values.max():g}); ditlab reads {what} images as 0..{high:g}; convert it, or pass "
                            f"--skip-bad")
    gray = np.round(values * (255 / high)).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def read_image(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` fully, convert to RGB and center-crop; any decoding failure is a :class:`BadImageError`."""
    return center_crop_arr(decode_rgb(path), size)


def decode_rgb(path: Path) -> Image.Image:
    """The whole image at ``path`` as 8-bit RGB; any decoding failure is a :class:`BadImageError` naming it."""
    try:
        with Image.open(path) as image:
            image.load()  # Image.open only reads the header: truncation shows up here
            return to_rgb(image, path)
    except BadImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(f"{path}: not a readable image ({err}); fix or remove it, or pass --skip-bad") from err


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
                decode_rgb(path)
                good.append((path, label))
            except BadImageError:
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
