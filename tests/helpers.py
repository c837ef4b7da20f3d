"""Test helpers: golden files (copied unchanged from ../shared/golden) and tiny model sizes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

GOLDEN_DIR = Path(__file__).parent / "golden"
SHARED_GOLDEN_DIR = Path(__file__).resolve().parents[2] / "shared" / "golden"


def manifest() -> dict:
    return json.loads((GOLDEN_DIR / "MANIFEST.json").read_text())


def golden(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(manifest entry, tensors) of one golden file."""
    return manifest()["files"][name], load_file(str(GOLDEN_DIR / name))


def golden_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}


TINY_DIT = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)

# One small config per family (the CPU tests of the shared step, sync-freedom and compile readiness).
SMALL_MODELS = {
    "DiT": dict(input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=10),
    "MDTv2": dict(input_size=8, patch_size=2, hidden_size=32, depth=4, num_heads=2, num_classes=10, decode_layer=2),
    "DDT": dict(input_size=8, patch_size=2, hidden_size=32, num_blocks=3, num_encoder_blocks=2, num_groups=2,
                num_classes=10),
    "DiffuSSM": dict(input_size=4, hidden_size=16, depth=2, state_size=4, num_classes=10),
}


def small_objective(family: str):
    """The family's own training objective: flow matching (DDT), MDT's two passes (MDTv2), else diffusion."""
    from ditlab.objectives import DiffusionConfig, GaussianDiffusion
    from ditlab.objectives.flow import FlowConfig, FlowMatching
    from ditlab.objectives.masked import MaskedDiffusionObjective

    if family == "DDT":
        return FlowMatching(FlowConfig())
    diffusion = GaussianDiffusion(DiffusionConfig())
    return MaskedDiffusionObjective(diffusion) if family == "MDTv2" else diffusion
