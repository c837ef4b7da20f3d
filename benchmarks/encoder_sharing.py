"""Encoder sharing (DDT section 3.3): wall-clock, encoder calls and sample drift versus the sharing ratio.

A small DDT is first trained under flow matching on the embedded digits (pixel space, 16x16, 1 channel), so the
samples mean something; then the same labels and noise are sampled without sharing, with uniform sharing (recompute
every r steps) and with the statistical DP schedule of the same budget K = ceil(N / r). Reported per setting:
encoder calls, median wall-clock of a sampling run, speed-up, and the drift = mean squared difference to the
unshared samples from the same noise (0 = identical; for scale, the samples' own variance is printed too).

Examples:
  python benchmarks/encoder_sharing.py                      # CPU, small DDT, 50 Euler steps with CFG interval
  python benchmarks/encoder_sharing.py --ratios 2 4 --steps 100 --json sharing.jsonl
  # GPU, DDT-XL/2 (needs the official weights; not measured here):
  python benchmarks/encoder_sharing.py --device cuda --checkpoint DDT-XL-22en6de-R256.ckpt --steps 250 --batch 16
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from typing import Any

import torch
from torch import nn

from ditlab.models.registry import create_model
from ditlab.objectives.flow import FlowConfig
from ditlab.sampling import Euler, Guidance, generate_latents, parse_share_spec, sharing_schedule
from ditlab.train import TrainConfig, train
from ditlab.train import checkpoint as ckpt

SMALL_DDT = {"hidden_size": 128, "num_groups": 4, "num_blocks": 6, "num_encoder_blocks": 4, "patch_size": 2}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", default=None, help="official DDT .ckpt (GPU run); default: train a small DDT")
    p.add_argument("--train-steps", type=int, default=200, help="steps of the small DDT's training on digits")
    p.add_argument("--steps", type=int, default=50, help="Euler steps of each sampling run")
    p.add_argument("--batch", type=int, default=8, help="images per sampling run")
    p.add_argument("--ratios", type=int, nargs="+", default=[2, 3, 4, 5], help="uniform sharing ratios r")
    p.add_argument("--cfg", type=float, default=2.0, help="guidance scale, applied for 0.3 < t < 1 (DDT)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median reported)")
    p.add_argument("--json", default=None, help="append one JSON line per setting to this file")
    return p.parse_args()


def small_trained_ddt(train_steps: int, device: str) -> tuple[nn.Module, dict[str, Any]]:
    """A small DDT trained on the digits under flow matching; its EMA weights."""
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(run_dir=tmp, model="DDT", model_args=dict(SMALL_DDT), objective="flow",
                             steps=train_steps, global_batch=32, lr=3e-4, betas=(0.9, 0.95), ema_decay=0.99,
                             log_every=max(1, train_steps // 4), ckpt_every=train_steps, sample_every=-1,
                             progress=False, device=device)
        result = train(config)
        weights, meta = ckpt.load_weights(result.last_checkpoint)
    model = create_model("DDT", **meta["config"]).to(device)
    model.load_state_dict(weights)
    return model.eval(), {"train_steps": train_steps, "final_loss": result.final_loss, **SMALL_DDT}


def official_ddt(path: str, device: str) -> tuple[nn.Module, dict[str, Any]]:
    from ditlab.models.official import load_official_ddt

    model, _ = load_official_ddt(path, "DDT-XL/2-22en6de")
    return model.to(device).eval(), {"checkpoint": path}


def timed_run(model: nn.Module, labels: torch.Tensor, sampler: Euler, guidance: Guidance,
              share: list[int] | None, repeats: int) -> tuple[torch.Tensor, int, float]:
    """(samples, encoder calls, median seconds) of sampling ``labels`` with seeds 0..N-1."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = generate_latents(model, FlowConfig(), labels, sampler, guidance=guidance, share=share)
        if labels.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    calls = sampler.evaluations(FlowConfig()) if share is None else len(share)  # the encoder runs at each listed
    return out, calls, statistics.median(times)


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        model, about = official_ddt(args.checkpoint, args.device)
    else:
        model, about = small_trained_ddt(args.train_steps, args.device)
    labels = torch.arange(args.batch, device=args.device) % model.config.num_classes
    sampler, guidance = Euler(args.steps, last_step=0.04), Guidance(args.cfg, interval=(0.3, 1.0))
    reference, _, base_time = timed_run(model, labels, sampler, guidance, None, args.repeats)
    print(f"model: {about}; {args.steps} Euler steps, batch {args.batch}, cfg {args.cfg} on 0.3<t<1; "
          f"sample variance {float(reference.var()):.4f}")
    print("| sharing | encoder calls | wall-clock s | speed-up | drift (MSE to unshared) |")
    print("|---|---|---|---|---|")
    rows = [("none", args.steps, base_time, 0.0)]
    for r in args.ratios:
        for spec in (f"uniform:{r}", f"dp:{math.ceil(args.steps / r)}"):
            # solve the schedule once (DP: calibration), then time sampling with it
            start = time.perf_counter()
            share = sharing_schedule(model, FlowConfig(), sampler, parse_share_spec(spec), guidance)
            if spec.startswith("dp"):
                print(f"{spec}: calibration + DP {time.perf_counter() - start:.2f} s (once); schedule {share}")
            out, calls, seconds = timed_run(model, labels, sampler, guidance, share, args.repeats)
            rows.append((spec, calls, seconds, float(((out - reference) ** 2).mean())))
    for spec, calls, seconds, drift in rows:
        print(f"| {spec} | {calls} | {seconds:.3f} | {base_time / seconds:.2f}x | {drift:.2e} |")
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"sharing": spec, "encoder_calls": calls, "seconds": seconds,
                                    "speedup": base_time / seconds, "drift_mse": drift, "steps": args.steps,
                                    "batch": args.batch, "device": args.device, **about}) + "\n")


if __name__ == "__main__":
    main()
