"""CUDA-only checks of the fast paths (skipped without a GPU): no host syncs, flex == SDPA, bf16 steps finite.

These run on a machine with a GPU (``pytest tests/test_cuda.py``); CI has none and skips them.
"""

from __future__ import annotations

import pytest
import torch

import ditlab
from ditlab.models.checks import inputs_checked_once
from ditlab.models.layers import RelPosAttention, set_attention_backend
from ditlab.objectives import DiffusionConfig, GaussianDiffusion
from ditlab.sampling import CFGConfig, classifier_free_guidance, ddpm_step
from ditlab.sampling.ddpm import batch_timesteps
from ditlab.train.config import TrainConfig
from ditlab.train.ema import EMA
from ditlab.train.objective import build_objective
from ditlab.train.step import StepParts, optimisation_step, read_window

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL = {
    "DiT": (dict(input_size=16, patch_size=2, hidden_size=128, depth=2, num_heads=4, num_classes=10), "diffusion"),
    "MDTv2": (dict(input_size=16, patch_size=2, hidden_size=128, depth=4, num_heads=4, num_classes=10,
                   decode_layer=2), "mdt"),
    "DDT": (dict(input_size=16, patch_size=2, hidden_size=128, num_blocks=3, num_encoder_blocks=2, num_groups=4,
                 num_classes=10), "flow"),
    "DiffuSSM": (dict(input_size=8, hidden_size=64, depth=2, state_size=8, num_classes=10), "diffusion"),
}


def cuda_parts(family: str) -> StepParts:
    torch.manual_seed(0)
    kwargs, objective = SMALL[family]
    model = ditlab.create_model(family, **kwargs).cuda()
    learn_sigma = model.out_channels == 2 * kwargs.get("in_channels", 4)
    config = TrainConfig(objective=objective, diffusion=DiffusionConfig(learn_sigma=learn_sigma))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    return StepParts(model, model, build_objective(config, model=model), opt, EMA(model),
                     torch.autocast("cuda", dtype=torch.bfloat16))


@pytest.mark.parametrize("family", list(SMALL))
def test_bf16_training_step_does_not_sync_the_host(family):
    parts = cuda_parts(family)
    size = SMALL[family][0]["input_size"]
    x0 = torch.randn(8, 4, size, size, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    with inputs_checked_once(parts.model):
        window = [optimisation_step(parts, x0, y, 0, 1e-4)]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            window += [optimisation_step(parts, x0, y, s, 1e-4) for s in (1, 2)]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    rows = read_window(window)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert all(p.dtype == torch.float32 for p in parts.model.parameters())  # fp32 master weights under autocast


def test_guided_ddpm_step_does_not_sync_the_host():
    torch.manual_seed(0)
    model = ditlab.create_model("DiT", **SMALL["DiT"][0]).cuda().eval()
    diffusion = GaussianDiffusion(DiffusionConfig()).with_respacing("250")
    x = torch.randn(4, 4, 16, 16, device="cuda")
    y = torch.randint(0, 10, (4,), device="cuda")
    denoiser = classifier_free_guidance(model, y, CFGConfig(scale=4.0, null_class=10))
    t = batch_timesteps(100, x)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16), inputs_checked_once(model):
        ddpm_step(diffusion, denoiser, x, t)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = ddpm_step(diffusion, denoiser, x, t)["sample"]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("masked", [False, True])
def test_compiled_flex_attention_equals_sdpa_with_relative_bias(masked):
    torch.manual_seed(0)
    attn = RelPosAttention(128, 4, grid_size=8).cuda()
    torch.nn.init.normal_(attn.rel_pos_bias.relative_position_bias_table, std=1.0)
    x = torch.randn(3, 64, 128, device="cuda")
    ids_keep = torch.stack([torch.randperm(64, device="cuda")[:40] for _ in range(3)]) if masked else None
    if masked:
        x = x[:, :40]
    reference = attn(x, ids_keep)
    reference.square().sum().backward()
    grad_reference = attn.rel_pos_bias.relative_position_bias_table.grad.clone()
    attn.zero_grad()
    attn.flex = True
    out = attn(x, ids_keep)
    out.square().sum().backward()
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(attn.rel_pos_bias.relative_position_bias_table.grad, grad_reference,
                               atol=1e-3, rtol=1e-3)


def test_flex_backend_trains_mdtv2_in_bf16():
    parts = cuda_parts("MDTv2")
    set_attention_backend(parts.model, "flex")
    x0 = torch.randn(8, 4, 16, 16, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    rows = read_window([optimisation_step(parts, x0, y, s, 1e-4) for s in range(3)])
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_data_batches_reach_the_gpu_without_a_host_sync():
    from ditlab.train.data_source import build_data_source
    from ditlab.utils.distributed import DistInfo

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cuda"))
    data = build_data_source(TrainConfig(data="digits", image_size=16), info)
    data.batch(list(range(8)), step=0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x, y = data.batch(list(range(8, 16)), step=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.is_cuda and y.is_cuda and x.shape[0] == 8
