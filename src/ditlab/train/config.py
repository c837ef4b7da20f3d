"""The training run's configuration: one dataclass, saved as ``config.json`` in the run folder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.layers import ATTENTION_BACKENDS
from ..objectives import DiffusionConfig
from ..objectives.flow import FlowConfig
from ..objectives.repa import REPAConfig

PRECISIONS = ("fp32", "bf16")
PARALLEL_MODES = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    """Everything a training run needs; ``ditlab train --help`` lists the same fields as flags."""

    run_dir: str = "runs/train"  # folder for config.json, metrics.jsonl, tb/, checkpoints/, samples/
    model: str = "DiT-S/2"  # preset or family name from the registry
    model_args: dict[str, Any] = field(default_factory=dict)  # official-name overrides, e.g. {"depth": 6}
    data: str = "digits"  # dataset spec: "digits" (embedded)
    image_size: int = 16  # digits: side the 8x8 images are upsampled to
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
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        if isinstance(self.diffusion, dict):
            self.diffusion = DiffusionConfig(**self.diffusion)
        if isinstance(self.flow, dict):
            self.flow = FlowConfig(**self.flow)
        if isinstance(self.repa, dict):
            self.repa = REPAConfig(**self.repa)
        if self.repa.enabled and self.objective != "flow":
            raise ValueError(f"REPA is on but objective={self.objective!r}; REPA needs objective='flow'")
        self.betas = tuple(self.betas)  # JSON round-trips tuples as lists
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention={self.attention!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel={self.parallel!r} is not one of {', '.join(PARALLEL_MODES)}")
        if self.fsdp_mixed_precision and (self.parallel, self.precision) != ("fsdp", "bf16"):
            raise ValueError(f"fsdp_mixed_precision=True needs parallel='fsdp' and precision='bf16' "
                             f"(got parallel={self.parallel!r}, precision={self.precision!r})")
        for name in ("steps", "global_batch", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be positive")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1)")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm} must be positive (or None for no clipping)")

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
