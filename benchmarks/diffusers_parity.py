"""How far diffusers' DiT is from the official code on the same weights, and why (numbers in README.md).

1. The official golden weights and outputs (tests/golden/dit_tiny*.safetensors, made by facebookresearch/DiT's
   models.py): diffusers' DiTTransformer2DModel on those weights, as-is and with its timestep frequencies set
   to the official ones, for the Hub's norm_eps (1e-5) and the official one (1e-6); and diffusers as-is
   against ditlab's DiT with diffusers' frequencies (timestep_freq_shift=1).
2. The sinusoidal timestep features alone, over t = 0..999.
3. DiTPipeline against ditlab's DDIM with CFG on all latent channels, same seeds, on a random tiny DiT (ditlab
   official vs diffusers as shipped and patched; ditlab timestep_freq_shift=1 vs diffusers as shipped).

    PYTHONPATH=src python benchmarks/diffusers_parity.py
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import diffusers
import torch
from diffusers.models.embeddings import get_timestep_embedding
from safetensors.torch import load_file

import ditlab
from ditlab.interop.diffusers_dit import export_diffusers_dit
from ditlab.models.diffusers_keys import diffusers_config_for, dit_to_diffusers
from ditlab.models.layers import timestep_embedding
from ditlab.objectives import DiffusionConfig
from ditlab.sampling import DDIM, Guidance, generate_latents

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"


def transformer(model: ditlab.DiT, norm_eps: float, official_frequencies: bool) -> diffusers.DiTTransformer2DModel:
    config = {k: v for k, v in diffusers_config_for(model.config).items() if not k.startswith("_")}
    net = diffusers.DiTTransformer2DModel(**{**config, "norm_eps": norm_eps}).eval()
    net.load_state_dict(dit_to_diffusers(model.state_dict()))
    if official_frequencies:
        for block in net.transformer_blocks:
            block.norm1.emb.time_proj.downscale_freq_shift = 0
    return net


@torch.no_grad()
def golden_weights() -> None:
    manifest = json.loads((GOLDEN / "MANIFEST.json").read_text())["files"]
    for name in ("dit_tiny.safetensors", "dit_tiny_p4.safetensors"):
        tensors = load_file(str(GOLDEN / name))
        model = ditlab.create_model("DiT", **manifest[name]["constructor_kwargs"]).eval()
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        x, t, y, ref = (tensors[k] for k in ("input.x", "input.t", "input.y", "output.forward"))
        print(f"{name}: t={t.tolist()}, max|official| = {ref.abs().max():.3f}, "
              f"ditlab max|d| = {(model(x, t, y) - ref).abs().max():.1e}")
        for eps in (1e-5, 1e-6):
            for fix in (False, True):
                out = transformer(model, eps, fix)(x, timestep=t, class_labels=y).sample
                label = "official frequencies" if fix else "as shipped"
                print(f"  diffusers norm_eps={eps:g}, {label}: max|d| = {(out - ref).abs().max():.2e}")
        shifted = ditlab.create_model("DiT", **manifest[name]["constructor_kwargs"], timestep_freq_shift=1).eval()
        shifted.load_state_dict(model.state_dict())
        for eps in (1e-5, 1e-6):
            out = transformer(model, eps, False)(x, timestep=t, class_labels=y).sample
            print(f"  ditlab timestep_freq_shift=1 vs diffusers norm_eps={eps:g} as shipped: max|d| = "
                  f"{(out - shifted(x, t, y)).abs().max():.2e}")


def timestep_features() -> None:
    t = torch.arange(1000)
    diff = (timestep_embedding(t, 256) - get_timestep_embedding(t, 256, flip_sin_to_cos=True,
                                                                downscale_freq_shift=1)).abs().amax(1)
    picks = {k: f"{diff[k]:.1e}" for k in (0, 1, 10, 100, 500, 999)}
    print(f"timestep features (256, cos|sin): max|d| over t=0..999 = {diff.max():.2f}; at t: {picks}")


@torch.no_grad()
def pipeline_vs_ditlab() -> None:
    torch.manual_seed(0)
    model = ditlab.create_model("DiT", input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2).eval()
    for name, p in model.named_parameters():  # random everywhere (the official init zeroes adaLN and output)
        if name != "pos_embed":
            p.copy_(0.3 * torch.randn_like(p) / math.sqrt(p.shape[-1] if p.ndim > 1 else 32))
    with tempfile.TemporaryDirectory() as tmp:
        diffusers.AutoencoderKL(block_out_channels=[2, 4], down_block_types=["DownEncoderBlock2D"] * 2,
                                up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2,
                                sample_size=16).save_pretrained(Path(tmp) / "vae")
        folder = export_diffusers_dit(model, DiffusionConfig(), Path(tmp) / "pipe", vae=str(Path(tmp) / "vae"))
        pipe = diffusers.DiTPipeline.from_pretrained(str(folder))
        pipe.set_progress_bar_config(disable=True)
        shifted = ditlab.create_model("DiT", **{**model.config.__dict__, "timestep_freq_shift": 1}).eval()
        shifted.load_state_dict(model.state_dict())
        labels, seeds = [1, 7, 300], [10, 11, 12]
        runs = (("as shipped", model), ("as shipped, ditlab timestep_freq_shift=1", shifted),
                ("official frequencies", model))
        for label, ours_model in runs:
            if label == "official frequencies":
                for block in pipe.transformer.transformer_blocks:
                    block.norm1.emb.time_proj.downscale_freq_shift = 0
            for steps, scale in ((50, 1.0), (50, 4.0), (25, 1.5)):
                images = pipe(class_labels=labels, num_inference_steps=steps, guidance_scale=scale,
                              output_type="pt", generator=[torch.Generator().manual_seed(s) for s in seeds]).images
                latents = generate_latents(ours_model, DiffusionConfig(), torch.tensor(labels), DDIM(steps),
                                           guidance=Guidance(scale), seeds=seeds)
                ours = (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
                print(f"DiTPipeline vs ditlab ddim{steps} cfg {scale} ({label}): max|image d| = "
                      f"{(images - ours).abs().max():.1e}")


if __name__ == "__main__":
    golden_weights()
    timestep_features()
    pipeline_vs_ditlab()
