"""Backbones. Each maps ``(x_t, t, y) -> output`` and knows nothing about noise schedules."""

from .ddt import DDT, DDTConfig
from .diffussm import DiffuSSM, DiffuSSMConfig
from .dit import DiT, DiTConfig
from .mdt import MDT, MDTConfig, MDTv2, MDTv2Config

__all__ = [
    "DDT", "DDTConfig", "DiT", "DiTConfig", "DiffuSSM", "DiffuSSMConfig", "MDT", "MDTConfig", "MDTv2", "MDTv2Config",
]
