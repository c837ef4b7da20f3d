"""Sampler specs: one small frozen dataclass per sampler, saying what to run; ``spec.sample`` runs it.

A spec belongs to a family that fixes the conventions the rest of the pipeline needs, so that
:func:`~ditlab.sampling.generate.generate_latents` has no switch:

* which objective it samples (``objective_type``: :class:`DiffusionConfig` or :class:`FlowConfig`);
* how a model is called (``model_fn``): Gaussian samplers pass original timesteps and take the raw output;
  flow samplers pass ``t * time_scale`` and take the velocity (the first element of DDT's ``(v, s)``);
* how guidance schedules read t (``guidance_scale``): MDT's power-cosine over the timesteps, DDT's interval of t;
* how many model evaluations a run makes (``evaluations``: encoder sharing schedules count these);
* ``sample(denoiser, noise, objective, generator, progress)``: one call to a pure sampler function of a
  denoiser and a time grid (``ddpm.py``, ``ddim.py``, ``ode.py``).

To add a sampler: write the pure function, then a dataclass subclassing :class:`GaussianSampler` or
:class:`FlowSampler` whose ``sample`` calls it (see ``docs/sampling.md``).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..objectives import DiffusionConfig, GaussianDiffusion
from ..objectives.flow import FlowConfig, velocity_of
from .ddim import sample_ddim
from .ddpm import Denoiser, sample_ddpm
from .guidance import Guidance, ScaleFn, power_cosine_scale
from .noise import Generators
from .ode import guidance_interval, heun_evaluations, sample_euler, sample_euler_maruyama, sample_heun, time_grid

# model(x, t, y) -> output, as a backbone (or a SharedEncoder around one) is called.
ModelFn = Callable[[Tensor, Tensor, Tensor], Any]


class Sampler(ABC):
    """What every sampler spec offers (see the module docstring)."""

    objective_type: ClassVar[type]
    family: ClassVar[str]

    def check(self, objective: Any) -> None:
        """A one-line error when the model was trained under another family's objective."""
        if not isinstance(objective, self.objective_type):
            raise ValueError(f"{type(self).__name__} samples {self.family} models; this model was trained under "
                             f"{type(objective).__name__}")

    @abstractmethod
    def evaluations(self, objective: Any) -> int:
        """Model evaluations of one run."""

    @abstractmethod
    def model_fn(self, model: ModelFn, objective: Any) -> ModelFn:
        """``model`` as this family's samplers call it."""

    @abstractmethod
    def guidance_scale(self, guidance: Guidance, objective: Any) -> float | ScaleFn:
        """The CFG scale, a number or a schedule of this family's t."""

    @abstractmethod
    def sample(self, denoiser: Denoiser, noise: Tensor, objective: Any, generator: Generators = None,
               progress: bool = False) -> Tensor:
        """Latents from ``noise`` by this sampler; ``generator`` draws any later noise."""


# ----------------------------------------------------------------------------
# Gaussian diffusion (DiT, MDT): the process runs backwards over (respaced) timesteps.


class GaussianSampler(Sampler):
    """Base of the samplers of a :class:`GaussianDiffusion`; subclasses name its ``respacing``."""

    objective_type = DiffusionConfig
    family = "Gaussian diffusion"

    @property
    @abstractmethod
    def respacing(self) -> str:
        """The process's ``timestep_respacing`` (guided-diffusion's strings)."""

    def process(self, objective: DiffusionConfig) -> GaussianDiffusion:
        """The trained process respaced to this sampler's steps (its time grid)."""
        return GaussianDiffusion(dataclasses.replace(objective, timestep_respacing=self.respacing))

    def evaluations(self, objective: DiffusionConfig) -> int:
        return self.process(objective).num_timesteps

    def model_fn(self, model: ModelFn, objective: DiffusionConfig) -> ModelFn:
        # Output cast to x's dtype: under bf16 autocast the sampler state stays float32.
        return lambda x, t, y: model(x, t, y).to(x.dtype)

    def guidance_scale(self, guidance: Guidance, objective: DiffusionConfig) -> float | ScaleFn:
        if guidance.interval is not None:
            raise ValueError(f"a guidance interval reads flow time t in [0, 1]; {type(self).__name__} samples "
                             "Gaussian diffusion (use guidance power, MDT's schedule, instead)")
        if guidance.power is None:
            return guidance.scale
        return power_cosine_scale(guidance.scale, guidance.power, objective.num_timesteps)


@dataclass(frozen=True)
class DDPM(GaussianSampler):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2), as guided-diffusion's ``p_sample_loop``."""

    steps: str = "250"  # respacing: "250" (DiT's FID setting), "1000", or sections "10,20,30"
    clip_denoised: bool = False  # clamp each predicted x0 to [-1, 1] (ADM for pixel models; DiT's latents: off)

    def __post_init__(self) -> None:
        counts = str(self.steps).split(",")
        if not all(c.strip().isdigit() for c in counts) or sum(int(c) for c in counts) < 1:
            raise ValueError(f"DDPM steps={self.steps!r} must be a step count or sections like '10,20,30'")

    @property
    def respacing(self) -> str:
        return str(self.steps)

    def sample(self, denoiser: Denoiser, noise: Tensor, objective: DiffusionConfig, generator: Generators = None,
               progress: bool = False) -> Tensor:
        return sample_ddpm(self.process(objective), denoiser, noise, clip_denoised=self.clip_denoised,
                           generator=generator, progress=progress)


@dataclass(frozen=True)
class DDIM(GaussianSampler):
    """DDIM (Song et al. 2021, eq. 12) over ``steps`` strided timesteps (guided-diffusion's "ddimN")."""

    steps: int = 50
    eta: float = 0.0  # 0 = deterministic; 1 = DDPM-like noise
    clip_denoised: bool = False  # clamp each predicted x0 to [-1, 1] (ADM for pixel models; DiT's latents: off)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"DDIM steps={self.steps} must be >= 1")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta!r}")

    @property
    def respacing(self) -> str:
        return f"ddim{self.steps}"

    def sample(self, denoiser: Denoiser, noise: Tensor, objective: DiffusionConfig, generator: Generators = None,
               progress: bool = False) -> Tensor:
        return sample_ddim(self.process(objective), denoiser, noise, eta=self.eta, clip_denoised=self.clip_denoised,
                           generator=generator, progress=progress)


# ----------------------------------------------------------------------------
# Flow matching (DDT, SiT): t = 0 noise -> t = 1 data on DDT's grid.


@dataclass(frozen=True)
class FlowSampler(Sampler):
    """Base of the flow samplers: DDT's time grid (defaults: DDT-XL/2 at 256 px, 250 steps, no shift)."""

    objective_type: ClassVar[type] = FlowConfig
    family: ClassVar[str] = "flow-matching"
    default_interval: ClassVar[tuple[float, float] | None] = None  # the guidance interval when Guidance has none

    steps: int = 250  # steps from t = 0 (noise) to t = 1 (data)
    last_step: float | None = 0.04  # size of the final step before the shift; None = 1 / steps (a uniform grid)
    shift: float = 1.0  # s in t -> t / (t + (1 - t) s); > 1 spends more steps near the noise end

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be a positive integer")
        if self.last_step is not None and not 0.0 < self.last_step <= 1.0:
            raise ValueError(f"last_step={self.last_step} must be in (0, 1] (or None for 1/steps)")
        if self.shift <= 0:
            raise ValueError(f"shift={self.shift} must be positive")

    def grid(self) -> Tensor:
        """The (steps + 1,) times 0 = t_0 < ... < t_N = 1."""
        return time_grid(self.steps, self.last_step, self.shift)

    def evaluations(self, objective: FlowConfig) -> int:
        return self.steps

    def model_fn(self, model: ModelFn, objective: FlowConfig) -> ModelFn:
        # The model sees t * time_scale; its velocity is cast to x's dtype (bf16 autocast keeps x float32).
        return lambda x, t, y: velocity_of(model(x, t * objective.time_scale, y)).to(x.dtype)

    def guidance_scale(self, guidance: Guidance, objective: FlowConfig) -> float | ScaleFn:
        if guidance.power is not None:
            raise ValueError(f"guidance power (MDT's power-cosine schedule) reads Gaussian timesteps; "
                             f"{type(self).__name__} samples flow matching (use a guidance interval instead)")
        interval = self.default_interval if guidance.interval is None else guidance.interval
        if interval is None or guidance.scale == 1.0:  # scale 1: one conditional pass, whatever the interval
            return guidance.scale
        return guidance_interval(guidance.scale, *interval)


@dataclass(frozen=True)
class Euler(FlowSampler):
    """Euler ODE, x += v dt (DDT's ``ode_step_fn``)."""

    def sample(self, denoiser: Denoiser, noise: Tensor, objective: FlowConfig, generator: Generators = None,
               progress: bool = False) -> Tensor:
        return sample_euler(denoiser, noise, self.grid().to(noise.device), progress=progress)


@dataclass(frozen=True)
class Heun(FlowSampler):
    """DDT's ``HeunSampler`` (ODE): Euler at the last step; one call per step unless ``exact``."""

    exact: bool = False  # DDT's exact_henu: False reuses the corrector's slope (N calls), True: 2N - 1 calls

    def evaluations(self, objective: FlowConfig) -> int:
        return heun_evaluations(self.steps, self.exact)

    def sample(self, denoiser: Denoiser, noise: Tensor, objective: FlowConfig, generator: Generators = None,
               progress: bool = False) -> Tensor:
        return sample_heun(denoiser, noise, self.grid().to(noise.device), exact=self.exact, progress=progress)


@dataclass(frozen=True)
class EulerMaruyama(FlowSampler):
    """Euler–Maruyama SDE with w(t) = diffusion (1 - t) (DDT's ``sde_step_fn``); the last step is an ODE step."""

    diffusion: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.diffusion < 0:
            raise ValueError(f"diffusion={self.diffusion} must be >= 0")

    def sample(self, denoiser: Denoiser, noise: Tensor, objective: FlowConfig, generator: Generators = None,
               progress: bool = False) -> Tensor:
        return sample_euler_maruyama(denoiser, noise, self.grid().to(noise.device), self.diffusion, generator,
                                     progress=progress)


@dataclass(frozen=True)
class DDTEuler(Euler):
    """DDT's own sampler for its model, exactly: ``stateful_flow_matching``'s Euler ODE (and, with DP encoder
    sharing, ``sharing_sampling.py``'s, which is always an ODE).

    It differs from :class:`Euler` only in guidance: DDT guides only inside an open interval of t, (0, 1) unless
    given, so never at t = 0 (the first step), where :class:`Euler` without an interval guides every step.
    """

    default_interval: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
