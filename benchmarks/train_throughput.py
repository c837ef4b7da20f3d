"""Training and sampling throughput of a ditlab backbone: img/s, ms/step, sec/kimg, peak memory and MFU.

Two measurements, each on random latents and labels (no data loading, no VAE):

  train   one step of ``ditlab train`` (``ditlab.train.step.optimisation_step``, the loop's own code): forward +
          backward under the Gaussian diffusion objective (DiT's hybrid MSE + VB loss), an AdamW step and the
          EMA update, at --batch-size images. Like the loop it reads nothing back to the host
          (--sync-every-step adds the per-step loss read of a naive loop, to measure what that costs).
  sample  one ancestral DDPM step with classifier-free guidance on --sample-batch-size images, in inference
          mode: one batched forward on 2N (conditional + unconditional; --cfg-batch separate: two on N), then
          the DDPM update with each image's noise from its own generator (as ``ditlab sample``). img/s counts
          the N guided images advanced by one step; "img/s/run" divides that by --sample-steps.

Units (see BENCHMARKS.md): Gflops = multiply-accumulates (MACs) of one forward pass per image, the papers'
convention (``ditlab.flops.count``). Model FLOPs of a training step = 3 x 2 x MACs per image (forward +
backward ~ 3 forward; activation recomputation is not counted), of a CFG sampling step = 2 x 2 x MACs per
guided image. MFU = model FLOP/s / --peak-tflops (CUDA only). Peak memory is torch's allocator peak on CUDA
and the process's peak resident set size (RSS) on CPU, reset before each measurement where Linux allows it.
On CPU, "CPU util" = process CPU time / (wall time x threads): near 1 when the run had its cores to itself,
well below 1 when other processes took them; distrust rows with a low value.

Every speed option is a lever of BENCHMARKS.md's table (benchmarks/levers.py runs them one by one).

Examples:
  # An H100 (SXM, dense bf16 peak 989 TFLOP/s), DiT-XL/2 at 256 px:
  python benchmarks/train_throughput.py --model DiT-XL/2 --precision bf16 --batch-size 32 --compile
  # A small CPU run, appending JSON lines:
  python benchmarks/train_throughput.py --device cpu --model DiT-S/2 --input-size 16 --batch-size 32 \\
      --attention explicit --json bench.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ditlab.demo import DEMO_DEFAULTS
from ditlab.flops import count
from ditlab.models.layers import set_attention_backend
from ditlab.models.registry import create_model, list_models, model_config
from ditlab.objectives.flow import velocity_of
from ditlab.objectives.gaussian import DiffusionConfig, GaussianDiffusion
from ditlab.sampling import CFGConfig, classifier_free_guidance, ddpm_step
from ditlab.sampling.ddpm import batch_timesteps
from ditlab.sampling.generate import image_generators
from ditlab.train.config import TrainConfig
from ditlab.train.ema import EMA
from ditlab.train.objective import OBJECTIVES, build_objective
from ditlab.train.step import StepParts, optimisation_step

ATTENTION_BACKENDS = ("sdpa", "explicit", "flex")
SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
ADAMW_IMPLS = ("fused", "foreach", "for-loop")
LATENT_DOWNSAMPLE = 8  # SD VAE: 256 px images -> 32 x 32 latents
TRAIN_FLOPS_PER_MAC = 3 * 2  # forward + backward ~ 3 x forward, 2 FLOPs per multiply-accumulate
SAMPLE_FLOPS_PER_MAC = 2 * 2  # two forwards per guided image (cond + uncond), 2 FLOPs per MAC; 2 at scale 1


# ----------------------------------------------------------------------------
# Command line.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--help`` prints the module docstring's units and examples too."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="DiT-XL/2", metavar="NAME",
                       help="registry preset (default: %(default)s); one of: " + ", ".join(list_models()))
    model.add_argument("--image-size", type=int, default=256, metavar="PX",
                       help="image side in pixels; the latent side is PX/8 (default: %(default)s)")
    model.add_argument("--input-size", type=int, default=None, metavar="N",
                       help="latent side, overriding --image-size/8 (for small CPU runs)")
    model.add_argument("--in-channels", type=int, default=4, metavar="C", help="latent channels (default: 4)")
    model.add_argument("--num-classes", type=int, default=1000, metavar="K", help="classes (default: 1000)")
    run = parser.add_argument_group("what to measure")
    run.add_argument("--mode", choices=("both", "train", "sample"), default="both",
                     help="which measurements to run (default: %(default)s; sample runs first)")
    run.add_argument("--objective", choices=("auto", *OBJECTIVES), default="auto",
                     help="training objective; auto = the family's own (MDT*: mdt, the full + masked pass whose "
                          "masked pass MFU does not count; DDT: flow; else diffusion) (default: %(default)s)")
    run.add_argument("--batch-size", type=int, default=32, metavar="N", help="training batch (default: 32)")
    run.add_argument("--sample-batch-size", type=int, default=None, metavar="N",
                     help="guided images per sampling step (the forward sees 2N); default: --batch-size")
    run.add_argument("--sample-steps", type=int, default=250, metavar="S",
                     help="DDPM steps of a full sampling run, for the implied img/s (default: %(default)s)")
    run.add_argument("--cfg-scale", type=float, default=4.0, metavar="W",
                     help="guidance scale; any value != 1 runs the 2N forward (default: %(default)s)")
    run.add_argument("--warmup", type=int, default=3, metavar="I", help="untimed iterations first (default: 3)")
    run.add_argument("--iters", type=int, default=10, metavar="I", help="timed iterations (default: 10)")
    run.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default: 0)")
    speed = parser.add_argument_group("speed options")
    speed.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                       help="bf16 = autocast; weights and optimizer stay fp32 (default: %(default)s)")
    speed.add_argument("--attention", choices=ATTENTION_BACKENDS, default="sdpa",
                       help="sdpa = F.scaled_dot_product_attention; explicit = softmax(QK^T)V as the official "
                            "code; flex = FlexAttention for MDT's relative-bias attention, SDPA elsewhere "
                            "(default: %(default)s)")
    speed.add_argument("--sdpa-backend", choices=SDPA_BACKENDS, default="auto",
                       help="restrict SDPA to one kernel (torch.nn.attention.sdpa_kernel); auto = torch's choice "
                            "(default: %(default)s)")
    speed.add_argument("--compile", action="store_true", help="torch.compile each block (block.compile())")
    speed.add_argument("--grad-checkpointing", action="store_true",
                       help="recompute block activations in backward (training only; MFU does not count it)")
    speed.add_argument("--adamw", choices=ADAMW_IMPLS, default=None,
                       help="AdamW kernel: fused (one kernel), foreach (a few per step), for-loop (one per "
                            "tensor); default: fused on CUDA, foreach on CPU")
    speed.add_argument("--tf32", action="store_true",
                       help="allow TF32 for fp32 matmuls and convolutions (torch.backends flags; CUDA)")
    speed.add_argument("--no-ema", action="store_true", help="skip the EMA update the training loop does each step")
    speed.add_argument("--sync-every-step", action="store_true",
                       help="read the loss to the host every step, as a naive loop does (ditlab train does not)")
    speed.add_argument("--cfg-batch", choices=("joint", "separate"), default="joint",
                       help="sampling: one forward on 2N (joint) or two on N (default: %(default)s)")
    speed.add_argument("--cuda-graphs", action="store_true",
                       help="sampling: torch.compile the whole model with mode='reduce-overhead' (CUDA graphs); "
                            "CUDA only, replaces --compile for the sampling measurement")
    add_machine_arguments(parser, "e.g. 67 for H100 SXM fp32, as torch leaves TF32 matmuls off; 756 for H100 "
                                  "PCIe bf16")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def add_machine_arguments(parser: argparse.ArgumentParser, peak_note: str) -> None:
    """--device, --threads, --peak-tflops and --json, shared with the official-code benchmark."""
    machine = parser.add_argument_group("machine and output")
    machine.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                         help="default: cuda if available, else cpu (here: %(default)s)")
    machine.add_argument("--threads", type=int, default=None, metavar="T",
                         help="CPU threads (torch.set_num_threads); default: torch's choice")
    machine.add_argument("--peak-tflops", type=float, default=989.0, metavar="TF",
                         help=f"peak dense TFLOP/s of the accelerator for MFU (default: %(default)s = H100 SXM "
                              f"bf16; {peak_note})")
    machine.add_argument("--json", type=Path, default=None, metavar="PATH",
                         help="append one JSON line per measurement: settings, machine, torch, date, results")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject values that would fail later with a less helpful message."""
    for name in ("image_size", "in_channels", "num_classes", "batch_size", "sample_steps", "iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup} must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "error: --device cuda, but torch.cuda.is_available() is False (CPU-only torch or no GPU)\n")
    if args.cuda_graphs and args.device != "cuda":
        parser.error("--cuda-graphs needs --device cuda (CUDA graphs do not exist on CPU)")
    if args.sdpa_backend != "auto" and args.attention == "explicit":
        parser.error(f"--sdpa-backend {args.sdpa_backend} has no effect with --attention explicit")
    if args.image_size % LATENT_DOWNSAMPLE:
        parser.error(f"--image-size={args.image_size} must be a multiple of {LATENT_DOWNSAMPLE}")
    for name in ("input_size", "sample_batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")


# ----------------------------------------------------------------------------
# Machine and memory.


def machine_name(device: torch.device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo with the number of logical CPUs."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} logical CPUs)"


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: torch's allocator on CUDA; on Linux CPU, the RSS high-water mark (clear_refs 5)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux >= 4.0; without it the CPU peak is the process's peak so far
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_gib(device: torch.device) -> float:
    """Peak since the last reset, GiB: ``torch.cuda.max_memory_allocated`` or ``getrusage`` ru_maxrss (KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def memory_kind(device: torch.device) -> str:
    """What ``peak_memory_gib`` measures, for the printed table and the JSON row."""
    return "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS (getrusage)"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock time covers it; a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------
# Model, inputs and the two steps.


def latent_size(args: argparse.Namespace) -> int:
    """The latent side the backbone sees."""
    return args.input_size if args.input_size is not None else args.image_size // LATENT_DOWNSAMPLE


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides shared by the model and the FLOP count."""
    return {"input_size": latent_size(args), "in_channels": args.in_channels, "num_classes": args.num_classes}


def build_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The preset with the benchmark's attention, checkpointing and compile settings, on ``device``."""
    torch.manual_seed(args.seed)
    model = create_model(args.model, **model_overrides(args)).to(device)
    model.check_inputs = False  # as in the loop and sampler after their first call (inputs_checked_once)
    model.grad_checkpointing = args.grad_checkpointing
    set_attention_backend(model, args.attention)
    if args.compile:
        for block in model.blocks:
            block.compile()
    return model


def sdpa_context(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """Restrict SDPA to the --sdpa-backend kernel (an error at the first call if it cannot run the shapes)."""
    if args.sdpa_backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[args.sdpa_backend]
    return sdpa_kernel(kernel)


def random_latents(model: nn.Module, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(x, y): standard-normal latents of the model's shape and uniform class ids."""
    cfg = model.config
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
    y = torch.randint(0, cfg.num_classes, (batch,), device=device)
    return x, y


def autocast(args: argparse.Namespace, device: torch.device) -> torch.autocast:
    """bf16 autocast when asked; a disabled context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def adamw(params: list[nn.Parameter], args: argparse.Namespace, device: torch.device) -> torch.optim.AdamW:
    """DiT's AdamW (lr 1e-4, no weight decay) with the --adamw kernel."""
    impl = args.adamw or ("fused" if device.type == "cuda" else "foreach")
    kernel = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[impl]
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, **kernel)


def objective_name(args: argparse.Namespace) -> str:
    """--objective, with "auto" resolved to the family's own (the demo's choice per family)."""
    if args.objective != "auto":
        return args.objective
    return DEMO_DEFAULTS.get(model_config(args.model)[0].name, DEMO_DEFAULTS["DiT"])[2]


def training_objective(model: nn.Module, args: argparse.Namespace):
    """The objective the training loop would build for this model (learned σ iff the model predicts it)."""
    learn_sigma = getattr(model, "out_channels", 2 * args.in_channels) == 2 * args.in_channels
    config = TrainConfig(objective=objective_name(args), diffusion=DiffusionConfig(learn_sigma=learn_sigma))
    return build_objective(config, model=model)


def make_train_step(model: nn.Module, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """A closure running the training loop's step (forward, backward, AdamW, EMA) on a fixed random batch."""
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], args, device)
    ema = None if args.no_ema else EMA(model)
    parts = StepParts(model, model, training_objective(model, args), optimizer, ema, autocast(args, device))
    x0, y = random_latents(model, args.batch_size, device)
    counter = iter(range(10**9))

    def step() -> None:
        with sdpa_context(args):
            stats = optimisation_step(parts, x0, y, next(counter), 1e-4)
        if args.sync_every_step:
            float(stats.terms[0])

    model.train()
    return step


def make_sample_step(model: nn.Module, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """A closure running one guided sampler step in inference mode: DDPM (250-step respacing, mid-trajectory),
    or for a flow model (DDT) one Euler step at t = 0.5 — the same network cost per step."""
    x, y = random_latents(model, args.sample_batch_size, device)
    cfg = CFGConfig(scale=args.cfg_scale, null_class=model.config.num_classes, joint_batch=args.cfg_batch == "joint")
    network = torch.compile(model, mode="reduce-overhead") if args.cuda_graphs else model
    if objective_name(args) == "flow":
        velocity = classifier_free_guidance(lambda x_t, t, labels: velocity_of(network(x_t, t, labels)), y, cfg)
        t = torch.full((x.shape[0],), 0.5, device=device)

        def update() -> Tensor:
            return x + (1.0 / args.sample_steps) * velocity(x, t)
    else:
        diffusion = GaussianDiffusion(DiffusionConfig()).with_respacing(str(args.sample_steps))
        denoiser = classifier_free_guidance(network, y, cfg)
        t = batch_timesteps(diffusion.num_timesteps // 2, x)

        generators = image_generators(list(range(len(x))), device)  # one per image, as ditlab sample draws

        def update() -> Tensor:
            return ddpm_step(diffusion, denoiser, x, t, generator=generators)["sample"]

    def step() -> None:
        with torch.inference_mode(), autocast(args, device), sdpa_context(args):
            update()

    model.eval()
    return step


# ----------------------------------------------------------------------------
# Timing and results.


def time_steps(step: Callable[[], None], warmup: int, iters: int, device: torch.device) -> tuple[list[float], float]:
    """Wall seconds of each of ``iters`` timed calls after ``warmup`` untimed ones (synchronised on CUDA), and
    the process CPU seconds (all threads) the timed calls used."""
    for _ in range(warmup):
        step()
    synchronize(device)
    seconds, cpu_start = [], time.process_time()
    for _ in range(iters):
        tic = time.perf_counter()
        step()
        synchronize(device)
        seconds.append(time.perf_counter() - tic)
    return seconds, time.process_time() - cpu_start


def cpu_utilisation(seconds: list[float], cpu_seconds: float, device: torch.device) -> float | None:
    """CPU seconds / (wall seconds x torch threads) on CPU: ~1 when the run had its cores to itself, well
    below 1 when other processes took them (a shared machine); None on CUDA."""
    if device.type == "cuda":
        return None
    return cpu_seconds / (sum(seconds) * torch.get_num_threads())


@dataclass
class Result:
    """One measurement: timings and the numbers derived from them."""

    measurement: str  # "train" or "sample"
    batch: int  # images per step (guided images for sampling; the forward sees 2x)
    ms_per_step: float  # mean over the timed steps
    ms_per_step_std: float  # standard deviation over the timed steps
    ms_per_step_median: float  # robust to a few slow steps on a shared machine
    ms_per_step_min: float
    img_per_s: float  # batch / mean step time
    sec_per_kimg: float  # 1000 / img_per_s (EDM2's unit)
    img_per_s_full_run: float | None  # sampling only: img_per_s / sample_steps
    model_tflops_per_s: float  # model FLOPs (3x2xMACs train, 2x2xMACs sample) x img/s / 1e12
    mfu: float | None  # model_tflops_per_s / peak_tflops, CUDA only
    peak_memory_gib: float
    memory_kind: str
    cpu_utilisation: float | None  # CPU only: process CPU time / (wall time x threads); < ~0.9 = contended


def summarise(name: str, seconds: list[float], cpu_seconds: float, batch: int, gmacs: float,
              args: argparse.Namespace, device: torch.device) -> Result:
    """Turn step times into img/s, sec/kimg, model TFLOP/s, MFU and peak memory."""
    mean = statistics.fmean(seconds)
    img_per_s = batch / mean
    flops_per_mac = TRAIN_FLOPS_PER_MAC if name == "train" else SAMPLE_FLOPS_PER_MAC
    if name == "sample" and args.cfg_scale == 1.0:  # CFGConfig.is_unguided: one conditional forward on N
        flops_per_mac //= 2
    tflops = flops_per_mac * gmacs * 1e9 * img_per_s / 1e12
    return Result(
        measurement=name,
        batch=batch,
        ms_per_step=1e3 * mean,
        ms_per_step_std=1e3 * (statistics.stdev(seconds) if len(seconds) > 1 else 0.0),
        ms_per_step_median=1e3 * statistics.median(seconds),
        ms_per_step_min=1e3 * min(seconds),
        img_per_s=img_per_s,
        sec_per_kimg=1000.0 / img_per_s,
        img_per_s_full_run=img_per_s / args.sample_steps if name == "sample" else None,
        model_tflops_per_s=tflops,
        mfu=tflops / args.peak_tflops if device.type == "cuda" else None,
        peak_memory_gib=peak_memory_gib(device),
        memory_kind=memory_kind(device),
        cpu_utilisation=cpu_utilisation(seconds, cpu_seconds, device),
    )


def measure(name: str, args: argparse.Namespace, model: nn.Module, gmacs: float, device: torch.device) -> Result:
    """Build the step, time it and summarise it, with the memory peak reset just before."""
    synchronize(device)
    reset_peak_memory(device)
    if name == "train":
        step, batch = make_train_step(model, args, device), args.batch_size
    else:
        step, batch = make_sample_step(model, args, device), args.sample_batch_size
    seconds, cpu_seconds = time_steps(step, args.warmup, args.iters, device)
    return summarise(name, seconds, cpu_seconds, batch, gmacs, args, device)


# ----------------------------------------------------------------------------
# Printing and JSON lines.

COLUMNS = (
    "step", "batch", "ms/step", "± std", "median", "img/s", "sec/kimg", "img/s/run", "TFLOP/s", "MFU", "peak GiB",
    "CPU util",
)


def table_row(cells: tuple[str, ...]) -> str:
    """Cells right-aligned in fixed widths (the first one left-aligned)."""
    return f"{cells[0]:<7}" + "".join(f"{c:>11}" for c in cells[1:])


def format_result(r: Result) -> str:
    """One printed table row."""
    return table_row((
        r.measurement,
        str(r.batch),
        f"{r.ms_per_step:.1f}",
        f"{r.ms_per_step_std:.1f}",
        f"{r.ms_per_step_median:.1f}",
        f"{r.img_per_s:.2f}",
        f"{r.sec_per_kimg:.1f}",
        f"{r.img_per_s_full_run:.4f}" if r.img_per_s_full_run is not None else "-",
        f"{r.model_tflops_per_s:.4f}" if r.model_tflops_per_s < 1 else f"{r.model_tflops_per_s:.1f}",
        f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-",
        f"{r.peak_memory_gib:.2f}",
        f"{r.cpu_utilisation:.2f}" if r.cpu_utilisation is not None else "-",
    ))


def context(args: argparse.Namespace, device: torch.device, gmacs: float) -> dict[str, Any]:
    """Everything that identifies a run: settings, machine, software, date and machine load."""
    return {
        "implementation": "ditlab",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_name(device),
        "device": device.type,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join(["python", *sys.argv]),
        "settings": vars(args) | {"json": str(args.json) if args.json else None, "latent_size": latent_size(args)},
        "gmacs_per_image": gmacs,
        "loadavg_1min": os.getloadavg()[0],
    }


def print_header(info: dict[str, Any], args: argparse.Namespace) -> None:
    """The run's identity above the table."""
    s = info["settings"]
    print(f"{args.model} | image {args.image_size} px, latent {s['latent_size']}x{s['latent_size']}x"
          f"{args.in_channels}, {args.num_classes} classes | {info['gmacs_per_image']:.3f} GMACs/img forward")
    print(f"precision {args.precision} | attention {args.attention} (sdpa kernel {args.sdpa_backend}) | compile "
          f"{args.compile} | grad checkpointing {args.grad_checkpointing} | warmup {args.warmup}, iters {args.iters}")
    print(f"train: objective {objective_name(args)}, tf32 {args.tf32}, adamw {args.adamw or 'default'}, "
          f"ema {not args.no_ema}, sync every step {args.sync_every_step} | "
          f"sample: cfg batch {args.cfg_batch}, cuda graphs {args.cuda_graphs}")
    threads = f", {info['threads']} threads" if info["threads"] else ""
    peak = f" | MFU peak {args.peak_tflops:g} TFLOP/s" if info["device"] == "cuda" else ""
    print(f"{info['machine']}{threads} | torch {info['torch']} | {info['date']} | load {info['loadavg_1min']:.2f}"
          f"{peak}")
    print(f"peak memory = {memory_kind(torch.device(info['device']))}")
    print(table_row(COLUMNS))


def append_json(path: Path, info: dict[str, Any], result: Result) -> None:
    """Append one JSON line: the run's context plus this measurement."""
    path.parent.mkdir(parents=True, exist_ok=True)
    row = info | {"result": asdict(result), "loadavg_1min_after": os.getloadavg()[0]}
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Parse, build the model, run the measurements, print a row each and append them to --json."""
    args = parse_args(argv)
    args.sample_batch_size = args.sample_batch_size or args.batch_size
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    if args.threads:
        torch.set_num_threads(args.threads)
    gmacs = count(args.model, args.image_size, **model_overrides(args)).gmacs
    model = build_model(args, device)
    info = context(args, device, gmacs)
    print_header(info, args)
    # Sampling first: on CPU without clear_refs, the RSS peak only grows, and training's is the larger.
    names = {"both": ("sample", "train"), "train": ("train",), "sample": ("sample",)}[args.mode]
    for name in names:
        try:
            result = measure(name, args, model, gmacs, device)
        except RuntimeError as err:
            if args.sdpa_backend == "auto" or "scaled_dot_product_attention" not in str(err):
                raise
            sys.exit(f"error: --sdpa-backend {args.sdpa_backend} cannot run these inputs on {args.device} "
                     f"({str(err).splitlines()[0]}); try another kernel or auto")
        print(format_result(result), flush=True)
        if args.json:
            append_json(args.json, info, result)


if __name__ == "__main__":
    main()
