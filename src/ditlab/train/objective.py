"""Which objective a run trains under: the one place that maps ``TrainConfig.objective`` to an object.

An objective has ``loss(model, x0, y) -> dict`` of per-sample tensors (``"loss"`` required). Backbones stay
objective-agnostic.
"""

from __future__ import annotations

from typing import Any

from ..objectives import GaussianDiffusion

OBJECTIVES = ("diffusion",)  # "diffusion": DDPM-family Gaussian diffusion (DiT's)


def build_objective(config: Any) -> Any:
    """The objective object for a TrainConfig."""
    if config.objective == "diffusion":
        return GaussianDiffusion(config.diffusion)
    raise ValueError(f"objective={config.objective!r} is not one of {', '.join(OBJECTIVES)}")


def required_out_channels(config: Any, in_channels: int) -> int:
    """Output channels the objective needs from a backbone with ``in_channels`` inputs."""
    if config.objective == "diffusion":
        return 2 * in_channels if config.diffusion.learn_sigma else in_channels
    return in_channels
