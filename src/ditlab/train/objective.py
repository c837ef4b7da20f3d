"""Which objective a run trains under: the one place that maps ``TrainConfig.objective`` to an object.

An objective has ``loss(model, x0, y) -> dict`` of per-sample tensors (``"loss"`` required). Backbones stay
objective-agnostic.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..objectives import GaussianDiffusion
from ..objectives.flow import FlowMatching
from ..objectives.masked import MaskedDiffusionObjective

# "diffusion": DDPM-family Gaussian diffusion (DiT's); "mdt": the same, plus MDT's masked pass (MDT/MDTv2 models);
# "flow": linear-path flow matching (DDT's; DiT under it is SiT), plus REPA when config.repa.enabled
OBJECTIVES = ("diffusion", "mdt", "flow")


def build_objective(config: Any, model: nn.Module | None = None, data: Any = None) -> Any:
    """The objective object for a TrainConfig (``model`` sizes REPA's projector; ``data``, a DataSource, is
    checked to hold the real images REPA aligns to)."""
    if config.objective == "diffusion":
        return GaussianDiffusion(config.diffusion)
    if config.objective == "mdt":
        return MaskedDiffusionObjective(GaussianDiffusion(config.diffusion))
    if config.objective == "flow":
        return build_flow_objective(config, model, data)
    raise ValueError(f"objective={config.objective!r} is not one of {', '.join(OBJECTIVES)}")


def required_out_channels(config: Any, in_channels: int) -> int:
    """Output channels the objective needs from a backbone with ``in_channels`` inputs."""
    if config.objective in ("diffusion", "mdt"):
        return 2 * in_channels if config.diffusion.learn_sigma else in_channels
    return in_channels


def build_flow_objective(config: Any, model: nn.Module | None, data: Any = None) -> Any:
    """Flow matching, wrapped with REPA (projector + frozen DINOv2 from ``config.repa.encoder_path``) when on."""
    flow = FlowMatching(config.flow)
    if not config.repa.enabled:
        return flow
    from ..objectives import dinov2
    from ..objectives.repa import REPAFlowMatching

    path = config.repa.check_encoder_path()
    if model is None:
        raise ValueError("REPA needs the backbone to size its projector; pass model=")
    if data is not None and not data.has_images:
        raise ValueError(f"REPA aligns to the real images, but data={config.data!r} holds latents without them; "
                         "extract with `ditlab extract-latents --images true`")
    return REPAFlowMatching(flow, config.repa, model.config.hidden_size, dinov2.load_dinov2(path))


def sampling_config(config: Any) -> Any:
    """The objective config samplers need: ``config.flow`` for flow matching, else ``config.diffusion``."""
    return config.flow if config.objective == "flow" else config.diffusion


def trainable_parameters(objective: Any) -> list[nn.Parameter]:
    """Parameters an objective trains alongside the backbone (REPA's projector); [] for plain objectives."""
    if not isinstance(objective, nn.Module):
        return []
    return [p for p in objective.parameters() if p.requires_grad]
