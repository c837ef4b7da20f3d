"""Cost of MDT's training step against DiT's at the same size: what the extra masked pass adds.

Each row times one optimisation step (forward(s), backward, optimizer step) on random latents and labels:

  DiT    + diffusion   DiT's step: one pass, hybrid MSE + VB loss (``GaussianDiffusion.loss``), AdamW.
  MDT*   + diffusion   the same single pass through an MDT backbone (relative bias, long/dense skips).
  MDT*   + mdt         MDT's step (``MaskedDiffusionObjective``): the full pass plus the masked pass (30-50%
                       of the tokens dropped before the encoder, side-interpolater), one backward.

The ratio column divides each ms/step by DiT's. Sizes are a preset's depth/width at ``--input-size``.

Examples:
  # CPU, small presets (the numbers in BENCHMARKS.md):
  OMP_NUM_THREADS=1 python benchmarks/mdt_train_step.py --device cpu --size S/2 --input-size 16 --batch-size 8
  # GPU, XL/2 at 256 px in bf16:
  python benchmarks/mdt_train_step.py --device cuda --size XL/2 --input-size 32 --batch-size 32 --precision bf16
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ditlab.models.registry import create_model
from ditlab.objectives import DiffusionConfig, GaussianDiffusion
from ditlab.objectives.masked import MaskedDiffusionObjective
from ditlab.optim import Adan

RUNS = [("DiT", "diffusion"), ("MDT", "diffusion"), ("MDT", "mdt"), ("MDTv2", "diffusion"), ("MDTv2", "mdt")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="S/2", help="preset size shared by all rows, e.g. S/2, B/2, XL/2")
    parser.add_argument("--input-size", type=int, default=16, help="latent side (256 px images: 32)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--optimizer", choices=("adamw", "adan"), default="adamw", help="same for every row")
    return parser.parse_args(argv)


def make_step(family: str, objective: str, args: argparse.Namespace) -> tuple[Callable[[], None], int]:
    """One training step of ``family`` under ``objective``, as a closure; also returns the parameter count."""
    device = torch.device(args.device)
    model = create_model(f"{family}-{args.size}", input_size=args.input_size).to(device).train()
    diffusion = GaussianDiffusion(DiffusionConfig())
    loss_fn = MaskedDiffusionObjective(diffusion).loss if objective == "mdt" else diffusion.loss
    params = [p for p in model.parameters() if p.requires_grad]
    opt = Adan(params, lr=1e-4) if args.optimizer == "adan" else torch.optim.AdamW(params, lr=1e-4)
    x0 = torch.randn(args.batch_size, 4, args.input_size, args.input_size, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> None:
        with autocast:
            loss = loss_fn(model, x0, y)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in model.parameters())


def time_step(step: Callable[[], None], args: argparse.Namespace) -> float:
    """Median milliseconds per step."""
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        sync()
        tic = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - tic) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    print(f"# {args.size} at input_size={args.input_size}, batch {args.batch_size}, {args.precision}, "
          f"{args.optimizer}, device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'model':<14} {'objective':<10} {'params (M)':>10} {'ms/step':>9} {'img/s':>8} {'x DiT':>6}")
    baseline = None
    for family, objective in RUNS:
        step, n_params = make_step(family, objective, args)
        ms = time_step(step, args)
        baseline = baseline or ms
        name = f"{family}-{args.size}"
        print(f"{name:<14} {objective:<10} {n_params / 1e6:>10.2f} {ms:>9.1f} "
              f"{args.batch_size / ms * 1e3:>8.1f} {ms / baseline:>6.2f}", flush=True)
        del step


if __name__ == "__main__":
    main()
