"""FID while training (``--fid-every N --fid-samples K``).

Every N steps the EMA model samples K images with the run's grid sampler (``sample_steps``, ``sample_cfg``),
labels ``i mod num_classes`` (class-balanced) and per-image seeds ``FID_SEED_OFFSET + seed + i`` (the same
noise at every evaluation, so the curve shows the model changing, not the noise). Under torchrun rank r draws
one contiguous block of image indices (:func:`rank_share`; the blocks in rank order tile 0..K-1) and rank 0
gathers them in rank order, so the images (hence the FID) do not depend on the number of processes. Rank 0
scores them against the reference statistics, computed once (and cached, see :mod:`ditlab.eval.score`) at the
start: by default the training data's train split at the size and fit of the decoded images.

Nothing here touches the training RNG streams (sampling uses per-image generators and every training step
re-seeds), so a resumed run still repeats an uninterrupted one exactly.

``train_flops`` is steps × global batch × the training cost of one image from
:func:`ditlab.flops.training_gmacs` (the one definition, also the study's): 3 × forward, plus 3 × MDT's masked
forward under ``objective="mdt"``, 2 FLOPs per multiply-accumulate (matmuls and convolutions); REPA's frozen
encoder is not in it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..utils.distributed import DistInfo, barrier, gather_objects

FID_SEED_OFFSET = 1_000_000  # keeps FID noise apart from the grids' seeds (seed + i)
FID_METRICS = ("fid",)


@dataclass
class FIDState:
    """What rank 0 keeps between evaluations (the other ranks hold ``reference=None``)."""

    reference: dict[str, np.ndarray] | None
    reference_name: str
    flops_per_step: float  # training FLOPs of one optimizer step (flops.training_gmacs)


def flops_per_step(model: nn.Module, config: Any) -> float:
    """Training FLOPs of one optimizer step: :func:`~ditlab.flops.training_gmacs` of the run's model and objective
    (2 FLOPs per MAC) × global batch, counted on the meta device."""
    from ..flops import FLOPS_PER_MAC, training_gmacs

    fields = dataclasses.asdict(model.config)
    _, train_gmacs = training_gmacs(config.model, config.objective, image_size=fields["input_size"],
                                    latent_downsample=1, **fields)
    return FLOPS_PER_MAC * train_gmacs * 1e9 * config.global_batch


def prepare(config: Any, model: nn.Module, image_size: int, info: DistInfo, fit: str | None = None) -> FIDState:
    """Reference statistics on rank 0 (computed or read from the cache) while the other ranks wait.

    ``image_size``/``fit``: the side (and 28x28 fit) of the images the run's samples decode to, which for latent
    data is the extraction's image size, not the latent side; ``fit`` defaults to ``config.image_fit``."""
    from ..eval import score  # scipy and the Inception load only when FID is on

    name = score.reference_spec(config.data, config.fid_reference)  # default: the whole train split
    reference, fit = None, fit or config.image_fit
    if info.is_main:
        weights = None if config.fid_inception is None else str(config.fid_inception)
        net = score.cached_inception(weights, str(info.device))
        todo = score.reference_to_compute(name, net, image_size=image_size, fit=fit)
        if todo is not None:  # the default (a whole train split) takes hours of Inception on a CPU
            print(f"FID reference {name}: computing the Inception statistics of {todo[0]} images once, cached "
                  f"in {todo[1]} (a smaller one: --fid-reference KIND:train:N)", file=sys.stderr, flush=True)
        reference = score.reference_statistics(name, image_size=image_size, fit=fit, progress=config.progress,
                                               inception=net)
    barrier()
    return FIDState(reference, name, flops_per_step(model, config))


def rank_share(num_images: int, info: DistInfo) -> range:
    """The contiguous block of FID image indices this rank samples (blocks in rank order tile 0..K-1)."""
    per, extra = divmod(num_images, info.world_size)
    start = info.rank * per + min(info.rank, extra)
    return range(start, start + per + (info.rank < extra))


def sample_images(model: nn.Module, config: Any, codec: Any, indices: range, num_classes: int) -> np.ndarray:
    """uint8 (n, H, W, C) images number ``indices`` of the FID set, with the grids' sampler; image i has label
    i mod num_classes and seed FID_SEED_OFFSET + seed + i. The one call into the sampling layer."""
    from ..imageio import to_uint8
    from ..sampling import Guidance, generate, parse_sampler
    from .objective import sampling_config

    objective = sampling_config(config)
    sampler, guidance = parse_sampler(config.sample_steps, objective), Guidance(config.sample_cfg)
    out = []
    for start in range(indices.start, indices.stop, max(1, config.global_batch)):
        part = range(start, min(start + config.global_batch, indices.stop))
        labels = torch.tensor([i % num_classes for i in part])
        images = generate(model, objective, labels, sampler, guidance=guidance,
                          seed=FID_SEED_OFFSET + config.seed + start, codec=codec)
        out.append(to_uint8(images))
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 0), np.uint8)


def gather_to_main(images: np.ndarray, info: DistInfo) -> np.ndarray | None:
    """Every rank's block on rank 0, in rank (= index) order; None on the other ranks."""
    blocks = gather_objects(images)
    return np.concatenate([b for b in blocks if len(b)]) if blocks is not None else None


def evaluate(state: FIDState, model: nn.Module | None, config: Any, codec: Any, num_classes: int, step: int,
             info: DistInfo, split: bool) -> dict[str, Any] | None:
    """Sample (split over ranks when ``split``, else rank 0 alone), gather, score: the metrics row on rank 0."""
    tic = time.perf_counter()
    share = rank_share(config.fid_samples, info) if split else range(config.fid_samples if info.is_main else 0)
    local = sample_images(model, config, codec, share, num_classes) if len(share) else np.zeros((0,), np.uint8)
    images = gather_to_main(local, info) if split else (local if info.is_main else None)
    if not info.is_main:
        return None
    from ..eval.score import score_images

    scores = score_images(images, state.reference, metrics=FID_METRICS, device=str(info.device),
                          inception=config.fid_inception)
    return {"step": step, "fid": scores["fid"], "fid_samples": len(images), "fid_reference": state.reference_name,
            "train_flops": step * state.flops_per_step, "fid_seconds": time.perf_counter() - tic}
