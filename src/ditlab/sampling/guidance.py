"""Classifier-free guidance (Ho & Salimans 2022) as a model-agnostic wrapper producing a ``Denoiser``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .ddpm import Denoiser

# scale_fn(t) -> (N,) guidance scales, t on the original timestep scale (e.g. MDT's power-cosine schedule).
ScaleFn = Callable[[Tensor], Tensor]


def power_cosine_scale(scale: float = 3.8, power: float = 4.0, num_timesteps: int = 1000) -> ScaleFn:
    """MDT's power-cosine schedule ``w_t = (w − 1)·(1 − cos(π (1 − t/T)^pow))/2 + 1`` as a ``scale_fn(t)``.

    w_t ≈ 1 at t ≈ T (pure noise) and w at t = 0; a large ``power`` keeps w_t near 1 for longer. Defaults are
    the official FID setting (``image_sample.py``: cfg_scale 3.8, scale_pow 4, T = 1000). Evaluated in float32
    in the official order of operations, so guided outputs match ``forward_with_cfg``.
    """
    if num_timesteps < 1 or power <= 0:
        raise ValueError(f"power_cosine_scale needs num_timesteps >= 1 and power > 0, got {num_timesteps}, {power}")

    def scale_fn(t: Tensor) -> Tensor:
        step = (1 - torch.cos(((1 - t / num_timesteps) ** power) * math.pi)) / 2
        return (scale - 1) * step + 1

    return scale_fn


@dataclass
class CFGConfig:
    """Classifier-free guidance settings.

    ``guided_channels``: which leading output channels are guided. None guides the whole prediction half
    (the first C_in channels, the standard method). The official DiT (and MDT, SiT) ``forward_with_cfg``
    guides only channels [:3] "for exact reproducibility"; channel 3 of the 4 latent channels and the
    learned-σ half are then taken from the conditional pass. Set 3 to reproduce those papers' samples and
    FIDs; the difference is small but real.
    """

    scale: float | ScaleFn = 1.0  # w in uncond + w·(cond − uncond); a callable makes it depend on t
    null_class: int = 1000  # the label of the unconditional ("dropped") class, = num_classes
    guided_channels: int | None = None  # None = all prediction channels; 3 = official DiT/MDT legacy
    joint_batch: bool = True  # one forward on [cond; uncond] (2N); False = two forwards on N (half the activations)

    def __post_init__(self) -> None:
        if not callable(self.scale) and not isinstance(self.scale, (int, float)):
            raise ValueError(f"scale must be a number or a callable t -> (N,) scales, got {self.scale!r}")
        if self.guided_channels is not None and self.guided_channels < 1:
            raise ValueError(f"guided_channels must be None or >= 1, got {self.guided_channels!r}")
        if self.null_class < 0:
            raise ValueError(f"null_class must be >= 0, got {self.null_class!r}")

    @property
    def is_unguided(self) -> bool:
        """A constant scale of 1 gives the conditional prediction: no unconditional pass is needed."""
        return not callable(self.scale) and float(self.scale) == 1.0


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance as a user asks for it; the sampler turns it into a :class:`CFGConfig`.

    The schedules read t in their sampler family's convention, so each belongs to one family: ``power`` (MDT's
    power-cosine schedule over the Gaussian process's timesteps) and ``interval`` (DDT: guide only while
    low < t < high, t in [0, 1] of a flow sampler). Outside the interval the conditional output is used (both
    passes still run, as DDT). ``interval=None`` guides at every step, t = 0 included, as SiT and DDT's plain
    flow samplers (``flow_matching/sampling.py``) do; DDT's samplers for its own model use an open interval
    whose default (0, 1) excludes t = 0: :class:`~ditlab.sampling.samplers.DDTEuler` applies that default.
    """

    scale: float = 1.0  # w in uncond + w·(cond − uncond); 1 = no guidance (one conditional pass)
    guided_channels: int | None = None  # None = all prediction channels; 3 = official DiT/MDT legacy
    power: float | None = None  # Gaussian samplers: MDT's power-cosine schedule with this exponent (MDT FID: 4)
    interval: tuple[float, float] | None = None  # flow samplers: guide only for low < t < high (DDT: 0.3, 1)
    joint_batch: bool = True  # one forward on [cond; uncond] (2N); False = two forwards on N (half the activations)

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
            raise ValueError(f"guidance scale must be a number, got {self.scale!r}")
        if self.guided_channels is not None and self.guided_channels < 1:
            raise ValueError(f"guided_channels must be None or >= 1, got {self.guided_channels!r}")
        if self.power is not None and self.power <= 0:
            raise ValueError(f"guidance power must be > 0 (or None for a constant scale), got {self.power!r}")
        if self.interval is not None and not (len(self.interval) == 2 and self.interval[0] < self.interval[1]):
            raise ValueError(f"guidance interval must be (low, high) with low < high, got {self.interval!r}")

    def config(self, scale: float | ScaleFn, null_class: int) -> CFGConfig:
        """The CFG wrapper's settings with ``scale`` (a number or a schedule t -> (N,) scales)."""
        return CFGConfig(scale=scale, null_class=null_class, guided_channels=self.guided_channels,
                         joint_batch=self.joint_batch)


def _scale_tensor(scale: float | ScaleFn, t: Tensor, like: Tensor) -> Tensor | float:
    """The scale as a float, or as (N, 1, ..., 1) from scale_fn(t) to broadcast per sample."""
    if not callable(scale):
        return float(scale)
    values = torch.as_tensor(scale(t), dtype=like.dtype, device=like.device)
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def guide(cond: Tensor, uncond: Tensor, scale: Tensor | float, guided_channels: int) -> Tensor:
    """uncond + scale·(cond − uncond) on the first ``guided_channels`` channels; the rest from cond."""
    k = guided_channels
    guided = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
    return torch.cat([guided, cond[:, k:]], dim=1)


def classifier_free_guidance(
    model: Callable[[Tensor, Tensor, Tensor], Tensor], y: Tensor, cfg: CFGConfig
) -> Denoiser:
    """A denoiser (x, t) -> guided output of N samples, calling ``model(x, t, y)``.

    One batched forward on [x, x], [t, t], [y, null] gives the conditional and unconditional outputs; this
    equals the first half of the official ``forward_with_cfg``. ``cfg.joint_batch=False`` runs two forwards
    on N instead: the same outputs (up to kernel choice), half the activation memory, usually slower. The
    prediction occupies the first x.shape[1] output channels (any further channels are σ and pass through from
    the conditional half). A constant scale of 1 runs a single plain conditional forward.
    """
    null_labels = torch.full_like(y, cfg.null_class)

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        if cfg.is_unguided:
            return model(x, t, y)
        if cfg.joint_batch:
            cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null_labels])).chunk(2, dim=0)
        else:
            cond, uncond = model(x, t, y), model(x, t, null_labels)
        channels = x.shape[1] if cfg.guided_channels is None else cfg.guided_channels
        return guide(cond, uncond, _scale_tensor(cfg.scale, t, cond), channels)

    return denoise
