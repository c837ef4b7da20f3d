"""Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) over a possibly respaced GaussianDiffusion."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from ..objectives.gaussian import GaussianDiffusion
from .noise import Generators, randn_like

# (x_t, t) -> model output. Gaussian samplers pass t on the ORIGINAL timestep scale (timestep_map applied) and
# read the raw output; flow samplers pass t in [0, 1] and read the velocity.
Denoiser = Callable[[Tensor, Tensor], Tensor]
# callback(step_index, x, pred_xstart) after each step; step_index counts down T'-1 .. 0.
StepCallback = Callable[[int, Tensor, Tensor], None]


def reverse_indices(num_timesteps: int, progress: bool = False) -> Iterable[int]:
    """Process indices T'-1, ..., 0, wrapped in a tqdm bar if asked."""
    indices = range(num_timesteps - 1, -1, -1)
    if not progress:
        return indices
    from tqdm.auto import tqdm  # imported lazily: only needed for the bar

    return tqdm(indices)


def run_reverse_process(
    num_timesteps: int,
    step: Callable[[Tensor, Tensor], dict[str, Tensor]],
    noise: Tensor,
    *,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """x_{T'-1} = noise, then ``x = step(x, t)["sample"]`` for t = T'-1 .. 0 (the loop every sampler shares)."""
    x = noise
    for index in reverse_indices(num_timesteps, progress):
        out = step(x, batch_timesteps(index, x))
        x = out["sample"]
        if callback is not None:
            callback(index, x, out["pred_xstart"])
    return x


def batch_timesteps(index: int, x: Tensor) -> Tensor:
    """The (N,) int64 tensor of one process index for x's batch, on x's device."""
    return torch.full((x.shape[0],), index, dtype=torch.int64, device=x.device)


def ddpm_step(
    diffusion: GaussianDiffusion,
    denoiser: Denoiser,
    x: Tensor,
    t: Tensor,
    *,
    clip_denoised: bool = False,
    generator: Generators = None,
) -> dict[str, Tensor]:
    """One ancestral step x_t -> x_{t-1}: {"sample", "pred_xstart"} (official ``p_sample``)."""
    out = diffusion.p_mean_variance(denoiser(x, diffusion.original_timesteps(t)), x, t, clip_denoised)
    noise = randn_like(x, generator)  # drawn after the model call, as the official p_sample does
    return {"sample": diffusion.p_sample_step(out, t, noise), "pred_xstart": out["pred_xstart"]}


@torch.no_grad()
def sample_ddpm(
    diffusion: GaussianDiffusion,
    denoiser: Denoiser,
    noise: Tensor,
    *,
    clip_denoised: bool = False,
    generator: Generators = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Sample x_0 from x_{T'-1} = noise by ancestral steps over every step of ``diffusion``.

    ``generator``: None (global RNG), one generator, or one per sample (see ``noise.randn_like``).
    """
    def step(x: Tensor, t: Tensor) -> dict[str, Tensor]:
        return ddpm_step(diffusion, denoiser, x, t, clip_denoised=clip_denoised, generator=generator)

    return run_reverse_process(diffusion.num_timesteps, step, noise, progress=progress, callback=callback)
