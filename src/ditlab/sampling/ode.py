"""Flow samplers: Euler and Heun ODE, Euler–Maruyama SDE, on DDT's time grid (t = 0 noise, t = 1 data).

As ``MCG-NJU/DDT`` ``stateful_flow_matching/sampling.py:EulerSampler``: the grid is
``linspace(0, 1 - last_step, num_steps)`` followed by 1, then shifted by ``t / (t + (1 - t) s)``; each step moves
``x += v dt``; the last step is always a plain ODE step. The SDE is the official ``sde_step_fn`` with the linear
scheduler: ``dx = (v + w ∇log p_t) dt + sqrt(2 w) dW`` with ``w = diffusion (1 - t)`` (DDT's ``w = sigma``), which
keeps the ODE's marginals. Guidance is the separate CFG piece; :func:`guidance_interval` restricts it to an
interval of t (DDT: 0.3 < t < 1).

A denoiser here is ``(x, t) -> v`` with t an (N,) float tensor in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .guidance import ScaleFn
from .noise import Generators, randn_like

FlowDenoiser = Callable[[Tensor, Tensor], Tensor]
# callback(step_index, x_after_step, t_next)
FlowCallback = Callable[[int, Tensor, float], None]
FLOW_METHODS = ("euler", "heun", "sde")


@dataclass
class FlowSamplerConfig:
    """Flow sampler settings (defaults: DDT-XL/2 at 256 px: Euler ODE, 250 steps, last step 0.04, no shift)."""

    method: str = "euler"  # "euler" / "heun" ODE, or "sde" (Euler–Maruyama)
    num_steps: int = 250  # steps from t = 0 (noise) to t = 1 (data)
    last_step: float | None = 0.04  # size of the final step before the shift; None = 1 / num_steps (a uniform grid)
    time_shift: float = 1.0  # s in t -> t / (t + (1 - t) s); > 1 spends more steps near the noise end
    diffusion: float = 1.0  # SDE only: w(t) = diffusion * (1 - t)

    def __post_init__(self) -> None:
        if self.method not in FLOW_METHODS:
            raise ValueError(f"method={self.method!r} is not one of {', '.join(FLOW_METHODS)}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps} must be a positive integer")
        if self.last_step is not None and not 0.0 < self.last_step <= 1.0:
            raise ValueError(f"last_step={self.last_step} must be in (0, 1] (or None for 1/num_steps)")
        if self.time_shift <= 0:
            raise ValueError(f"time_shift={self.time_shift} must be positive")
        if self.diffusion < 0:
            raise ValueError(f"diffusion={self.diffusion} must be >= 0")

    @property
    def num_evaluations(self) -> int:
        """Model evaluations of one sampling run (Heun: two per step)."""
        return 2 * self.num_steps if self.method == "heun" else self.num_steps


def shift_time(t: Tensor, shift: float) -> Tensor:
    """DDT's ``shift_respace_fn``: t / (t + (1 - t) s); identity for s = 1, fixes 0 and 1."""
    return t / (t + (1 - t) * shift)


def time_grid(num_steps: int, last_step: float | None = None, shift: float = 1.0) -> Tensor:
    """The (num_steps + 1,) float32 times t_0 = 0 < ... < t_N = 1 of DDT's sampler."""
    if last_step is None or num_steps == 1:
        last_step = 1.0 / num_steps
    grid = torch.cat([torch.linspace(0.0, 1 - last_step, num_steps), torch.tensor([1.0])])
    return shift_time(grid, shift)


def guidance_interval(scale: float, low: float = 0.3, high: float = 1.0) -> ScaleFn:
    """A CFG scale function: ``scale`` where low < t < high (strict, as DDT), else 1 (the conditional output)."""

    def scale_fn(t: Tensor) -> Tensor:
        inside = (t > low) & (t < high)
        return torch.where(inside, torch.full_like(t, float(scale)), torch.ones_like(t)).float()

    return scale_fn


def _batch_time(t: Tensor, x: Tensor) -> Tensor:
    return t.to(x.device).expand(x.shape[0]).clone()


# ----------------------------------------------------------------------------
# Samplers (pure functions over a denoiser and a grid).


@torch.no_grad()
def sample_euler(denoiser: FlowDenoiser, noise: Tensor, grid: Tensor, callback: FlowCallback | None = None) -> Tensor:
    """Euler ODE: x_{i+1} = x_i + v(x_i, t_i) (t_{i+1} - t_i)."""
    x = noise
    for i in range(len(grid) - 1):
        x = x + denoiser(x, _batch_time(grid[i], x)) * (grid[i + 1] - grid[i])
        if callback is not None:
            callback(i, x, float(grid[i + 1]))
    return x


@torch.no_grad()
def sample_heun(denoiser: FlowDenoiser, noise: Tensor, grid: Tensor, callback: FlowCallback | None = None) -> Tensor:
    """Heun's method (2nd order): Euler predictor, then the mean of the slopes at both ends (2 evaluations/step)."""
    x = noise
    for i in range(len(grid) - 1):
        dt = grid[i + 1] - grid[i]
        v0 = denoiser(x, _batch_time(grid[i], x))
        x_pred = x + v0 * dt
        v1 = denoiser(x_pred, _batch_time(grid[i + 1], x))
        x = x + 0.5 * (v0 + v1) * dt
        if callback is not None:
            callback(i, x, float(grid[i + 1]))
    return x


@torch.no_grad()
def sample_euler_maruyama(denoiser: FlowDenoiser, noise: Tensor, grid: Tensor, diffusion: float = 1.0,
                          generator: Generators = None, callback: FlowCallback | None = None) -> Tensor:
    """Euler–Maruyama on dx = (v + w ∇log p_t) dt + sqrt(2 w dt) z with w = diffusion (1 - t); last step plain ODE.

    With ∇log p_t = (t v - x) / (1 - t) (linear path), ``w ∇log p_t = diffusion (t v - x)`` has no singularity.
    """
    x = noise
    last = len(grid) - 2
    for i in range(len(grid) - 1):
        t, dt = grid[i], grid[i + 1] - grid[i]
        v = denoiser(x, _batch_time(t, x))
        if i == last:
            x = x + v * dt
        else:
            w = diffusion * (1 - t)
            drift = v + diffusion * (t * v - x)
            x = x + drift * dt + torch.sqrt(2 * w * dt) * randn_like(x, generator)
        if callback is not None:
            callback(i, x, float(grid[i + 1]))
    return x


def sample_flow(denoiser: FlowDenoiser, noise: Tensor, config: FlowSamplerConfig, generator: Generators = None,
                callback: FlowCallback | None = None) -> Tensor:
    """Run the sampler ``config.method`` names on DDT's grid from ``noise`` (t = 0) to data (t = 1)."""
    grid = time_grid(config.num_steps, config.last_step, config.time_shift).to(noise.device)
    if config.method == "euler":
        return sample_euler(denoiser, noise, grid, callback)
    if config.method == "heun":
        return sample_heun(denoiser, noise, grid, callback)
    return sample_euler_maruyama(denoiser, noise, grid, config.diffusion, generator, callback)
