"""DDIM sampling (Song et al. 2021, eq. 12) over a possibly respaced GaussianDiffusion.

DDIM is only faster than DDPM when the process is respaced (e.g. "ddim50"); it walks every step it is given.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..objectives.gaussian import GaussianDiffusion
from .ddpm import Denoiser, StepCallback, run_reverse_process
from .noise import Generators, randn_like


def ddim_sample_step(
    diffusion: GaussianDiffusion,
    denoiser: Denoiser,
    x: Tensor,
    t: Tensor,
    *,
    eta: float = 0.0,
    clip_denoised: bool = False,
    generator: Generators = None,
) -> dict[str, Tensor]:
    """One DDIM step x_t -> x_{t-1}: {"sample", "pred_xstart"} (official ``ddim_sample``).

    Noise is drawn only when eta != 0 (with eta = 0 it would be multiplied by zero anyway).
    """
    model_output = denoiser(x, diffusion.original_timesteps(t))
    noise = randn_like(x, generator) if eta != 0 else None
    return diffusion.ddim_step(model_output, x, t, eta, noise, clip_denoised=clip_denoised)


@torch.no_grad()
def sample_ddim(
    diffusion: GaussianDiffusion,
    denoiser: Denoiser,
    noise: Tensor,
    *,
    eta: float = 0.0,
    clip_denoised: bool = False,
    generator: Generators = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Sample x_0 from x_{T'-1} = noise by DDIM steps; eta = 0 is deterministic, eta = 1 is DDPM-like."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    def step(x: Tensor, t: Tensor) -> dict[str, Tensor]:
        return ddim_sample_step(diffusion, denoiser, x, t, eta=eta, clip_denoised=clip_denoised, generator=generator)

    return run_reverse_process(diffusion.num_timesteps, step, noise, progress=progress, callback=callback)
