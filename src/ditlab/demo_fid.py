"""The real-data half of ``ditlab demo`` (``--data fashion-mnist`` or ``mnist:DIR``): sample, save the grid and
the ADM ``.npz``, and score FID with the real FID Inception network.

FID depends on the sample count (it is biased upward for small counts), so beside the model's FID the demo
prints the FID of as many real test images against the same reference: the floor this count allows. Both
reference statistics are computed once and cached (see :mod:`ditlab.eval.score`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .data.idx import IDXSpec, as_idx_spec, find_idx_file, parse_idx_spec
from .eval.reference import write_npz
from .eval.score import metrics_from_activations, reference_spec, reference_statistics, score_images
from .imageio import save_grid, to_rgb_uint8
from .sampling import Guidance, generate, parse_sampler

REFERENCE_IMAGES = 2000  # default reference: the first 2,000 train images (Inception costs ~0.1 s per image here)


def demo_reference(cfg: Any) -> str:
    """The FID reference: ``cfg.fid_reference``, or the first REFERENCE_IMAGES of the data's train split."""
    return reference_spec(cfg.data, cfg.fid_reference, REFERENCE_IMAGES)


def floor_spec(cfg: Any, count: int) -> str:
    """``count`` real images of the data's test split: scored like the samples, they give the FID floor."""
    data = as_idx_spec(cfg.data)
    return str(IDXSpec(data.kind, data.root, "test", count))


def check_inputs(cfg: Any) -> None:
    """Before training: the Inception weights, the reference's and the floor's files exist (else one line)."""
    from .eval.inception import inception_weights_path

    inception_weights_path()
    for spec in (demo_reference(cfg), floor_spec(cfg, 10 * cfg.samples_per_class)):
        idx = parse_idx_spec(spec)
        if idx is None:  # an ADM .npz reference
            if not Path(spec).is_file():
                raise FileNotFoundError(f"FID reference {spec} does not exist (a dataset spec or an ADM .npz)")
            continue
        find_idx_file(idx, 0)
        find_idx_file(idx, 1)


def sample_and_score(model: torch.nn.Module, cfg: Any, run_dir: Path, process: Any) -> dict[str, Any]:
    """Sample ``samples_per_class`` images per class, save the 10x10 grid and ``samples.npz``, and score FID."""
    labels = torch.arange(10).repeat_interleave(cfg.samples_per_class)
    tic = time.perf_counter()
    sampler = parse_sampler(cfg.sampler_steps, process, clip_denoised=cfg.clip_denoised)
    images = generate(model, process, labels, sampler, guidance=Guidance(cfg.cfg_scale), seed=cfg.seed,
                      progress=cfg.progress)
    sample_seconds = time.perf_counter() - tic
    per_class = images.reshape(10, cfg.samples_per_class, *images.shape[1:])
    grid_path = save_grid(per_class[:, :10].reshape(-1, *images.shape[1:]), run_dir / "samples.png", nrow=10,
                          scale=4)
    rgb = to_rgb_uint8(images)  # grayscale -> RGB, as ADM's .npz holds
    npz_path = write_npz(run_dir / "samples.npz", rgb, labels.numpy())

    tic = time.perf_counter()
    reference = demo_reference(cfg)
    ref_stats = reference_statistics(reference, image_size=cfg.image_size, fit=cfg.image_fit,
                                     progress=cfg.progress)
    fid = score_images(rgb, ref_stats, metrics=("fid",), progress=cfg.progress)["fid"]
    floor_images = floor_spec(cfg, len(labels))
    floor_stats = reference_statistics(floor_images, image_size=cfg.image_size, fit=cfg.image_fit,
                                       progress=cfg.progress)
    floor = metrics_from_activations(ref_stats, floor_stats, ("fid",))["fid"]
    return {
        "fid": float(fid), "fid_floor": float(floor), "num_samples": len(labels), "reference": reference,
        "floor_images": floor_images, "sample_seconds": sample_seconds,
        "fid_seconds": time.perf_counter() - tic, "grid": str(grid_path), "samples_npz": str(npz_path),
    }


def format_fid_report(report: dict[str, Any]) -> str:
    cfg = report["config"]
    return "\n".join([
        f"FID {report['fid']:.2f} over {report['num_samples']} samples against {report['reference']} "
        f"(real FID Inception; {cfg['sampler_steps']}, guidance {cfg['cfg_scale']})",
        f"  floor at this count: FID {report['fid_floor']:.2f} of {report['num_samples']} real images "
        f"({report['floor_images']}) against the same reference",
        f"time: {report['train_seconds']:.0f} s training, {report['sample_seconds']:.0f} s sampling, "
        f"{report['fid_seconds']:.0f} s FID, {report['total_seconds']:.0f} s in all",
        f"sample grid (row = class 0..9): {report['grid']}",
        f"samples (ADM .npz):             {report['samples_npz']}  (ditlab evaluate --help)",
        f"EMA checkpoint:                 {report['checkpoint']}",
        f"metrics:                        {report['metrics']}  (TensorBoard: {report['tensorboard']})",
        f"report:                         {Path(report['grid']).parent / 'demo.json'}",
    ])
