"""Backbones. Each maps ``(x_t, t, y) -> output`` and knows nothing about noise schedules."""

from .dit import DiT, DiTConfig

__all__ = ["DiT", "DiTConfig"]
