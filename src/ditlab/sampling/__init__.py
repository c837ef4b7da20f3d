"""Samplers (DDPM, DDIM) and classifier-free guidance over a GaussianDiffusion."""

from .ddim import ddim_sample_step, sample_ddim
from .ddpm import Denoiser, StepCallback, ddpm_step, sample_ddpm
from .guidance import CFGConfig, classifier_free_guidance, guide
from .noise import Generators, randn_like

__all__ = [
    "CFGConfig",
    "Denoiser",
    "Generators",
    "StepCallback",
    "classifier_free_guidance",
    "ddim_sample_step",
    "ddpm_step",
    "guide",
    "randn_like",
    "sample_ddim",
    "sample_ddpm",
]
