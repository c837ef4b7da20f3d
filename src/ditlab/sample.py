"""``ditlab sample``: N images from a checkpoint into an ADM ``.npz`` (and optionally PNGs and a grid).

Image ``i`` has its own seed (``seed + i``) for all its noise, and its label is a function of ``i`` alone, so
the images do not depend on how many processes ran. The work is cut into chunks of ``batch_size`` consecutive
images; chunk ``c`` goes to rank ``c mod W`` and is written atomically to ``<out>.parts/`` when done, so a
crashed run continues where it stopped when the same command is run again, and every chunk is computed with
the same batch whatever the number of processes (bitwise equal results on CPU). Rank 0 then packs the chunks
into the ``.npz`` (``arr_0``: uint8 NHWC, ``arr_1``: labels), as DiT's ``sample_ddp.py`` + ADM expect.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import sample_checks as checks
from .imageio import make_grid, to_uint8
from .models.layers import ATTENTION_BACKENDS, set_attention_backend
from .objectives import DiffusionConfig
from .objectives.flow import FlowConfig
from .sampling import (
    Guidance,
    Sampler,
    ShareSpec,
    generate_latents,
    parse_sampler,
    parse_share_spec,
    sharing_schedule,
)
from .utils.files import atomic_write, check_or_write_identity
from .utils.integrity import path_sha256

LABEL_MODES = ("balanced", "random")
PRECISIONS = ("fp32", "bf16")


@dataclass
class SampleConfig:
    """Everything ``ditlab sample`` needs; the identity of a run (for resume) is all but the output flags."""

    checkpoint: str = ""  # step_*.safetensors of `ditlab train`, official DiT .pt, diffusers DiT folder, or Hub id
    model: str | None = None  # official .pt only: preset name (e.g. DiT-XL/2); None = read off the weights
    out: str = "samples/samples.npz"  # ADM .npz to write (arr_0 uint8 NHWC, arr_1 labels)
    num_images: int = 50000  # N (ADM/DiT FID: 50,000)
    labels: str = "balanced"  # "balanced": image i is class i mod classes (50K -> 50 per class); "random"; or a class
    sampler_steps: str = "250"  # "250" DDPM (DiT FID), "ddim50" DDIM; flow: "250" Euler, "heun12", "sde50", "ddt250"
    cfg_scale: float = 1.5  # classifier-free guidance scale (DiT FID: 1.5; 1 = none)
    guided_channels: int | None = None  # guide only the first K channels (official DiT/MDT: 3); None = all
    cfg_power: float | None = None  # MDT's power-cosine guidance schedule exponent (MDT FID: 4); None = constant
    eta: float = 0.0  # DDIM η
    cfg_interval: tuple[float, float] | None = None  # flow models: guide only for t in this interval (DDT: 0.3,1)
    share: str | None = None  # models with an encoder/decoder split (DDT): "uniform:R" or "dp:K" encoder sharing
    vae: str | None = None  # VAE folder or hub id, "identity" for pixel space; None: what the checkpoint records
    seed: int = 0  # image i uses seed + i
    batch_size: int = 32  # images per forward and per resumable chunk (keep it fixed across resumes)
    precision: str = "fp32"  # "fp32" or "bf16" autocast for the backbone
    attention: str = "sdpa"  # "sdpa", "explicit" (the official softmax) or "flex" (MDT: bias inside FlexAttention)
    compile: bool = False  # torch.compile each block (speed only: not part of the run's identity, like attention)
    png_dir: str | None = None  # also write every image as PNG here
    grid: str | None = None  # also write a grid PNG of the first grid_size images
    grid_size: int = 64  # images in the grid
    keep_parts: bool = False  # keep <out>.parts/ after packing the npz
    device: str | None = None  # "cpu" / "cuda"; None = CUDA when available
    allow_download: bool = False  # let Hub ids (checkpoint, VAE) be downloaded when not cached
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        for name in ("num_images", "batch_size", "grid_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention={self.attention!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
        if self.labels not in LABEL_MODES and not self.labels.isdigit():
            raise ValueError(f"labels={self.labels!r} must be one of {', '.join(LABEL_MODES)} or a class index")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Refuse settings that would silently give NaN (all-black) images or overflow a seed."""
        numbers = {"cfg_scale": self.cfg_scale, "eta": self.eta, "cfg_power": self.cfg_power}
        for name, value in numbers.items():
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name}={value} must be a finite number")
        if self.cfg_power is not None and self.cfg_power <= 0:
            raise ValueError(f"cfg_power={self.cfg_power} must be positive (or None for a constant scale)")
        if self.cfg_interval is not None and (len(self.cfg_interval) != 2 or  # NaN fails the comparison too
                                              not 0 <= self.cfg_interval[0] < self.cfg_interval[1] <= 1):
            raise ValueError(f"cfg_interval={self.cfg_interval} must be two times low,high with 0 <= low < high <= 1")
        if self.guided_channels is not None and self.guided_channels < 1:
            raise ValueError(f"guided_channels={self.guided_channels} must be >= 1 (or None for all channels)")
        if not 0 <= self.seed <= 2**64 - self.num_images:  # image i seeds a torch.Generator with seed + i
            raise ValueError(f"seed={self.seed} must be in 0..2**64 - num_images")

    def identity(self) -> dict[str, Any]:
        """The settings a resumed job must share (the checkpoint is pinned by content: see :func:`run_sample`)."""
        keys = ("model", "num_images", "labels", "sampler_steps", "cfg_scale", "guided_channels",
                "cfg_power", "eta", "cfg_interval", "share", "vae", "seed", "batch_size", "precision")
        out = {k: getattr(self, k) for k in keys}
        out["cfg_interval"] = list(self.cfg_interval) if self.cfg_interval else None  # as JSON reads it back
        return out


# ----------------------------------------------------------------------------
# Model and labels.


def load_sampling_model(path: str | Path, model: str | None = None,
                        allow_download: bool = False) -> tuple[nn.Module, DiffusionConfig | FlowConfig]:
    """A backbone in eval mode and its objective config (diffusion, or flow for flow-matching runs), from our
    checkpoint, an official DiT ``.pt`` or a diffusers DiT folder (each a local path or a Hub id)."""
    from .models.registry import model_from_config
    from .train.checkpoint import load_weights
    from .utils.hub import resolve_weights

    path = resolve_weights(path, "checkpoint", allow_download)
    if path.is_dir():
        from .interop.diffusers_dit import load_diffusers_dit

        loaded = load_diffusers_dit(path)
        return loaded.model, loaded.diffusion
    if checks.checkpoint_format(path) == "safetensors":
        state, meta = load_weights(path)
        if "family" not in meta or "config" not in meta:
            raise ValueError(f"{path} has no family/config metadata; is it a `ditlab train` checkpoint?")
        net = model_from_config(meta["family"], meta["config"])
        net.load_state_dict(state, strict=True)
        if meta.get("objective") == "flow":
            return net.eval(), FlowConfig(**meta["flow"])
        diffusion = DiffusionConfig(**meta["diffusion"]) if "diffusion" in meta else DiffusionConfig()
        return net.eval(), diffusion
    from .models.official import load_official_dit

    net = load_official_dit(path, model)
    return net, DiffusionConfig(learn_sigma=net.out_channels == 2 * net.in_channels)


def labels_for(indices: range, mode: str, num_classes: int, seed: int) -> torch.Tensor:
    """Labels of images ``indices``: class i mod K, a per-index seeded draw, or one fixed class."""
    if mode == "balanced":
        return torch.tensor([i % num_classes for i in indices], dtype=torch.int64)
    if mode == "random":
        return torch.tensor([int(np.random.default_rng([seed, i]).integers(num_classes)) for i in indices])
    if int(mode) >= num_classes:
        raise ValueError(f"labels={mode} is not a class of this model (0..{num_classes - 1})")
    return torch.full((len(indices),), int(mode), dtype=torch.int64)


# ----------------------------------------------------------------------------
# Chunks.


def chunk_ranges(num_images: int, batch_size: int) -> list[range]:
    return [range(s, min(s + batch_size, num_images)) for s in range(0, num_images, batch_size)]


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def chunk_path(parts: Path, c: int) -> Path:
    return parts / f"chunk_{c:06d}.npz"


def prepare_for_speed(model: nn.Module, config: SampleConfig) -> nn.Module:
    """The --attention backend and, if asked, a compiled block each (the same weights and outputs up to rounding)."""
    set_attention_backend(model, config.attention)
    if config.compile:
        for block in getattr(model, "blocks", []):
            block.compile()
    return model


def sampling_settings(config: SampleConfig, objective: DiffusionConfig | FlowConfig,
                      ) -> tuple[Sampler, Guidance, ShareSpec | None]:
    """The sampler spec, guidance and encoder sharing that the command line's strings and numbers name."""
    guidance = Guidance(config.cfg_scale, config.guided_channels, config.cfg_power,
                        None if config.cfg_interval is None else tuple(config.cfg_interval))
    return parse_sampler(config.sampler_steps, objective, config.eta), guidance, parse_share_spec(config.share)


def _autocast(model: nn.Module, config: SampleConfig) -> torch.autocast:
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def solved_share(model: nn.Module, diffusion: DiffusionConfig | FlowConfig, config: SampleConfig) -> list[int] | None:
    """The encoder-sharing schedule of the job, solved once (``dp:K`` calibrates on 8 images: not once per chunk;
    the calibration is seeded, so every chunk and every rank gets the same schedule)."""
    sampler, guidance, share = sampling_settings(config, diffusion)
    with _autocast(model, config):
        return sharing_schedule(model, diffusion, sampler, share, guidance)


def sample_chunk(model: nn.Module, diffusion: DiffusionConfig | FlowConfig, codec: Any, config: SampleConfig,
                 indices: range, schedule: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, H, W, 3) images (grayscale repeated to RGB) and labels of one chunk; ``schedule``: the solved
    encoder sharing (:func:`solved_share`), else ``config.share`` is solved here."""
    labels = labels_for(indices, config.labels, model.config.num_classes, config.seed)
    sampler, guidance, share = sampling_settings(config, diffusion)
    share = share if schedule is None else schedule
    with _autocast(model, config):
        latents = generate_latents(model, diffusion, labels, sampler, guidance=guidance, share=share,
                                   seeds=[config.seed + i for i in indices])
    images = codec.decode(latents.float())
    if images.shape[1] == 1:  # grayscale (MNIST-style pixel models): repeated to RGB, as ADM's npz and Inception need
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"decoded images have {images.shape[1]} channels; ADM npz needs RGB (check --vae)")
    checks.check_finite_images(images, config, indices)
    return to_uint8(images), labels.numpy()


def _write_chunk(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels)

    atomic_write(path, write)



# ----------------------------------------------------------------------------
# Packing.


def pack_outputs(config: SampleConfig, num_chunks: int) -> Path:
    """Concatenate the chunks into the ADM npz; optional PNGs and grid; remove the parts."""
    from .eval.reference import write_npz

    out = Path(config.out)
    parts = parts_dir(out)
    images, labels = [], []
    for c in range(num_chunks):
        with np.load(chunk_path(parts, c)) as f:
            images.append(f["images"])
            labels.append(f["labels"])
    arr, lab = np.concatenate(images), np.concatenate(labels)
    _save_pngs_and_grid(config, arr)
    write_npz(out, arr, lab)
    if not config.keep_parts:
        shutil.rmtree(parts)
    return out


def _save_pngs_and_grid(config: SampleConfig, images: np.ndarray) -> None:
    from PIL import Image

    if config.png_dir:
        folder = Path(config.png_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:06d}.png")
    if config.grid:
        shown = images[: config.grid_size]
        grid = make_grid(shown, nrow=max(1, math.ceil(math.sqrt(len(shown)))))
        Path(config.grid).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(config.grid)


DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"  # what the official DiT checkpoints were trained with


def recorded_vae(checkpoint: Path) -> str:
    """The codec a checkpoint's samples decode with: a ditlab checkpoint records it ("identity" for pixel-space
    runs); a diffusers pipeline folder has its own ``vae/``; anything else (official DiT files, ditlab checkpoints
    older than the record) gets DiT's SD VAE."""
    if checkpoint.is_dir():
        return str(checkpoint) if (checkpoint / "vae").is_dir() else DEFAULT_VAE
    if checks.checkpoint_format(checkpoint) == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(checkpoint), framework="pt") as f:
                return (f.metadata() or {}).get("vae") or DEFAULT_VAE
        except Exception:  # a damaged file: loading the weights names it in one line
            return DEFAULT_VAE
    return DEFAULT_VAE


# ----------------------------------------------------------------------------
# The job.


def run_sample(config: SampleConfig) -> Path:
    """Generate (or finish generating) ``config.num_images`` images; returns the npz path (all ranks)."""
    from .utils.distributed import barrier, init_distributed
    from .vae import load_codec

    if not config.checkpoint:
        raise ValueError("--checkpoint is required (a step_*.safetensors or an official DiT .pt)")
    from .utils.hub import resolve_weights

    local = resolve_weights(config.checkpoint, "checkpoint", config.allow_download)  # fail before any work
    if local.is_file():
        checks.checkpoint_format(local)
    config = dataclasses.replace(config, vae=config.vae or recorded_vae(local))
    info = init_distributed(config.device)
    out = Path(config.out)
    parts = parts_dir(out)
    chunks = chunk_ranges(config.num_images, config.batch_size)
    if out.is_file() and not parts.exists():
        raise ValueError(f"{out} already exists (a finished run); remove it or choose another --out")
    checks.check_outputs(config)
    # Pinned by content, not path: a resumed job must use the same weights even if the file moved or was replaced.
    identity = {**config.identity(), "checkpoint_sha256": path_sha256(local)}
    # A folder without chunks holds no images to protect: a job refused earlier may be rerun with fixed settings.
    fresh = not any(chunk_path(parts, c).is_file() for c in range(len(chunks)))
    if not fresh:
        check_or_write_identity(parts / "sample.json", identity, False, "a different sampling run")
    todo = [c for c in range(len(chunks)) if c % info.world_size == info.rank and not chunk_path(parts, c).is_file()]
    if todo:  # every check that needs the model, before the job is pinned: a refused option can then be fixed
        model, diffusion = load_sampling_model(config.checkpoint, config.model, config.allow_download)
        checks.check_options_fit(model, diffusion, config)
        checks.check_finite_weights(model, config.checkpoint)
        model = prepare_for_speed(model.to(info.device), config)
        codec = load_codec(config.vae, model.config.in_channels, info.device, config.allow_download)
        checks.check_codec_fits(codec, model, config)
    parts.mkdir(parents=True, exist_ok=True)
    if fresh and info.is_main:
        (parts / "sample.json").unlink(missing_ok=True)
    if info.is_main or not fresh:
        check_or_write_identity(parts / "sample.json", identity, info.is_main, "a different sampling run")
    barrier()  # every rank decided `fresh` before any chunk of this job is written
    if todo:
        bar = tqdm(total=len(todo), disable=not (info.is_main and config.progress), desc="sample", unit="chunk",
                   dynamic_ncols=True)
        schedule = solved_share(model, diffusion, config)
        for c in todo:
            images, labels = sample_chunk(model, diffusion, codec, config, chunks[c], schedule)
            _write_chunk(chunk_path(parts, c), images, labels)
            bar.update(1)
        bar.close()
    barrier()
    if info.is_main:
        pack_outputs(config, len(chunks))
    barrier()
    return out
