"""Flow samplers: Euler and Heun ODE, Euler–Maruyama SDE, on DDT's time grid (t = 0 noise, t = 1 data).

Pure functions of a denoiser ``(x, t) -> v`` (t an (N,) float tensor in [0, 1]) and a time grid, as k-diffusion's
``sample_euler(model, x, sigmas)``. As ``MCG-NJU/DDT`` ``stateful_flow_matching/sampling.py:EulerSampler``: the
grid is ``linspace(0, 1 - last_step, num_steps)`` followed by 1, then shifted by ``t / (t + (1 - t) s)``; each
step moves ``x += v dt``; the last step is always a plain ODE step. The SDE is the official ``sde_step_fn`` with
the linear scheduler: ``dx = (v + w ∇log p_t) dt + sqrt(2 w) dW`` with ``w = diffusion (1 - t)`` (DDT's
``w = sigma``), which keeps the ODE's marginals. Heun is ``flow_matching/sampling.py:HeunSampler``. Guidance is
the separate CFG piece; :func:`guidance_interval` restricts it to an interval of t (DDT: 0.3 < t < 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .guidance import ScaleFn
from .noise import Generators, randn_like

FlowDenoiser = Callable[[Tensor, Tensor], Tensor]
# callback(step_index, x_after_step, t_next)
FlowCallback = Callable[[int, Tensor, float], None]


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


def _steps(grid: Tensor, progress: bool) -> Iterable[int]:
    """Step indices 0..N-1, wrapped in a tqdm bar if asked."""
    indices = range(len(grid) - 1)
    if not progress:
        return indices
    from tqdm.auto import tqdm  # imported lazily: only needed for the bar

    return tqdm(indices)


# ----------------------------------------------------------------------------
# Samplers (pure functions over a denoiser and a grid).


@torch.no_grad()
def sample_euler(denoiser: FlowDenoiser, noise: Tensor, grid: Tensor, callback: FlowCallback | None = None,
                 progress: bool = False) -> Tensor:
    """Euler ODE: x_{i+1} = x_i + v(x_i, t_i) (t_{i+1} - t_i)."""
    x = noise
    for i in _steps(grid, progress):
        x = x + denoiser(x, _batch_time(grid[i], x)) * (grid[i + 1] - grid[i])
        if callback is not None:
            callback(i, x, float(grid[i + 1]))
    return x


@torch.no_grad()
def sample_heun(denoiser: FlowDenoiser, noise: Tensor, grid: Tensor, exact: bool = False,
                callback: FlowCallback | None = None, progress: bool = False) -> Tensor:
    """Heun's method as DDT's ``HeunSampler``: Euler predictor, then the mean of the slopes at both ends.

    The last step is a plain Euler step (the model is never evaluated at t = 1), as DDT and EDM's sampler do.
    ``exact=False`` (DDT's default ``exact_henu=False``) reuses the corrector's slope, taken at the predicted
    point, as the next predictor's slope: one model call per step (N for N steps). ``exact=True`` evaluates the
    predictor afresh: 2N - 1 calls. Both converge at second order (the reused slope is off by O(dt²)).
    """
    x, v_next = noise, None
    last = len(grid) - 2
    for i in _steps(grid, progress):
        dt = grid[i + 1] - grid[i]
        v = denoiser(x, _batch_time(grid[i], x)) if exact or v_next is None else v_next
        x_pred = x + v * dt
        if i < last:
            v_next = denoiser(x_pred, _batch_time(grid[i + 1], x))
            x = x + (v + v_next) / 2 * dt
        else:
            x = x_pred
        if callback is not None:
            callback(i, x, float(grid[i + 1]))
    return x


def heun_evaluations(num_steps: int, exact: bool = False) -> int:
    """Model calls of :func:`sample_heun` over ``num_steps`` steps: N (DDT's default) or 2N - 1 (exact)."""
    return 2 * num_steps - 1 if exact else num_steps


@torch.no_grad()
def sample_euler_maruyama(denoiser: FlowDenoiser, noise: Tensor, grid: Tensor, diffusion: float = 1.0,
                          generator: Generators = None, callback: FlowCallback | None = None,
                          progress: bool = False) -> Tensor:
    """Euler–Maruyama on dx = (v + w ∇log p_t) dt + sqrt(2 w dt) z with w = diffusion (1 - t); last step plain ODE.

    With ∇log p_t = (t v - x) / (1 - t) (linear path), ``w ∇log p_t = diffusion (t v - x)`` has no singularity.
    """
    x = noise
    last = len(grid) - 2
    for i in _steps(grid, progress):
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
