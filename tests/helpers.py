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


class StandInInception(torch.nn.Module):
    """Stands in for the FID Inception in plumbing tests (caching, training-time FID): fixed random projections
    of 4x4-pooled pixels, 6 "pool" and 3 "spatial" features, no logits head, any image size."""

    has_logits = False

    def __init__(self, weights_file=None):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(4 * 4 * 3, 6, generator=g), requires_grad=False)
        self.weights_file = weights_file
        self.images_seen = 0

    def forward(self, images):
        self.images_seen += len(images)
        x = torch.nn.functional.adaptive_avg_pool2d(images.permute(0, 3, 1, 2).float() / 255, 4)
        feats = x.flatten(1) @ self.w
        return {"pool": feats, "spatial": feats[:, :3]}
