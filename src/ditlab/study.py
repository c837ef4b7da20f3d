"""``ditlab study``: several backbones trained on the same data at the same training compute, scored alike.

Each entry is a registry model + objective + optimizer recipe (the four defaults follow their papers; any other
can be added). Widths are chosen so that every entry's training multiply-accumulates per image (the ledger,
``ditlab.flops.training_gmacs``: 3x forward, MDT's two passes counted) match the first entry's within
``tolerance``; every entry then trains on the same data, batch, steps, EMA and seed. Training runs in segments,
one per evaluation budget, through the ordinary training loop with its exact resume; after each segment the EMA
weights are sampled (same seeds, labels, sampler steps and count for every entry) and scored with the FID
Inception (FID, sFID, Precision, Recall). DDT also gets an encoder-sharing curve at the final budget.

Everything lands in one folder: ``study.json`` (the plan and every number, rewritten atomically after each unit
of work, so a killed study continues where it stopped when the same command is run again), one training run
per entry under ``runs/``, the reference images, sample grids and the report (``report.md`` and SVG plots,
:mod:`ditlab.study_report`).

Under ``torchrun`` every rank trains each entry together (DDP, the ordinary loop) and samples one contiguous
block of every evaluation's images (image i keeps label i mod classes and seed i, so the images and the FID do
not depend on the number of processes); rank 0 gathers and scores them and writes study.json and the report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.idx import parse_idx_spec
from .flops import training_gmacs
from .imageio import to_rgb_uint8
from .models.registry import create_model, model_config
from .train import TrainConfig, train
from .train import checkpoint as ckpt
from .train.data_source import build_data_source
from .train.loop import read_metrics
from .utils.distributed import DistInfo, any_rank, barrier, broadcast_object, gather_objects, init_distributed
from .utils.files import atomic_write

STATE_FILE = "study.json"
STATE_VERSION = 1
METRICS = ("fid", "sfid", "precision", "recall")


# ----------------------------------------------------------------------------
# Recipes: what each family trains with where the papers differ.


@dataclass
class EntrySpec:
    """One contestant: a registry model, its objective and optimizer, and how its size is chosen.

    ``model_args`` fixes the architecture except ``size_by`` (a config field, usually ``hidden_size``), which
    the study searches in steps of ``size_step`` to match the first entry's training FLOPs; ``size_by=None``
    takes ``model_args`` as given and only checks the match. ``depth_arg`` names the field that receives the
    study's common depth; ``encoder_fraction`` (DDT) sets ``num_encoder_blocks`` from it.
    """

    name: str  # label in the report
    model: str  # registry family or preset
    objective: str  # "diffusion", "mdt" or "flow"
    model_args: dict[str, Any] = field(default_factory=dict)
    size_by: str | None = "hidden_size"
    size_step: int = 4  # widths searched: multiples of this (4 keeps sin-cos tables and DiffuSSM's 2D/M valid)
    depth_arg: str | None = "depth"
    heads_arg: str | None = "num_heads"
    encoder_fraction: float | None = None
    optimizer: str = "adamw"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = None
    diffusion: dict[str, Any] = field(default_factory=dict)  # DiffusionConfig overrides
    flow: dict[str, Any] = field(default_factory=dict)  # FlowConfig overrides
    source: str = ""  # where the recipe comes from

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.objective not in ("diffusion", "mdt", "flow"):
            raise ValueError(f"entry {self.name!r}: objective={self.objective!r} is not one of diffusion, mdt, flow")
        model_config(self.model)  # one-line error for an unknown model


RECIPES: dict[str, EntrySpec] = {
    "DiT": EntrySpec(
        "DiT", "DiT", "diffusion", source="dit.md: AdamW lr 1e-4, no clipping; linear schedule, learned sigma, "
        "MSE+VB; DDPM sampling"),
    "MDTv2": EntrySpec(
        "MDTv2", "MDTv2", "mdt", model_args={"decode_layer": 2, "mask_ratio": 0.3}, optimizer="adan", lr=3e-4,
        max_grad_norm=1.0, diffusion={"min_snr_gamma": 5.0},
        source="mdt.md: full + masked pass (r = 0.3 + 0.2 U), Adan lr 3e-4 (official default) with "
        "max_grad_norm 1, Min-SNR-5; decode_layer 2 (v1 value; v2 uses 4 of 28 / 6 of 12)"),
    "DDT": EntrySpec(
        "DDT", "DDT", "flow", depth_arg="num_blocks", heads_arg="num_groups", encoder_fraction=2 / 3,
        betas=(0.9, 0.95), flow={"t_sampling": "logit-normal"},
        source="ddt.md: flow matching with logit-normal t, AdamW lr 1e-4 betas (0.9, 0.95); encoder = 2/3 of "
        "the blocks (the paper's B-size best split 8En4De); Euler ODE, last step 0.04; no REPA"),
    "DiffuSSM": EntrySpec(
        "DiffuSSM", "DiffuSSM", "diffusion", heads_arg=None,
        source="diffussm.md: DiT/ADM recipe (AdamW lr 1e-4, learned sigma, MSE+VB), no patchify, hourglass M=2"),
    "DiT-flow": EntrySpec(
        "DiT-flow", "DiT", "flow", model_args={"learn_sigma": False}, flow={"time_scale": 1000.0},
        source="DiT under flow matching (SiT-like), logit-normal t, time_scale 1000 for DiT's embedder"),
}
DEFAULT_ENTRIES = ("DiT", "MDTv2", "DDT", "DiffuSSM")


# ----------------------------------------------------------------------------
# The study's settings and presets.


@dataclass
class StudyConfig:
    """Settings shared by every entry; ``preset`` fills the unset ones."""

    out: str = "runs/study"  # the study folder (study.json, runs/, report.md); rerun the command to resume
    preset: str = "cpu"  # quick (smoke run), cpu (<= 3 h on 2 cores), gpu (about 1 h of one H100/H200)
    data: str = "fashion-mnist"  # dataset spec (fashion-mnist, fashion-mnist:DIR, mnist:DIR, digits)
    image_size: int = 16  # images are fitted to this side (model input, pixel space)
    image_fit: str = "resize"  # 28x28 (fashion-)mnist to image_size: "resize" (bilinear) or "pad" (zero border)
    entries: str = ",".join(DEFAULT_ENTRIES)  # comma-separated recipe names (see --list-recipes)
    add_entries: list[dict[str, Any]] = field(default_factory=list)  # extra EntrySpec JSON objects
    depth: int = 6  # blocks of every entry (MDTv2's side block and DDT's split are per recipe)
    num_heads: int = 4  # attention heads (DDT: groups) of the transformer entries
    patch_size: int = 2  # patch side of the patch-based entries (DiffuSSM has no patchify)
    width: int = 128  # hidden size of the first entry; the others are sized to its training FLOPs
    steps: int = 2400  # optimizer steps of every entry
    global_batch: int = 64  # images per step
    evals: int = 3  # evaluation budgets, evenly spaced in steps (the last at `steps`)
    lr_scale: float = 2.0  # multiplies every recipe's paper learning rate (small models, short runs)
    warmup_steps: int = 0  # linear warm-up (the papers: none)
    ema_decay: float = 0.999  # EMA decay of every entry (papers: 0.9999, too slow for short runs)
    ema_warmup: bool = True  # EMA decay min(decay, (1+s)/(10+s)), so early budgets are not the initial weights
    fid_samples: int = 500  # samples per evaluation (same seeds and class-balanced labels for every entry)
    sampler_steps: int = 50  # model evaluations per sample: DDPM respaced / Euler ODE (DDT, flow entries)
    sample_batch: int = 250  # images per sampling batch
    cfg_scale: float = 1.0  # guidance of the evaluation samples (1 = none)
    reference_images: int = 2000  # real images of the reference statistics (0 = the whole train split)
    share_ratios: list[int] = field(default_factory=lambda: [2, 4])  # DDT sharing: uniform R and DP K=ceil(N/R)
    tolerance: float = 0.10  # allowed relative mismatch of training FLOPs per image
    precision: str = "fp32"  # training precision: fp32 or bf16 (autocast)
    ckpt_every: int = 250  # steps between checkpoints inside a segment (resume granularity)
    seed: int = 0
    device: str | None = None  # cpu / cuda; None = CUDA when available
    progress: bool = True  # progress bars

    def __post_init__(self) -> None:
        for name in ("image_size", "depth", "num_heads", "patch_size", "width", "steps", "global_batch", "evals",
                     "fid_samples", "sampler_steps", "sample_batch", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"study {name}={getattr(self, name)} must be a positive integer")
        if self.evals > self.steps:
            raise ValueError(f"study evals={self.evals} exceeds steps={self.steps}: one budget per step at most")
        if self.fid_samples < 4:
            raise ValueError(f"study fid_samples={self.fid_samples} must be at least 4 (Precision/Recall, k=3)")
        if self.reference_images < 0 or not 0 < self.tolerance < 1 or self.lr_scale <= 0:
            raise ValueError(f"study reference_images={self.reference_images} must be >= 0, tolerance="
                             f"{self.tolerance} in (0, 1) and lr_scale={self.lr_scale} > 0")
        if any(r < 1 for r in self.share_ratios):
            raise ValueError(f"study share_ratios={self.share_ratios} must be integers >= 1")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"study precision={self.precision!r} is not one of fp32, bf16")
        if self.data != "digits" and parse_idx_spec(self.data) is None:  # the reference needs the real images
            raise ValueError(f"study data={self.data!r} is not one the study can evaluate; allowed: digits, "
                             "fashion-mnist, fashion-mnist:DIR, mnist:DIR (each with optional :train/:test, :N)")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"study device='cuda' (preset {self.preset}) but CUDA is not available on this "
                             "machine; use --preset cpu or quick, or --device cpu")
        self.entry_specs()  # one-line errors for bad entry names now, not hours later

    @property
    def budgets(self) -> list[int]:
        """The evaluation steps: ``evals`` evenly spaced budgets ending at ``steps``."""
        return sorted({round(self.steps * (k + 1) / self.evals) for k in range(self.evals)})

    def entry_specs(self) -> list[EntrySpec]:
        names = [n.strip() for n in self.entries.split(",") if n.strip()]
        unknown = [n for n in names if n not in RECIPES]
        if unknown:
            raise ValueError(f"unknown study entr{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                             f"allowed: {', '.join(RECIPES)} (or add one with --add-entry JSON)")
        specs = [dataclasses.replace(RECIPES[n]) for n in names]
        for raw in self.add_entries:
            try:
                specs.append(EntrySpec(**raw))
            except TypeError as err:
                raise ValueError(f"bad study entry {json.dumps(raw)}: {err}") from None
        labels = [s.name for s in specs]
        if not specs or len(set(labels)) != len(labels):
            raise ValueError(f"study entries must be one or more distinct names, got {labels}")
        return specs


PRESETS: dict[str, dict[str, Any]] = {
    # A smoke run (56 s on 2 quiet cores, measured): tiny models, two budgets, few samples.
    "quick": dict(image_size=16, depth=4, num_heads=2, width=48, steps=40, global_batch=16, evals=2,
                  fid_samples=32, sampler_steps=10, sample_batch=64, reference_images=128, share_ratios=[2],
                  ckpt_every=20, ema_decay=0.99),
    # 81 min on this 2-core machine, measured end to end (BENCHMARKS.md; the budget is 3 h): 55 min training
    # (137-251 img/s per entry), 22 min sampling + FID Inception, 4 min DDT sharing. 16 px Fashion-MNIST: 64
    # tokens at p=2 and 256 for DiffuSSM (the 4x ratio of ImageNet-256 latents at p=2).
    "cpu": dict(image_size=16, depth=6, num_heads=4, width=128, steps=2400, global_batch=64, evals=3,
                lr_scale=2.0, fid_samples=500, sampler_steps=50, reference_images=2000, share_ratios=[2, 4]),
    # About 1 h of one H100/H200 (an estimate: ~36 GFLOP per training image, not yet measured on a GPU): DiT-S/2
    # shape at 32 px (256 tokens at p=2; DiffuSSM 1024 tokens, as at ImageNet-256 latents), 5000 steps of 256.
    "gpu": dict(image_size=32, image_fit="pad", depth=12, num_heads=6, width=384, steps=5000, global_batch=256,
                evals=4, lr_scale=1.0, fid_samples=5000, sampler_steps=50, sample_batch=1000, reference_images=10000,
                share_ratios=[2, 3, 4, 5], ckpt_every=1000, ema_decay=0.9999, precision="bf16", device="cuda"),
}


def resolve_config(overrides: dict[str, Any]) -> StudyConfig:
    """A StudyConfig from the preset named in ``overrides`` (default cpu) plus the explicit overrides."""
    preset = overrides.get("preset", "cpu")
    if preset not in PRESETS:
        raise ValueError(f"unknown study preset {preset!r}; allowed: {', '.join(PRESETS)}")
    return StudyConfig(**{**PRESETS[preset], **overrides, "preset": preset})


# ----------------------------------------------------------------------------
# Planning: sizes at equal training FLOPs.


@dataclass(frozen=True)
class DataShape:
    channels: int
    input_size: int
    num_classes: int
    size: int  # number of training images


def data_shape(cfg: StudyConfig) -> DataShape:
    """Channels, side, classes and length of the study's training data (loads it once)."""
    probe = TrainConfig(data=cfg.data, image_size=cfg.image_size, image_fit=cfg.image_fit, device="cpu",
                        progress=False)
    data = build_data_source(probe, DistInfo(0, 0, 1, torch.device("cpu")))
    return DataShape(data.channels, data.input_size, data.num_classes, data.size)


def _architecture(spec: EntrySpec, cfg: StudyConfig, shape: DataShape, width: int) -> dict[str, Any]:
    """The full model_args of an entry at a given value of its size knob."""
    family = model_config(spec.model)[0]
    fields = {f.name for f in dataclasses.fields(family.config_cls)}
    args: dict[str, Any] = {"in_channels": shape.channels, "input_size": shape.input_size,
                            "num_classes": shape.num_classes}
    if "patch_size" in fields:
        args["patch_size"] = cfg.patch_size
    if spec.depth_arg:
        args[spec.depth_arg] = cfg.depth
    if spec.heads_arg:
        args[spec.heads_arg] = heads_for(width, cfg.num_heads, spec.heads_arg == "num_groups")
    if spec.encoder_fraction is not None:
        args["num_encoder_blocks"] = max(1, min(cfg.depth - 1, round(spec.encoder_fraction * cfg.depth)))
    args.update(spec.model_args)
    if spec.size_by:
        args[spec.size_by] = width
    return args


def heads_for(width: int, wanted: int, rope: bool) -> int | None:
    """The head count nearest ``wanted`` (ties: the larger) that divides ``width`` and lies within a factor 2 of
    ``wanted``; with 2-D RoPE (DDT) the head dimension must also be a multiple of 4. None if there is none."""
    valid = [h for h in range(max(1, wanted // 2), 2 * wanted + 1)
             if width % h == 0 and (not rope or (width // h) % 4 == 0)]
    return min(valid, key=lambda h: (abs(h - wanted), -h)) if valid else None


def _cost(spec: EntrySpec, args: dict[str, Any], points: int = 16) -> tuple[float, float]:
    """(forward GMACs, training GMACs) per image of an entry with these model_args."""
    return training_gmacs(spec.model, spec.objective, image_size=args["input_size"], latent_downsample=1,
                          mask_points=points, **args)


def _candidates(spec: EntrySpec, cfg: StudyConfig) -> list[int]:
    """Widths the search may pick: multiples of ``size_step`` with a valid head count near ``num_heads``."""
    widths = range(spec.size_step, 8 * cfg.width + 1, spec.size_step)
    if not spec.heads_arg:
        return list(widths)
    return [w for w in widths if heads_for(w, cfg.num_heads, spec.heads_arg == "num_groups") is not None]


def _search_width(spec: EntrySpec, cfg: StudyConfig, shape: DataShape, target: float) -> int:
    """The candidate width whose training cost is nearest ``target`` (in ratio); cost grows with width."""
    candidates = _candidates(spec, cfg)
    cost = {}

    def train_cost(i: int) -> float:  # a 4-node mask-ratio mean is close enough to bracket the target
        if i not in cost:
            cost[i] = _cost(spec, _architecture(spec, cfg, shape, candidates[i]), points=4)[1]
        return cost[i]

    lo, hi = 0, len(candidates) - 1
    while lo < hi:  # the first candidate whose cost reaches the target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if train_cost(mid) < target else (lo, mid)
    best = min({max(lo - 1, 0), lo}, key=lambda i: abs(math.log(train_cost(i) / target)))
    return candidates[best]


def size_entry(spec: EntrySpec, cfg: StudyConfig, shape: DataShape, target: float | None) -> dict[str, Any]:
    """Plan one entry: its model_args, costs and how it was sized (``target`` None: the reference entry)."""
    if target is None or not spec.size_by:
        width = cfg.width
        how = "reference entry: width given" if target is None else "model_args as given (checked)"
    else:
        width = _search_width(spec, cfg, shape, target)
        how = (f"{spec.size_by} searched over multiples of {spec.size_step} (heads near {cfg.num_heads}): "
               f"{width} gives the nearest training FLOPs to the reference's")
    args = _architecture(spec, cfg, shape, width)
    if spec.heads_arg and args[spec.heads_arg] is None:
        raise ValueError(f"entry {spec.name}: width {width} has no valid head count near {cfg.num_heads}")
    forward, train_cost = _cost(spec, args)
    model = create_model(spec.model, **args)
    return {
        "spec": dataclasses.asdict(spec), "model_args": args, "sizing": how,
        "params": sum(p.numel() for p in model.parameters()),
        "forward_gmacs": forward, "train_gmacs": train_cost,
        "train_flops_per_image": 2 * train_cost * 1e9,
    }


def plan_entries(cfg: StudyConfig, shape: DataShape) -> dict[str, dict[str, Any]]:
    """Every entry's plan; the first entry sets the FLOPs target. One-line error if one misses the tolerance."""
    plans: dict[str, dict[str, Any]] = {}
    target = None
    for spec in cfg.entry_specs():
        plan = size_entry(spec, cfg, shape, target)
        target = plan["train_gmacs"] if target is None else target
        plan["ratio_to_reference"] = plan["train_gmacs"] / target
        if abs(plan["ratio_to_reference"] - 1) > cfg.tolerance:
            raise ValueError(
                f"entry {spec.name}: training cost {plan['train_gmacs'] * 1e3:.1f} MMACs/img is "
                f"{plan['ratio_to_reference']:.2f}x the reference's; outside +/-{cfg.tolerance:.0%} "
                f"(change its model_args or size_by)")
        plans[spec.name] = plan
    return plans


def entry_train_config(cfg: StudyConfig, plan: dict[str, Any], run_dir: Path, steps: int) -> TrainConfig:
    """The TrainConfig of one entry's run, trained (or resumed) up to ``steps``."""
    from .objectives import DiffusionConfig
    from .objectives.flow import FlowConfig

    spec = EntrySpec(**plan["spec"])
    return TrainConfig(
        run_dir=str(run_dir), model=spec.model, model_args=dict(plan["model_args"]), data=cfg.data,
        image_size=cfg.image_size, image_fit=cfg.image_fit, objective=spec.objective,
        diffusion=DiffusionConfig(**spec.diffusion), flow=FlowConfig(**spec.flow), steps=steps,
        global_batch=cfg.global_batch, lr=spec.lr * cfg.lr_scale, betas=spec.betas, optimizer=spec.optimizer,
        warmup_steps=cfg.warmup_steps, max_grad_norm=spec.max_grad_norm, ema_decay=cfg.ema_decay,
        ema_warmup=cfg.ema_warmup, seed=cfg.seed, precision=cfg.precision,
        device=cfg.device, log_every=max(1, min(50, cfg.steps // 20)), ckpt_every=cfg.ckpt_every,
        keep_checkpoints=1, sample_every=-1, progress=cfg.progress,
    )


# ----------------------------------------------------------------------------
# The state file: the plan and every number, rewritten atomically after each unit of work.


def save_state(out: Path, state: dict[str, Any]) -> None:
    atomic_write(out / STATE_FILE, lambda tmp: tmp.write_text(json.dumps(state, indent=1) + "\n"))


def load_state(out: Path) -> dict[str, Any]:
    """The study.json of a study folder; one-line errors for a missing or foreign file."""
    path = Path(out) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (is {out} a ditlab study folder?)")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path} is not a ditlab study file of version {STATE_VERSION}")
    return state


# What a fresh checkout can rebuild, and a run's lock (only a live process holds one): committing the rest of
# the folder (study.json, each run's config.json, metrics.jsonl and newest checkpoint pair, the reference .npz,
# grids, report) lets another machine resume it.
GITIGNORE = "runs/*/tb/\nruns/*/.lock\nreference/*.ditlab-ref-*.npz\n.*.tmp-*\n"

_RUNTIME_FIELDS = ("out", "progress", "device")  # may differ between the first run and a resumed one


def open_state(cfg: StudyConfig) -> dict[str, Any]:
    """The state of ``cfg.out``: created (with the plan) on the first run, checked against ``cfg`` later."""
    out = Path(cfg.out)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUNTIME_FIELDS}
    if (out / STATE_FILE).is_file():
        state = load_state(out)
        changed = sorted(k for k in settings if state["config"].get(k) != settings[k])
        if changed:
            shown = ", ".join(f"{k}={state['config'].get(k)!r}" for k in changed)
            raise ValueError(f"{out} holds a study with other settings ({shown}); rerun with those or use "
                             f"another --out")
        return state
    shape = data_shape(cfg)
    state = {"version": STATE_VERSION, "config": settings, "data": dataclasses.asdict(shape),
             "plan": plan_entries(cfg, shape), "results": {}, "timing": {}}
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text(GITIGNORE)
    save_state(out, state)
    return state


def _entry_result(state: dict[str, Any], name: str) -> dict[str, Any]:
    return state["results"].setdefault(name, {"status": "pending", "evals": {}, "sharing": {}, "errors": []})


# ----------------------------------------------------------------------------
# Reference images and scoring.


def reference_images(cfg: StudyConfig) -> np.ndarray:
    """uint8 (N, S, S, 3) real training images fitted as the model sees them (a seeded subset if asked)."""
    probe = TrainConfig(data=cfg.data, image_size=cfg.image_size, image_fit=cfg.image_fit, device="cpu",
                        progress=False)
    data = build_data_source(probe, DistInfo(0, 0, 1, torch.device("cpu")))
    count = data.size if cfg.reference_images == 0 else min(cfg.reference_images, data.size)
    order = torch.randperm(data.size, generator=torch.Generator().manual_seed(cfg.seed))[:count].sort().values
    return np.concatenate([to_rgb_uint8(data.batch(order[i:i + 1000].tolist())[0]) for i in range(0, count, 1000)])


def prepare_reference(cfg: StudyConfig, out: Path) -> Path:
    """The reference batch as an ADM .npz in the study folder (written once; its statistics are cached)."""
    from .eval.reference import write_npz

    path = out / "reference" / f"reference-{cfg.reference_images or 'all'}.npz"
    if not path.is_file():
        write_npz(path, reference_images(cfg))
    return path


def score(images: np.ndarray, reference: Path, cfg: StudyConfig, device: torch.device) -> dict[str, float]:
    """FID, sFID, Precision and Recall of uint8 NHWC images with the FID Inception (``ditlab.eval.score``)."""
    from .eval.score import score_images

    return score_images(images, reference, metrics=METRICS, device=str(device), progress=cfg.progress)


def one_process(cfg: StudyConfig) -> DistInfo:
    """Rank 0 of 1 on the study's device (CUDA when available unless ``cfg.device`` says otherwise)."""
    return DistInfo(0, 0, 1, torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")))


# Errors the CLI reports in one line: re-raised as themselves on the other ranks, so every rank says one line.
_ONE_LINE_ERRORS = {cls.__name__: cls for cls in (ValueError, FileNotFoundError)}


def on_main(info: DistInfo, work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0; its result on every rank, or its exception raised on every rank (so that no rank
    waits in a collective that another has left)."""
    result, error, failure = None, None, None
    if info.is_main:
        try:
            result = work()
        except Exception as err:  # noqa: BLE001 (its type and message go to every rank, raised below)
            error, failure = err, (type(err).__name__, str(err))
    result, failure = broadcast_object((result, failure))
    if error is not None:
        raise error
    if failure is not None:
        name, message = failure
        if name in _ONE_LINE_ERRORS:
            raise _ONE_LINE_ERRORS[name](message)
        raise RuntimeError(f"on rank 0: {name}: {message}")
    return result


# ----------------------------------------------------------------------------
# Sampling.


def load_entry_model(run_dir: Path, step: int, device: torch.device | str) -> torch.nn.Module:
    """The EMA weights of an entry's checkpoint at ``step``."""
    weights, meta = ckpt.load_weights(ckpt.checkpoint_paths(run_dir / "checkpoints", step)[0])
    model = create_model(meta["family"], **meta["config"])
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval()


def sample_images(model: torch.nn.Module, tc: TrainConfig, cfg: StudyConfig, info: DistInfo, share: Any = None,
                  desc: str = "sample") -> tuple[list[Any] | None, float]:
    """Sample this rank's block of the ``fid_samples`` images (image i: label i mod classes, seed i).

    Returns, on rank 0, every rank's block in rank order (a float32 array in [-1, 1], or the one-line error that
    rank hit: errors travel as data so that every rank reaches the gather) and None elsewhere, with the wall
    seconds from the moment every rank was ready to the gathered images (the warm-up batch is not timed)."""
    from .train.fid import rank_share
    from .train.objective import sampling_config

    process = sampling_config(tc)
    labels = torch.arange(cfg.fid_samples) % model.config.num_classes
    block = rank_share(cfg.fid_samples, info)
    local: Any = []
    try:
        _sample_batch(model, tc, cfg, process, labels[:2], [0, 1], share)  # warm-up (lazy inits), not timed
    except Exception as err:  # noqa: BLE001 (reported by rank 0 after the gather)
        local = _error_line(info, err)
    barrier()
    tic = time.perf_counter()
    starts = range(block.start, block.stop, cfg.sample_batch) if isinstance(local, list) else range(0)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not (cfg.progress and info.is_main),
                      dynamic_ncols=True):
        seeds = list(range(start, min(start + cfg.sample_batch, block.stop)))
        try:
            x = _sample_batch(model, tc, cfg, process, labels[seeds], seeds, share)
        except Exception as err:  # noqa: BLE001
            local = _error_line(info, err)
            break
        local.append(x.float().cpu().clamp(-1, 1).numpy())
    if isinstance(local, list):
        local = np.concatenate(local) if local else np.zeros((0,), np.float32)
    blocks = gather_objects(local)
    return blocks, time.perf_counter() - tic


def _error_line(info: DistInfo, err: Exception) -> str:
    traceback.print_exc(file=sys.stderr)
    first = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {first}" + (f" (rank {info.rank})" if info.world_size > 1 else "")


def joined(blocks: list[Any]) -> torch.Tensor:
    """The gathered blocks as one tensor in image order; a rank's error is raised here, on rank 0."""
    errors = [b for b in blocks if isinstance(b, str)]
    if errors:
        raise RuntimeError(errors[0])
    return torch.from_numpy(np.concatenate([b for b in blocks if len(b)]))


def _sample_batch(model: torch.nn.Module, tc: TrainConfig, cfg: StudyConfig, process: Any, labels: torch.Tensor,
                  seeds: list[int], share: Any) -> torch.Tensor:
    """One batch with the entry's sampler: Euler ODE (flow) or DDPM respaced to ``sampler_steps``."""
    from .sampling import Guidance, generate_latents

    x = generate_latents(model, process, labels, entry_sampler(tc, cfg), guidance=Guidance(cfg.cfg_scale),
                         share=share, seeds=seeds)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return x


def entry_sampler(tc: TrainConfig, cfg: StudyConfig) -> Any:
    """The sampler spec of an entry: ``sampler_steps`` Euler steps (flow) or DDPM respaced to that many."""
    from .sampling import parse_sampler
    from .train.objective import sampling_config

    text = f"euler{cfg.sampler_steps}" if tc.objective == "flow" else str(cfg.sampler_steps)
    return parse_sampler(text, sampling_config(tc))


def save_family_grid(images: torch.Tensor, num_classes: int, path: Path) -> str:
    """A grid with one row per class (up to 10 x 10) from the evaluation samples."""
    from .imageio import save_grid

    classes = min(num_classes, 10, len(images))  # image i has label i mod num_classes
    per_class = [images[c::num_classes][:10] for c in range(classes)]
    cols = min(len(p) for p in per_class)
    grid = torch.cat([p[:cols] for p in per_class])
    save_grid(grid, path, nrow=cols, scale=max(1, 64 // images.shape[-1]))
    return str(path)


# ----------------------------------------------------------------------------
# Units of work: train an entry to a budget, evaluate it there, the DDT sharing curve.


def _run_dir(out: Path, name: str) -> Path:
    return out / "runs" / name.replace("/", "_")


def train_to(cfg: StudyConfig, plan: dict[str, Any], run_dir: Path, step: int) -> None:
    """Train (or exactly resume) an entry's run up to ``step``; nothing to do if it is already there."""
    saved = ckpt.saved_steps(run_dir / "checkpoints")
    if saved and saved[-1] >= step:
        return
    train(entry_train_config(cfg, plan, run_dir, step), resume=bool(saved))


def training_record(run_dir: Path, cfg: StudyConfig) -> dict[str, Any]:
    """Loss curve, wall-clock and img/s (over the whole wall clock, and of the median logged window) of a run
    from its metrics.jsonl (rows repeated by a resume: last wins)."""
    rows = {}
    if (run_dir / "metrics.jsonl").is_file():
        rows = {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}
    steps = sorted(rows)
    wall, previous, seconds = 0.0, 0, []
    for s in steps:
        wall += rows[s]["sec_per_step"] * (s - previous)
        previous = s
        seconds.append([s, wall])
    return {
        "loss_curve": [[s, rows[s]["loss"]] for s in steps],
        "seconds_curve": seconds,
        "train_seconds": wall,
        "train_img_per_s": cfg.global_batch * previous / wall if wall > 0 else None,
        # the median logged window: what the machine does when nothing else loads it (a shared machine slows
        # some windows; the wall clock above keeps them)
        "train_img_per_s_median": (cfg.global_batch / statistics.median(rows[s]["sec_per_step"] for s in steps)
                                   if steps else None),
        "steps_done": previous,
    }


def evaluate_at(cfg: StudyConfig, plan: dict[str, Any], run_dir: Path, step: int, reference: Path,
                grid: Path | None, share: Any = None, desc: str = "sample",
                info: DistInfo | None = None) -> dict[str, Any]:
    """Sample (split over the ranks) and score (rank 0) an entry's EMA weights at ``step``; the numbers of one
    evaluation, on every rank."""
    info = info or one_process(cfg)
    tc = entry_train_config(cfg, plan, run_dir, step)
    model = load_entry_model(run_dir, step, info.device)
    blocks, seconds = sample_images(model, tc, cfg, info, share=share, desc=desc)

    def scored() -> dict[str, Any]:
        images = joined(blocks)
        tic = time.perf_counter()
        metrics = score(to_rgb_uint8(images), reference, cfg, info.device)
        result = {**{k: float(metrics[k]) for k in METRICS}, "step": step, "samples": len(images),
                  "sampler_steps": cfg.sampler_steps, "sample_seconds": seconds,
                  "sample_img_per_s": len(images) / seconds, "processes": info.world_size,
                  "score_seconds": time.perf_counter() - tic,
                  "train_pflop": plan["train_flops_per_image"] * cfg.global_batch * step / 1e15}
        if grid is not None:
            result["grid"] = save_family_grid(images, model.config.num_classes, grid)
        return result

    return on_main(info, scored)


def sharing_specs(cfg: StudyConfig) -> list[str]:
    """DDT's encoder-sharing settings: none, then uniform R and DP with the same K = ceil(N / R) per ratio."""
    specs = ["none"]
    for r in cfg.share_ratios:
        specs += [f"uniform:{r}", f"dp:{math.ceil(cfg.sampler_steps / r)}"]
    return list(dict.fromkeys(specs))


def _has_encoder_split(plan: dict[str, Any]) -> bool:
    family = model_config(plan["spec"]["model"])[0]
    return hasattr(family.model_cls, "encode") and hasattr(family.model_cls, "decode")


# ----------------------------------------------------------------------------
# The study.


def _units(cfg: StudyConfig, state: dict[str, Any]) -> list[tuple[str, int]]:
    """(entry, budget) pairs in budget-major order, so a partial study still compares every entry."""
    return [(name, step) for step in cfg.budgets for name in state["plan"]]


def _save(out: Path, state: dict[str, Any], info: DistInfo) -> None:
    if info.is_main:
        save_state(out, state)


def attempt(info: DistInfo, work: Callable[..., None], *args: Any) -> str | None:
    """Run one unit on every rank; the one-line error of the first rank that failed (None if none did), known to
    every rank. Exceptions are caught here, after the unit's collectives, so the ranks stay in step."""
    error = None
    try:
        work(*args)
    except Exception as err:  # noqa: BLE001 (an entry's failure must not lose the others)
        error = _error_line(info, err)
    if not any_rank(error is not None, info.device):
        return None
    lines = broadcast_object(gather_objects(error))
    return next(line for line in lines if line)


def _fail(state: dict[str, Any], out: Path, name: str, what: str, line: str, info: DistInfo) -> None:
    """Record an entry's failure (one line in study.json; the traceback went to stderr); the others go on."""
    line = f"{what}: {line}"
    result = _entry_result(state, name)
    result["status"], result["error"] = "failed", line
    result["errors"].append(line)
    _save(out, state, info)
    if info.is_main:
        tqdm.write(f"ditlab study: entry {name} failed ({line}); continuing with the others", file=sys.stderr)


def run_unit(cfg: StudyConfig, state: dict[str, Any], out: Path, name: str, step: int, reference: Path,
             info: DistInfo) -> None:
    """Train ``name`` to ``step`` and evaluate it there. An evaluation already in study.json is kept and needs no
    training (so a finished study committed without its checkpoints does not retrain)."""
    plan, result = state["plan"][name], _entry_result(state, name)
    run_dir = _run_dir(out, name)
    tic = time.perf_counter()
    if str(step) not in result["evals"]:
        train_to(cfg, plan, run_dir, step)
    if info.is_main:  # metrics.jsonl is rank 0's
        result.update(training_record(run_dir, cfg))
    result["status"] = "running"
    _add_time(state, "train_seconds", time.perf_counter() - tic)
    _save(out, state, info)
    if str(step) not in result["evals"]:
        final = step == cfg.budgets[-1]
        grid = out / "grids" / f"{run_dir.name}.png" if final else None
        tic = time.perf_counter()
        row = evaluate_at(cfg, plan, run_dir, step, reference, grid, desc=f"sample {name}", info=info)
        if grid is not None:
            row["grid"] = str(grid.relative_to(out))  # report.md sits in `out`
        result["evals"][str(step)] = row
        _add_time(state, "eval_seconds", time.perf_counter() - tic)
        _save(out, state, info)


def run_sharing(cfg: StudyConfig, state: dict[str, Any], out: Path, name: str, reference: Path,
                info: DistInfo) -> None:
    """FID and sampling speed of every encoder-sharing setting at the final budget (DDT)."""
    from .sampling import Guidance, parse_share_spec, sharing_schedule
    from .train.objective import sampling_config

    plan, result, step = state["plan"][name], _entry_result(state, name), cfg.budgets[-1]
    run_dir = _run_dir(out, name)
    for spec in sharing_specs(cfg):
        if spec in result["sharing"]:
            continue
        if spec == "none" and str(step) in result["evals"]:  # the final evaluation's numbers, re-timed here
            final = result["evals"][str(step)]  # so that every speed-up compares samplings of one phase
            model = load_entry_model(run_dir, step, info.device)
            _, seconds = sample_images(model, entry_train_config(cfg, plan, run_dir, step), cfg, info, desc="re-time")
            seconds = broadcast_object(seconds)  # rank 0's clock (it includes the gather), on every rank
            result["sharing"][spec] = {**final, "sharing": spec, "calibration_seconds": 0.0, "score_seconds": None,
                                       "encoder_calls": cfg.sampler_steps, "sample_seconds": seconds,
                                       "sample_img_per_s": final["samples"] / seconds, "processes": info.world_size}
            _save(out, state, info)
            continue
        share: Any = parse_share_spec(spec)
        calibration = 0.0
        if spec.startswith("dp"):  # solve DDT's DP once (8 calibration samples) on rank 0; every rank uses it
            def calibrate(share: Any = share) -> tuple[Any, float]:
                model = load_entry_model(run_dir, step, info.device)
                tic = time.perf_counter()
                tc = entry_train_config(cfg, plan, run_dir, step)
                schedule = sharing_schedule(model, sampling_config(tc), entry_sampler(tc, cfg), share,
                                            Guidance(cfg.cfg_scale))
                return schedule, time.perf_counter() - tic

            share, calibration = on_main(info, calibrate)
        tic = time.perf_counter()
        row = evaluate_at(cfg, plan, run_dir, step, reference, None, share=share, desc=f"sample {name} {spec}",
                          info=info)
        row.update(sharing=spec, calibration_seconds=calibration,
                   encoder_calls=_encoder_calls(spec, share, cfg.sampler_steps))
        if isinstance(share, list):  # the DP's solution: the evaluations at which the encoder runs
            row["encoder_steps"] = share
        result["sharing"][spec] = row
        _add_time(state, "sharing_seconds", time.perf_counter() - tic + calibration)
        _save(out, state, info)


def _encoder_calls(spec: str, share: Any, steps: int) -> int:
    if spec == "none":
        return steps
    if isinstance(share, list):
        return len(share)
    return len(range(0, steps, int(spec.split(":")[1])))


def _add_time(state: dict[str, Any], key: str, seconds: float) -> None:
    state["timing"][key] = state["timing"].get(key, 0.0) + seconds


def run_study(cfg: StudyConfig) -> Path:
    """Run (or continue) the study in ``cfg.out``; returns the report's path. Failed entries are retried.

    Every rank of a torchrun job calls this; a failure on any rank fails the entry on all of them (the others go
    on). A rank that dies inside an entry's DDP training stops the job once the process group gives up on it
    (resume with the same command)."""
    from .study_report import write_report

    info = init_distributed(cfg.device)
    out = Path(cfg.out)
    state = on_main(info, lambda: open_state(cfg))
    for name in state["plan"]:
        result = _entry_result(state, name)
        if result["status"] == "failed":
            result["status"] = "retrying"
    tic = time.perf_counter()
    reference = on_main(info, lambda: prepare_reference(cfg, out))
    _add_time(state, "reference_images_seconds", time.perf_counter() - tic)
    failed: set[str] = set()
    units = _units(cfg, state)
    bar = tqdm(units, desc="study", unit="unit", disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
    for name, step in bar:
        bar.set_postfix(entry=name, step=step)
        if name in failed:
            continue
        error = attempt(info, run_unit, cfg, state, out, name, step, reference, info)
        if error:
            failed.add(name)
            _fail(state, out, name, f"step {step}", error, info)
    bar.close()
    for name, plan in state["plan"].items():
        if name not in failed and _has_encoder_split(plan) and cfg.share_ratios:
            error = attempt(info, run_sharing, cfg, state, out, name, reference, info)
            if error:
                failed.add(name)
                _fail(state, out, name, "encoder sharing", error, info)
    for name in state["plan"]:
        if name not in failed:
            _entry_result(state, name).update(status="done", error=None)
    _save(out, state, info)
    return on_main(info, lambda: write_report(out, state))
