"""From a trained backbone to images: noise per image, a sampler, guidance, decoding."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..objectives import DiffusionConfig, GaussianDiffusion
from .ddim import sample_ddim
from .ddpm import sample_ddpm
from .guidance import CFGConfig, classifier_free_guidance


def image_generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per image, so each image's noise depends only on its own seed."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def initial_noise(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> Tensor:
    """x_T for each image from its own generator: (N, *shape)."""
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])


@torch.no_grad()
def generate_latents(
    model: nn.Module,
    diffusion: DiffusionConfig,
    labels: Tensor,
    *,
    sampler_steps: str = "250",
    cfg_scale: float = 1.0,
    guided_channels: int | None = None,
    eta: float = 0.0,
    seeds: list[int] | None = None,
    progress: bool = False,
) -> Tensor:
    """Sample model-space tensors for ``labels`` with the sampler that ``sampler_steps`` names.

    ``sampler_steps`` is a respacing string: "ddimN" runs DDIM (with ``eta``) over N steps; anything else
    ("250", "50", "10,20") runs ancestral DDPM over those steps. Image i uses seed ``seeds[i]`` (default i)
    for its initial noise and every later draw, so results do not depend on batch composition.
    """
    cfg = model.config
    device = next(model.parameters()).device
    labels = labels.to(device)
    seeds = list(range(len(labels))) if seeds is None else seeds
    if len(seeds) != len(labels):
        raise ValueError(f"got {len(seeds)} seeds for {len(labels)} labels; need one per image")
    process = GaussianDiffusion(dataclasses.replace(diffusion, timestep_respacing=sampler_steps))
    generators = image_generators(seeds, device)
    noise = initial_noise(generators, (cfg.in_channels, cfg.input_size, cfg.input_size), device)
    guidance = CFGConfig(scale=cfg_scale, null_class=cfg.num_classes, guided_channels=guided_channels)
    if not guidance.is_unguided and cfg.class_dropout_prob <= 0:
        raise ValueError("classifier-free guidance needs a model trained with label dropout (class_dropout_prob > 0)")
    denoiser = classifier_free_guidance(model, labels, guidance)
    was_training = model.training
    model.eval()  # label dropout must be off while sampling
    try:
        if sampler_steps.startswith("ddim"):
            return sample_ddim(process, denoiser, noise, eta=eta, generator=generators, progress=progress)
        return sample_ddpm(process, denoiser, noise, generator=generators, progress=progress)
    finally:
        model.train(was_training)


def generate(model: nn.Module, diffusion: DiffusionConfig, labels: Tensor, *, codec=None, seed: int = 0,
             **kwargs) -> Tensor:
    """Images in [-1, 1] for ``labels``: :func:`generate_latents` then ``codec.decode`` (identity if None).

    Image i uses seed ``seed + i``.
    """
    seeds = [seed + i for i in range(len(labels))]
    latents = generate_latents(model, diffusion, labels, seeds=seeds, **kwargs)
    return latents if codec is None else codec.decode(latents)
