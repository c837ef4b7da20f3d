"""Inception activations of uint8 images, reduced on the fly: float64 moments of the pool (FID) and spatial
(sFID) features over every image, pool features kept for Precision/Recall, logits for the Inception Score."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..imageio import to_rgb_uint8
from .metrics import FeatureMoments

DEFAULT_BATCH = 64  # images per Inception forward (ADM: 64)


def batches_of(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


@torch.no_grad()
def activations(batches: Iterable[np.ndarray], inception: torch.nn.Module, *, total: int | None = None,
                keep_pool: np.ndarray | None = None, keep_spatial: bool = False, progress: bool = False,
                desc: str = "inception") -> dict[str, np.ndarray]:
    """``mu``/``sigma`` (pool), ``mu_s``/``sigma_s`` (spatial) over every image of the uint8 NHWC batches,
    ``pool`` features (of all images, or of the sorted image indices ``keep_pool``), ``spatial`` features when
    ``keep_spatial``, ``logits`` when the network has a classifier, and ``num_images``."""
    device = next(inception.parameters()).device
    pool_m = spatial_m = None
    pools, spatials, logits, seen = [], [], [], 0
    for batch in tqdm(batches, total=total, disable=not progress, desc=desc, unit="batch", dynamic_ncols=True):
        out = inception(torch.from_numpy(np.ascontiguousarray(to_rgb_uint8(batch))).to(device))
        pool, spatial = out["pool"].double().cpu().numpy(), out["spatial"].double().cpu().numpy()
        if pool_m is None:
            pool_m, spatial_m = FeatureMoments(pool.shape[1]), FeatureMoments(spatial.shape[1])
        pool_m.update(pool)
        spatial_m.update(spatial)
        if keep_pool is not None:
            pool = pool[np.isin(np.arange(seen, seen + len(pool)), keep_pool)]
        pools.append(pool.astype(np.float32))
        if keep_spatial:
            spatials.append(spatial.astype(np.float32))
        if "logits" in out:
            logits.append(out["logits"].float().cpu().numpy())
        seen += len(out["pool"])
    if pool_m is None:
        raise ValueError("no images to score")
    mu, sigma = pool_m.statistics()
    mu_s, sigma_s = spatial_m.statistics()
    acts = {"pool": np.concatenate(pools), "mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s,
            "num_images": np.array(seen)}
    if spatials:
        acts["spatial"] = np.concatenate(spatials)
    if logits:
        acts["logits"] = np.concatenate(logits)
    return acts
