"""Training objectives: the Gaussian diffusion process of DiT/MDT and its noise schedules."""

from .gaussian import (
    PREDICTIONS,
    DiffusionConfig,
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)
from .schedules import BETA_SCHEDULES, beta_schedule, space_timesteps

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTIONS",
    "DiffusionConfig",
    "GaussianDiffusion",
    "beta_schedule",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
    "space_timesteps",
]
