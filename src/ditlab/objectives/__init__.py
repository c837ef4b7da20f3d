"""Training objectives: the Gaussian diffusion process of DiT/MDT (and its noise schedules) and flow matching."""

from .flow import T_SAMPLINGS, FlowConfig, FlowMatching
from .gaussian import (
    PREDICTIONS,
    DiffusionConfig,
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)
from .masked import MaskedDiffusionObjective
from .schedules import BETA_SCHEDULES, beta_schedule, space_timesteps

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTIONS",
    "T_SAMPLINGS",
    "DiffusionConfig",
    "FlowConfig",
    "FlowMatching",
    "GaussianDiffusion",
    "MaskedDiffusionObjective",
    "beta_schedule",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
    "space_timesteps",
]
