"""Samplers (DDPM, DDIM over a GaussianDiffusion; Euler/Heun/Euler–Maruyama for flow matching), guidance, sharing."""

from .ddim import ddim_sample_step, sample_ddim
from .ddpm import Denoiser, StepCallback, ddpm_step, sample_ddpm
from .guidance import CFGConfig, classifier_free_guidance, guide, power_cosine_scale
from .noise import Generators, randn_like
from .ode import (
    FlowSamplerConfig,
    guidance_interval,
    sample_euler,
    sample_euler_maruyama,
    sample_flow,
    sample_heun,
    shift_time,
    time_grid,
)
from .sharing import SharedEncoder, ShareSpec, dp_schedule, parse_share_spec, uniform_schedule

__all__ = [
    "CFGConfig",
    "Denoiser",
    "FlowSamplerConfig",
    "Generators",
    "ShareSpec",
    "SharedEncoder",
    "StepCallback",
    "classifier_free_guidance",
    "ddim_sample_step",
    "ddpm_step",
    "dp_schedule",
    "guidance_interval",
    "guide",
    "power_cosine_scale",
    "parse_share_spec",
    "randn_like",
    "sample_ddim",
    "sample_ddpm",
    "sample_euler",
    "sample_euler_maruyama",
    "sample_flow",
    "sample_heun",
    "shift_time",
    "time_grid",
    "uniform_schedule",
]
