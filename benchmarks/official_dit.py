"""Throughput of the OFFICIAL DiT code (facebookresearch/DiT), timed exactly as ``train_throughput.py`` times ours.

The official repository is not a dependency and is never vendored: it is imported at run time from a local
checkout (--official-dir, default ``.baselines/DiT``, git-ignored). Only ``models.py`` and ``diffusion/`` are
imported; its ``train.py`` and ``sample.py`` are not run (they need a dataset, the VAE weights and a network),
their loop bodies are rebuilt here from the same official objects:

  train   one iteration of train.py's training loop on a fixed random latent batch: the official
          ``DiT_models[...]`` wrapped in DistributedDataParallel (a 1-process group: nccl on CUDA, gloo on
          CPU), timesteps drawn uniformly per iteration, ``diffusion.training_losses`` of
          ``create_diffusion(timestep_respacing="")``, ``loss.mean()``, ``opt.zero_grad()``, backward,
          ``torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)`` (torch's default
          implementation choice, as train.py), the per-parameter EMA update (decay 0.9999) every step, and the
          ``loss.item()`` that train.py logs. TF32 matmul + cuDNN flags on, as train.py sets them at import.
          NOT timed: data loading and the VAE encode that train.py runs on each batch under no_grad
          (``"vae_encode": false`` in the JSON row). Our benchmark also starts from latents, so both sides
          skip the same work; leaving the encode out favours the official code, whose pipeline pays it per step.
  sample  one ``p_sample`` of ``create_diffusion(str(--sample-steps))`` with ``model.forward_with_cfg`` on the
          2N batch sample.py builds (``torch.cat([z, z])``, labels then N null labels = 1000, cfg_scale), at
          the mid-trajectory step index (as ours), under no_grad, fp32 with TF32 on (sample.py's settings),
          ``clip_denoised=False``. img/s counts the N guided images; "img/s/run" = img/s / --sample-steps.
          --full-run times one whole ``p_sample_loop`` instead (progress bar off; the VAE decode and the
          image saving of sample.py are not timed) and reports it per step, to cross-check the extrapolation.

Fairness: same machine, same process-level timing (``train_throughput.time_steps``: warmup, then per-call
wall time with a device synchronise), same inputs (random latents, no data loading, no VAE), same FLOP
count (``ditlab.flops.count`` of the same preset, so MFU is comparable), same peak-memory method. Known
differences, all recorded in the JSON row: the official train step pays DDP (1 process; --no-ddp drops it)
and a ``loss.item()`` host sync every step (ours: --sync-every-step); its AdamW is torch's default
implementation (foreach on CUDA, for-loop on CPU; ours: --adamw); it runs fp32 with TF32 matmuls, while ours
at ``--precision fp32`` leaves TF32 off (ours: --tf32; here --no-tf32 for strict fp32); --no-ema drops
the EMA update (ours has the same flag). The official sampler always runs the 2N forward, even at cfg scale
1, and the model FLOPs count it.

timm: official models.py imports ``PatchEmbed, Attention, Mlp`` from ``timm.models.vision_transformer``.
``--timm stand-in`` (default) installs a small module with those three layers written here from timm 0.6's
semantics (current when DiT was released): attention is the explicit softmax(scale * q k^T) v, not SDPA.
``--timm installed`` imports a real timm instead; its version and whether its Attention takes the
``F.scaled_dot_product_attention`` path (timm >= 0.9, ``fused_attn``) are recorded. ``--check`` loads the
weights of our ``ditlab`` preset into the official model and compares the two forwards.

Examples:
  # H100, DiT-XL/2 at 256 px: official per-GPU train batch (256 over 8 GPUs), sample.py's 8 images
  python benchmarks/official_dit.py --model DiT-XL/2 --batch-size 32 --sample-batch-size 8 --json gpu.jsonl
  # A tiny CPU smoke run:
  python benchmarks/official_dit.py --device cpu --model DiT-S/2 --input-size 8 --batch-size 4 \\
      --sample-batch-size 2 --warmup 1 --iters 2 --threads 1 --check
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import math
import socket
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
import train_throughput as tt  # noqa: E402  (the shared timing, memory and output helpers)
from ditlab.flops import count  # noqa: E402
from ditlab.models.registry import create_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OFFICIAL_DIR = ".baselines/DiT"
OFFICIAL_REPO = "facebookresearch/DiT"
IN_CHANNELS = 4  # official DiT defaults (SD VAE latents, ImageNet classes)
NUM_CLASSES = 1000
EMA_DECAY = 0.9999  # train.py's update_ema default
HOW_TO_GET = (
    f"clone {OFFICIAL_REPO} into {DEFAULT_OFFICIAL_DIR} (git-ignored), e.g.\n"
    f"  git clone --depth 1 https://github.com/{OFFICIAL_REPO} {DEFAULT_OFFICIAL_DIR}\n"
    "or export only the files needed from a bare copy:\n"
    f"  mkdir -p {DEFAULT_OFFICIAL_DIR} && git --git-dir=<DiT.git> archive HEAD models.py train.py sample.py "
    f"diffusion | tar -x -C {DEFAULT_OFFICIAL_DIR}\n"
    f"  git --git-dir=<DiT.git> rev-parse HEAD > {DEFAULT_OFFICIAL_DIR}/COMMIT\n"
)


# ----------------------------------------------------------------------------
# A stand-in for the three timm layers the official models.py imports (timm 0.6 semantics).


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


class StandInPatchEmbed(nn.Module):
    """Image to token sequence: a conv whose kernel and stride are the patch, then (N, C, H, W) -> (N, HW, C)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 norm_layer: Callable[[int], nn.Module] | None = None, flatten: bool = True, bias: bool = True):
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = flatten
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input side {tuple(x.shape[-2:])} != the model's {self.img_size}")
        x = self.proj(x)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)
        return self.norm(x)


class StandInAttention(nn.Module):
    """Self-attention with one fused qkv linear and an output proj, the softmax written out (no SDPA)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        heads = self.qkv(x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = heads.unbind(0)  # (batch, heads, tokens, head_dim) each
        weights = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(out))


class StandInMlp(nn.Module):
    """Two linears around an activation, dropout (probability ``drop``) after each."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Callable[[], nn.Module] = nn.GELU, bias: bool = True, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


STAND_IN_VERSION = "stand-in (timm 0.6 semantics, explicit softmax attention)"


def install_timm_stand_in() -> None:
    """Register ``timm``, ``timm.models`` and ``timm.models.vision_transformer`` modules holding the stand-ins."""
    root = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    vit = types.ModuleType("timm.models.vision_transformer")
    root.__version__ = STAND_IN_VERSION  # type: ignore[attr-defined]
    vit.PatchEmbed, vit.Attention, vit.Mlp = StandInPatchEmbed, StandInAttention, StandInMlp  # type: ignore
    root.models, models.vision_transformer = models, vit  # type: ignore[attr-defined]
    sys.modules.update({"timm": root, "timm.models": models, "timm.models.vision_transformer": vit})


def timm_info(mode: str, model: nn.Module) -> dict[str, Any]:
    """The timm in use: mode, version and whether the official blocks' attention runs SDPA."""
    timm = sys.modules["timm"]
    attn = model.blocks[0].attn
    fused = bool(getattr(attn, "fused_attn", False))  # timm >= 0.9; absent (explicit softmax) before
    return {"mode": mode, "version": getattr(timm, "__version__", "unknown"),
            "attention": "sdpa" if fused else "explicit", "fused_attn": fused}


# ----------------------------------------------------------------------------
# Loading the official code.


def _import_from(path: Path, name: str, package: bool = False) -> types.ModuleType:
    """Import a file (or a package's ``__init__.py``) under ``name``, so nothing clashes with our modules."""
    location = path / "__init__.py" if package else path
    spec = importlib.util.spec_from_file_location(
        name, location, submodule_search_locations=[str(path)] if package else None)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {location}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_official(official_dir: Path, timm_mode: str) -> tuple[types.ModuleType, types.ModuleType]:
    """(models, diffusion) of the official checkout, with the stand-in or the installed timm."""
    if timm_mode == "stand-in":
        install_timm_stand_in()
    else:
        importlib.import_module("timm.models.vision_transformer")
    models = _import_from(official_dir / "models.py", "official_dit_models")
    diffusion = _import_from(official_dir / "diffusion", "official_dit_diffusion", package=True)
    return models, diffusion


def official_commit(official_dir: Path) -> str:
    """The checkout's commit: a COMMIT file written at export, else .git's HEAD (read, no git run)."""
    commit_file = official_dir / "COMMIT"
    if commit_file.is_file():
        return commit_file.read_text().strip()
    git = official_dir / ".git"
    with contextlib.suppress(OSError):
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return "unknown"


# ----------------------------------------------------------------------------
# Command line.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--help`` prints the module docstring too."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("official code")
    source.add_argument("--official-dir", default=DEFAULT_OFFICIAL_DIR, metavar="DIR",
                        help="checkout of facebookresearch/DiT, relative to the repo root unless absolute "
                             "(default: %(default)s)")
    source.add_argument("--timm", choices=("stand-in", "installed"), default="stand-in",
                        help="stand-in = the timm 0.6 layers written here; installed = import timm "
                             "(default: %(default)s)")
    source.add_argument("--check", action="store_true",
                        help="first load our ditlab preset's weights into the official model and compare outputs")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="DiT-XL/2", metavar="NAME", help="official DiT_models key (default: "
                       "%(default)s)")
    model.add_argument("--image-size", type=int, default=256, metavar="PX",
                       help="image side in pixels; the latent side is PX/8 (default: %(default)s)")
    model.add_argument("--input-size", type=int, default=None, metavar="N",
                       help="latent side, overriding --image-size/8 (for small CPU runs)")
    run = parser.add_argument_group("what to measure")
    run.add_argument("--mode", choices=("both", "train", "sample"), default="both",
                     help="which measurements to run (default: %(default)s; sample runs first)")
    run.add_argument("--batch-size", type=int, default=32, metavar="N", help="training batch (default: 32)")
    run.add_argument("--sample-batch-size", type=int, default=None, metavar="N",
                     help="guided images per sampling step (the forward sees 2N, as sample.py); default: "
                          "--batch-size")
    run.add_argument("--sample-steps", type=int, default=250, metavar="S",
                     help="respaced DDPM steps, create_diffusion(str(S)) (default: %(default)s)")
    run.add_argument("--cfg-scale", type=float, default=4.0, metavar="W", help="guidance scale (default: 4.0)")
    run.add_argument("--full-run", action="store_true",
                     help="sample: time whole p_sample_loop runs (S steps each) instead of one step")
    run.add_argument("--warmup", type=int, default=3, metavar="I", help="untimed iterations first (default: 3)")
    run.add_argument("--iters", type=int, default=10, metavar="I", help="timed iterations (default: 10)")
    run.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default: 0)")
    parts = parser.add_argument_group("train-step breakdown (default: everything train.py's loop does)")
    parts.add_argument("--no-ddp", action="store_true", help="train the bare model, without the DDP wrapper")
    parts.add_argument("--no-ema", action="store_true", help="skip the EMA update of each step")
    parts.add_argument("--no-tf32", action="store_true",
                       help="leave TF32 off (strict fp32); by default TF32 matmul + cuDNN are on, as train.py and "
                            "sample.py set them")
    tt.add_machine_arguments(parser, "the figure our rows use; the official code runs fp32/TF32: 494.5 = H100 "
                                     "SXM TF32 dense")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject values that would fail later with a less helpful message."""
    for name in ("image_size", "batch_size", "sample_steps", "iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup} must be >= 0")
    for name in ("input_size", "sample_batch_size", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.image_size % tt.LATENT_DOWNSAMPLE:
        parser.error(f"--image-size={args.image_size} must be a multiple of {tt.LATENT_DOWNSAMPLE}")
    patch = args.model.rpartition("/")[2]
    if not patch.isdigit():
        parser.error(f"--model={args.model!r} is not an official DiT name such as DiT-XL/2")
    if tt.latent_size(args) % int(patch):
        parser.error(f"latent side {tt.latent_size(args)} is not a multiple of the patch size {patch}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "error: --device cuda, but torch.cuda.is_available() is False (CPU-only torch or no GPU)\n")
    official_dir = Path(args.official_dir)
    if not official_dir.is_absolute():
        official_dir = REPO_ROOT / official_dir
    missing = [p for p in ("models.py", "diffusion/__init__.py") if not (official_dir / p).is_file()]
    if missing:
        parser.exit(2, f"error: no official DiT code in {official_dir} (missing {', '.join(missing)}).\n"
                       f"To get it, {HOW_TO_GET}")
    args.official_dir = str(official_dir)  # str: the settings go to JSON as they are
    if args.timm == "installed" and importlib.util.find_spec("timm") is None:
        parser.exit(2, "error: --timm installed, but timm is not installed; use --timm stand-in (the default)\n")


# ----------------------------------------------------------------------------
# The two official steps.


def set_tf32(on: bool) -> dict[str, bool]:
    """Set the two flags train.py and sample.py set at import (or clear them); return what is in force."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}


def free_port() -> int:
    """A TCP port nobody listens on now, for the 1-process group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process_group(device: torch.device, enabled: bool) -> Iterator[None]:
    """A world-size-1 process group (nccl on CUDA, gloo on CPU) for DDP, destroyed on exit."""
    if not enabled:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float = EMA_DECAY) -> None:
    """train.py's EMA step, operation for operation: per named parameter, ema = decay * ema + (1 - decay) * p."""
    ema_params = OrderedDict(ema.named_parameters())
    for name, param in OrderedDict(model.named_parameters()).items():
        ema_params[name].mul_(decay).add_(param.data, alpha=1 - decay)


def random_batch(batch: int, side: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(x, y): standard-normal latents and uniform class ids."""
    x = torch.randn(batch, IN_CHANNELS, side, side, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    return x, y


def adamw_impl(params: list[nn.Parameter]) -> str:
    """The kernel torch's AdamW picks when neither ``fused`` nor ``foreach`` is given (train.py's case)."""
    try:
        from torch.optim.optimizer import _default_to_fused_or_foreach

        fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    except (ImportError, TypeError):
        return "torch default"
    return "fused" if fused else "foreach" if foreach else "for-loop"


def make_train_step(model: nn.Module, diffusion_mod: types.ModuleType, args: argparse.Namespace,
                    device: torch.device) -> Callable[[], None]:
    """train.py's loop body after the VAE encode, on a fixed random latent batch (DDP when the group exists)."""
    ema = copy.deepcopy(model).to(device)
    for p in ema.parameters():
        p.requires_grad = False
    if dist.is_initialized():
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        inner, net = model, ddp
    else:
        inner, net = model, model
    diffusion = diffusion_mod.create_diffusion(timestep_respacing="")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0)
    update_ema(ema, inner, decay=0)
    net.train()
    ema.eval()
    x, y = random_batch(args.batch_size, tt.latent_size(args), device)
    running = [0.0]

    def step() -> None:
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), device=device)
        loss = diffusion.training_losses(net, x, t, dict(y=y))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not args.no_ema:
            update_ema(ema, inner)
        running[0] += loss.item()

    return step


def make_sample_step(model: nn.Module, diffusion_mod: types.ModuleType, args: argparse.Namespace,
                     device: torch.device) -> Callable[[], None]:
    """One p_sample with forward_with_cfg on sample.py's 2N batch (or a whole p_sample_loop with --full-run)."""
    diffusion = diffusion_mod.create_diffusion(str(args.sample_steps))
    n = args.sample_batch_size
    z, labels = random_batch(n, tt.latent_size(args), device)
    z = torch.cat([z, z], 0)
    y = torch.cat([labels, torch.full((n,), NUM_CLASSES, device=device)], 0)
    model_kwargs = dict(y=y, cfg_scale=args.cfg_scale)
    index = diffusion.num_timesteps // 2
    model.eval()

    def step() -> None:
        with torch.no_grad():
            t = torch.tensor([index] * z.shape[0], device=device)  # as p_sample_loop_progressive builds it
            diffusion.p_sample(model.forward_with_cfg, z, t, clip_denoised=False, model_kwargs=model_kwargs)

    def full_run() -> None:
        with torch.no_grad():
            diffusion.p_sample_loop(model.forward_with_cfg, z.shape, z, clip_denoised=False,
                                    model_kwargs=model_kwargs, progress=False, device=device)

    return full_run if args.full_run else step


def measure(name: str, args: argparse.Namespace, model: nn.Module, diffusion_mod: types.ModuleType, gmacs: float,
            device: torch.device) -> tt.Result:
    """Build the step, time it with ``tt.time_steps`` and summarise it as ours (memory peak reset first)."""
    tt.synchronize(device)
    tt.reset_peak_memory(device)
    if name == "train":
        step, batch = make_train_step(model, diffusion_mod, args, device), args.batch_size
    else:
        step, batch = make_sample_step(model, diffusion_mod, args, device), args.sample_batch_size
    seconds, cpu_seconds = tt.time_steps(step, args.warmup, args.iters, device)
    flop_args = args
    if name == "sample":
        if args.full_run:  # one timed call = S steps: report per step so every field keeps its meaning
            seconds, cpu_seconds = [s / args.sample_steps for s in seconds], cpu_seconds / args.sample_steps
        if args.cfg_scale == 1.0:  # sample.py runs the 2N forward at any scale: count what runs
            flop_args = argparse.Namespace(**(vars(args) | {"cfg_scale": math.inf}))
    return tt.summarise(name, seconds, cpu_seconds, batch, gmacs, flop_args, device)


# ----------------------------------------------------------------------------
# The stand-in check against our own DiT.


def check_against_ditlab(models_mod: types.ModuleType, args: argparse.Namespace,
                         device: torch.device) -> dict[str, float]:
    """Random weights in our preset, loaded strictly into the official model; max |diff| of the two forwards
    (eval, fp32, TF32 off) on random latents, timesteps and labels, relative to the output's max |value|."""
    side = tt.latent_size(args)
    torch.manual_seed(args.seed)
    ours = create_model(args.model, input_size=side, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES).to(device)
    with torch.no_grad():
        for p in ours.parameters():  # the zero-initialised adaLN / output layers would make every output 0
            p.normal_(0.0, 0.05)
    official = models_mod.DiT_models[args.model](input_size=side, num_classes=NUM_CLASSES).to(device)
    official.load_state_dict(ours.state_dict(), strict=True)
    ours.eval()
    official.eval()
    x, y = random_batch(4, side, device)
    t = torch.randint(0, 1000, (4,), device=device)
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    set_tf32(False)
    try:
        with torch.no_grad():
            a, b = ours(x, t, y), official(x, t, y)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    return {"max_abs_diff": diff, "max_abs_output": scale, "relative": diff / max(scale, 1e-30)}


# ----------------------------------------------------------------------------
# Main.


def main(argv: list[str] | None = None) -> None:
    """Parse, import the official code, build its model, run the measurements, print and append rows."""
    args = parse_args(argv)
    args.sample_batch_size = args.sample_batch_size or args.batch_size
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)  # as train.py, before the nccl group
    if args.threads:
        torch.set_num_threads(args.threads)
    official_dir = Path(args.official_dir)
    models_mod, diffusion_mod = load_official(official_dir, args.timm)
    if args.model not in models_mod.DiT_models:
        sys.exit(f"error: --model={args.model!r} is not in the official DiT_models: {', '.join(models_mod.DiT_models)}")
    tf32 = set_tf32(not args.no_tf32)

    check = None
    if args.check:
        check = check_against_ditlab(models_mod, args, device)
        status = "OK" if check["relative"] < 1e-4 else "MISMATCH"
        print(f"check vs ditlab {args.model}: max |diff| {check['max_abs_diff']:.3g} (output max "
              f"{check['max_abs_output']:.3g}, relative {check['relative']:.3g}) {status}")
        if status != "OK":
            sys.exit(1)

    torch.manual_seed(args.seed)  # train.py seeds before building the model
    model = models_mod.DiT_models[args.model](input_size=tt.latent_size(args), num_classes=NUM_CLASSES).to(device)
    timm = timm_info(args.timm, model)
    # The knobs our rows carry, with the values the official code runs at.
    args.precision, args.attention, args.compile, args.grad_checkpointing = "fp32", timm["attention"], False, False
    args.in_channels, args.num_classes = IN_CHANNELS, NUM_CLASSES
    args.adamw, args.sync_every_step, args.cfg_batch = adamw_impl(list(model.parameters())), True, "joint"
    args.tf32 = tf32["matmul"]
    gmacs = count(args.model, args.image_size, input_size=tt.latent_size(args), in_channels=IN_CHANNELS,
                  num_classes=NUM_CLASSES).gmacs
    info = tt.context(args, device, gmacs) | {
        "implementation": "official",
        "official_repo": OFFICIAL_REPO,
        "official_commit": official_commit(official_dir),
        "timm": timm,
        "tf32": tf32,
        "vae_encode": False,
        "data_loading": False,
        "check": check,
    }
    print(f"OFFICIAL {OFFICIAL_REPO}@{info['official_commit'][:12]} {args.model} | latent "
          f"{tt.latent_size(args)}x{tt.latent_size(args)}x{IN_CHANNELS} | {gmacs:.3f} GMACs/img forward")
    print(f"fp32, TF32 matmul {tf32['matmul']} cudnn {tf32['cudnn']} | timm {timm['version']} "
          f"(attention {timm['attention']}) | DDP {not args.no_ddp} | EMA {not args.no_ema} | no VAE, no data | "
          f"sample {'full p_sample_loop' if args.full_run else 'one p_sample'} | warmup {args.warmup}, "
          f"iters {args.iters}")
    threads = f", {info['threads']} threads" if info["threads"] else ""
    print(f"{info['machine']}{threads} | torch {info['torch']} | {info['date']} | load {info['loadavg_1min']:.2f}"
          + (f" | MFU peak {args.peak_tflops:g} TFLOP/s" if device.type == "cuda" else ""))
    print(f"peak memory = {tt.memory_kind(device)}")
    print(tt.table_row(tt.COLUMNS))

    names = {"both": ("sample", "train"), "train": ("train",), "sample": ("sample",)}[args.mode]
    with process_group(device, enabled="train" in names and not args.no_ddp):
        for name in names:
            result = measure(name, args, model, diffusion_mod, gmacs, device)
            print(tt.format_result(result), flush=True)
            if args.json:
                extra: dict[str, Any] = {"ddp": not args.no_ddp, "ema": not args.no_ema} if name == "train" else {
                    "forward_batch": 2 * args.sample_batch_size,
                    "sample_timing": "full_run" if args.full_run else "per_step"}
                tt.append_json(args.json, info | extra, result)


if __name__ == "__main__":
    main()
