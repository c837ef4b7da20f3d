"""Sampling: sampler specs and the pure samplers they run, guidance, encoder sharing, and ``generate``.

    from ditlab.sampling import DDIM, Euler, Guidance, generate_latents
    latents = generate_latents(model, objective, labels, DDIM(50), guidance=Guidance(1.5))

See ``docs/sampling.md``: a sampler is a small function of a denoiser and a time grid; a spec (one frozen
dataclass per sampler) says which to run and how its family calls the model.
"""

from .ddim import ddim_sample_step, sample_ddim
from .ddpm import Denoiser, StepCallback, ddpm_step, sample_ddpm
from .generate import generate, generate_latents, image_generators, initial_noise, model_denoiser, sharing_schedule
from .guidance import CFGConfig, Guidance, classifier_free_guidance, guide, power_cosine_scale
from .noise import Generators, randn_like
from .ode import (
    guidance_interval,
    heun_evaluations,
    sample_euler,
    sample_euler_maruyama,
    sample_heun,
    shift_time,
    time_grid,
)
from .parse import parse_sampler
from .samplers import DDIM, DDPM, DDTEuler, Euler, EulerMaruyama, FlowSampler, GaussianSampler, Heun, Sampler
from .sharing import SharedEncoder, ShareSpec, dp_schedule, parse_share_spec, uniform_schedule

__all__ = [
    "CFGConfig",
    "DDIM",
    "DDPM",
    "DDTEuler",
    "Denoiser",
    "Euler",
    "EulerMaruyama",
    "FlowSampler",
    "GaussianSampler",
    "Generators",
    "Guidance",
    "Heun",
    "Sampler",
    "ShareSpec",
    "SharedEncoder",
    "StepCallback",
    "classifier_free_guidance",
    "ddim_sample_step",
    "ddpm_step",
    "dp_schedule",
    "generate",
    "generate_latents",
    "guidance_interval",
    "guide",
    "heun_evaluations",
    "image_generators",
    "initial_noise",
    "model_denoiser",
    "parse_sampler",
    "parse_share_spec",
    "power_cosine_scale",
    "randn_like",
    "sample_ddim",
    "sample_ddpm",
    "sample_euler",
    "sample_euler_maruyama",
    "sample_heun",
    "sharing_schedule",
    "shift_time",
    "time_grid",
    "uniform_schedule",
]
