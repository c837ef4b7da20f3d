"""VAE encode throughput and end-to-end sampling throughput (img/s) of ``ditlab sample``'s inner loop.

  vae     ``AutoencoderKLCodec.encode_posterior`` on --vae-batch random 256 px images (what extract-latents runs
          per batch). --vae tiny: diffusers' test-size AutoencoderKL (channels [2, 4]), random weights;
          --vae sd: the Stable Diffusion VAE architecture (channels [128, 256, 512, 512], 4 levels), random
          weights (speed does not depend on the weights); or a local VAE folder.
  sample  ``sample_chunk`` (generate_latents with per-image seeds, CFG, then decode) for --sample-batch images
          of a small random DiT on --latent-size latents; img/s counts finished images.

Examples:
  python benchmarks/vae_and_sampling.py --device cpu --vae tiny --sampler-steps ddim50
  # Not measured here (no GPU): DiT-XL/2 at 256 px, 250 DDPM steps, CFG 1.5, bf16, sd-vae-ft-ema decode
  python benchmarks/vae_and_sampling.py --device cuda --vae sd --vae-batch 32 --model DiT-XL/2 \\
      --latent-size 32 --sample-batch 32 --sampler-steps 250 --cfg-scale 1.5 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ditlab.models.registry import create_model
from ditlab.objectives import DiffusionConfig
from ditlab.sample import SampleConfig, sample_chunk
from ditlab.vae import AutoencoderKLCodec, IdentityCodec, load_codec


def build_vae(kind: str, device: str):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    if kind == "tiny":
        vae = AutoencoderKL(block_out_channels=[2, 4], down_block_types=["DownEncoderBlock2D"] * 2,
                            up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2)
    elif kind == "sd":
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2)
    else:
        return load_codec(kind, device=device)
    return AutoencoderKLCodec(kind, device=device, vae=vae)


def timed(fn, repeats: int) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def bench_vae(args: argparse.Namespace) -> dict:
    codec = build_vae(args.vae, args.device)
    images = torch.rand(args.vae_batch, 3, args.image_size, args.image_size, device=args.device) * 2 - 1
    seconds = timed(lambda: codec.encode_posterior(images), args.repeats)
    return {"what": "vae_encode", "vae": args.vae, "image_size": args.image_size, "batch": args.vae_batch,
            "img_per_s": args.vae_batch / seconds}


def bench_sample(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    overrides = {"input_size": args.latent_size, "in_channels": 4, "num_classes": 1000}
    if args.model == "small":
        model = create_model("DiT", depth=4, hidden_size=128, num_heads=4, patch_size=2, **overrides)
    else:
        model = create_model(args.model, **overrides)
    model = model.to(args.device).eval()
    codec = build_vae(args.vae, args.device) if args.decode else IdentityCodec(4)
    config = SampleConfig(checkpoint="-", sampler_steps=args.sampler_steps, cfg_scale=args.cfg_scale,
                          precision=args.precision, vae="identity", batch_size=args.sample_batch)

    def run() -> None:
        latents_only = codec if args.decode else _ThreeChannels()
        sample_chunk(model, DiffusionConfig(), latents_only, config, range(args.sample_batch))

    seconds = timed(run, args.repeats)
    return {"what": "sample", "model": args.model, "latent_size": args.latent_size, "batch": args.sample_batch,
            "sampler_steps": args.sampler_steps, "cfg_scale": args.cfg_scale, "precision": args.precision,
            "decode": args.vae if args.decode else "none", "img_per_s": args.sample_batch / seconds}


class _ThreeChannels:
    """Without a VAE: keep 3 of the 4 latent channels so the uint8 conversion has an RGB image to pack."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents[:, :3]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vae", default="tiny", help="tiny | sd | a local VAE folder")
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--model", default="small", help="'small' (DiT depth 4, width 128, p=2) or a preset name")
    p.add_argument("--latent-size", type=int, default=8)
    p.add_argument("--sample-batch", type=int, default=8)
    p.add_argument("--sampler-steps", default="ddim50")
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--decode", action="store_true", help="decode with --vae inside the sampling measurement")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip", choices=["vae", "sample"], default=None)
    args = p.parse_args()
    for bench in (bench_vae, bench_sample):
        if args.skip and bench.__name__.endswith(args.skip):
            continue
        print(json.dumps(bench(args)), flush=True)


if __name__ == "__main__":
    main()
