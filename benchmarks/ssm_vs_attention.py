"""Forward time and peak memory of DiffuSSM vs DiT at the same width and depth as the token count grows.

DiffuSSM's claim (Yan et al., CVPR 2024) is that its cost grows as L log L (FFT convolution, dense layers at
L/2) where attention's grows as L². Both backbones here see the same number of tokens: DiT with patch size 1
on a side x side latent, DiffuSSM on the same flattened latent (it never patchifies). Random weights and
inputs; one forward pass under ``torch.inference_mode`` (sampling-time cost), median of --repeats timed runs
after one warm-up.

Columns: ms per forward, multiply-accumulates per forward (ditlab's ledger: matmuls, convolutions, and the
FFTs at the textbook 2.5 n log2 n flops), and peak memory of the forward over what was resident before it
(CPU: the RSS high-water mark, reset with /proc/self/clear_refs, each point in a fresh process so that memory
freed by an earlier point cannot hide this one's; CUDA: torch's allocator peak).
``--attention explicit`` uses the materialised softmax(QK^T)V path (L² scores), ``fused`` SDPA (CPU: a
flash-style kernel that never holds the L x L matrix).

Examples:
  # The CPU table in BENCHMARKS.md (single-threaded):
  OMP_NUM_THREADS=1 python benchmarks/ssm_vs_attention.py --width 128 --depth 2 --batch 1 \\
      --tokens 256 1024 4096 16384 --plot benchmarks/ssm_vs_attention.png
  # XL sizes on a GPU in bf16 (DiT-XL width/depth vs DiffuSSM-XL):
  python benchmarks/ssm_vs_attention.py --device cuda --dtype bf16 --width 1152 --depth 28 --heads 16 \\
      --batch 8 --tokens 256 1024 4096 16384
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

import ditlab
from ditlab.flops import count


@dataclass
class Result:
    model: str  # "DiT" or "DiffuSSM"
    tokens: int  # sequence length L
    ms: float | None  # median forward time (None: skipped)
    gmacs: float  # multiply-accumulates of one forward for the whole batch, / 1e9
    peak_mib: float | None  # peak memory of the forward above the memory resident before it


def build(family: str, side: int, args: argparse.Namespace) -> tuple[nn.Module, dict]:
    """A randomly initialised backbone on side x side latents with ``args.width`` x ``args.depth``."""
    common = dict(input_size=side, in_channels=4, hidden_size=args.width, depth=args.depth, num_classes=10)
    kwargs = dict(common, patch_size=1, num_heads=args.heads) if family == "DiT" else common
    torch.manual_seed(0)
    model = ditlab.create_model(family, **kwargs)
    for module in model.modules():
        if hasattr(module, "fused"):
            module.fused = args.attention == "fused"
    return model, kwargs


def reset_peak(device: torch.device) -> float:
    """Start a new peak and return the memory resident now, MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass
    return _proc_status_mib("VmRSS")


def peak(device: torch.device) -> float:
    """Peak memory since ``reset_peak``, MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mib("VmHWM")


def _proc_status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tic = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - tic) * 1e3


def measure(family: str, tokens: int, args: argparse.Namespace, device: torch.device) -> Result:
    side = math.isqrt(tokens)
    model, kwargs = build(family, side, args)
    macs = count(family, image_size=8 * side, **kwargs).gmacs * args.batch
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = model.to(device).eval()
    x = torch.randn(args.batch, 4, side, side, device=device)
    t = torch.randint(0, 1000, (args.batch,), device=device).float()
    y = torch.randint(0, 10, (args.batch,), device=device)

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(x, t, y)

    resident = reset_peak(device)
    first = timed(forward, device)  # warm-up, also the memory measurement
    extra = peak(device) - resident
    times = [timed(forward, device) for _ in range(args.repeats if first < args.slow_ms else 1)]
    return Result(family, tokens, statistics.median(times), macs, extra)


def measure_in_subprocess(family: str, tokens: int) -> Result:
    """One point in a fresh interpreter (same command line plus ``--only``): an unpolluted memory peak."""
    argv = list(sys.argv[1:])
    for flag in ("--json", "--plot"):  # the parent writes those
        if flag in argv:
            i = argv.index(flag)
            del argv[i:i + 2]
    out = subprocess.run([sys.executable, __file__, *argv, "--only", f"{family}:{tokens}"],
                         check=True, capture_output=True, text=True).stdout
    return Result(**json.loads(out.strip().splitlines()[-1]))


def markdown(results: list[Result]) -> str:
    by = {(r.model, r.tokens): r for r in results}
    lines = [
        "| tokens L | DiT ms | DiffuSSM ms | DiT / DiffuSSM time | DiT GMACs | DiffuSSM GMACs | DiT peak MiB "
        "| DiffuSSM peak MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tokens in sorted({r.tokens for r in results}):
        a, s = by[("DiT", tokens)], by[("DiffuSSM", tokens)]
        lines.append(
            f"| {tokens} | {a.ms:.1f} | {s.ms:.1f} | {a.ms / s.ms:.2f} | {a.gmacs:.2f} | {s.gmacs:.2f} "
            f"| {a.peak_mib:.0f} | {s.peak_mib:.0f} |"
        )
    return "\n".join(lines)


def plot(results: list[Result], path: str, title: str) -> None:
    import matplotlib  # optional: pip install ditlab[bench]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for family, style in (("DiT", "o-"), ("DiffuSSM", "s-")):
        rows = sorted((r for r in results if r.model == family), key=lambda r: r.tokens)
        tokens = [r.tokens for r in rows]
        axes[0].plot(tokens, [r.ms for r in rows], style, label=family)
        axes[1].plot(tokens, [r.gmacs for r in rows], style, label=family)
        axes[2].plot(tokens, [max(r.peak_mib, 1.0) for r in rows], style, label=family)
    for ax, ylabel in zip(axes, ("forward ms", "GMACs per forward", "peak MiB over resident"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens L")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="autocast dtype of the forward")
    parser.add_argument("--width", type=int, default=128, help="hidden size D of both models")
    parser.add_argument("--depth", type=int, default=2, help="blocks of both models")
    parser.add_argument("--heads", type=int, default=4, help="DiT attention heads")
    parser.add_argument("--batch", type=int, default=1, help="images per forward")
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096, 16384],
                        help="sequence lengths (perfect squares)")
    parser.add_argument("--attention", default="fused", choices=["fused", "explicit"], help="DiT attention path")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per point (median)")
    parser.add_argument("--slow-ms", type=float, default=5000.0, help="time only once when the warm-up took longer")
    parser.add_argument("--json", help="append results as JSON lines")
    parser.add_argument("--plot", help="write a PNG (needs matplotlib)")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: "FAMILY:TOKENS", one point, JSON to stdout
    args = parser.parse_args()
    for tokens in args.tokens:
        if math.isqrt(tokens) ** 2 != tokens:
            parser.error(f"--tokens {tokens} is not a perfect square (side x side latent)")
    device = torch.device(args.device)
    if args.only:
        family, tokens = args.only.split(":")
        print(json.dumps(asdict(measure(family, int(tokens), args, device))))
        return
    results = []
    for tokens in args.tokens:
        for family in ("DiT", "DiffuSSM"):
            result = measure_in_subprocess(family, tokens)
            results.append(result)
            print(json.dumps(asdict(result)), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({**asdict(result), **vars(args)}) + "\n")
    print(markdown(results))
    if args.plot:
        title = (f"D={args.width}, depth {args.depth}, batch {args.batch}, {args.dtype}, DiT attention "
                 f"{args.attention}, {device.type}, {torch.get_num_threads()} thread(s)")
        plot(results, args.plot, title)


if __name__ == "__main__":
    main()
