"""Noise schedules and timestep respacing, matching the official DiT / ADM diffusion code.

* ``beta_schedule``: the named β schedules of ``gaussian_diffusion.get_named_beta_schedule``.
* ``space_timesteps``: which original timesteps a respaced process keeps (``respace.space_timesteps``).
"""

from __future__ import annotations

import math

import numpy as np

BETA_SCHEDULES = ("linear", "cosine", "squaredcos_cap_v2")  # the last is the official alias of "cosine"


def _check_num_timesteps(num_timesteps: int) -> None:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")


def linear_betas(num_timesteps: int) -> np.ndarray:
    """Ho et al. linear β from 1e-4 to 0.02, with both ends scaled by 1000/T so any T gives the same curve."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_alpha_bar(s: float) -> float:
    """Nichol & Dhariwal (2021) eq. 17: ᾱ(s) = cos²((s + 0.008) / 1.008 · π/2) for s in [0, 1]."""
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta); the cap avoids the singularity at s = 1."""
    # Scalar math.cos keeps the values bit-identical to the official loop.
    betas = [
        min(1 - cosine_alpha_bar((i + 1) / num_timesteps) / cosine_alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.array(betas, dtype=np.float64)


def beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """The float64 β_1..β_T of a named schedule: "linear" or "cosine" (alias "squaredcos_cap_v2")."""
    _check_num_timesteps(num_timesteps)
    if name == "linear":
        return linear_betas(num_timesteps)
    if name in ("cosine", "squaredcos_cap_v2"):
        return cosine_betas(num_timesteps)
    raise ValueError(f"unknown beta schedule {name!r}; allowed: {', '.join(BETA_SCHEDULES)}")


def _ddim_stride_steps(num_timesteps: int, spec: str) -> list[int]:
    """ "ddimN": the smallest integer stride whose range(0, T, stride) has exactly N steps (DDIM paper)."""
    count_text = spec[len("ddim") :]
    if not count_text.isdigit():
        raise ValueError(f"bad timestep respacing {spec!r}; expected 'ddimN' with N a positive integer")
    desired = int(count_text)
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
            return list(range(0, num_timesteps, stride))
    raise ValueError(
        f"cannot take exactly {desired} steps of {num_timesteps} with an integer stride ({spec!r})"
    )


def _parse_section_counts(spec: str) -> list[int]:
    try:
        return [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(f"bad timestep respacing {spec!r}; expected 'N', 'N1,N2,...' or 'ddimN'") from None


def _section_steps(start: int, size: int, count: int) -> list[int]:
    """``count`` steps spread over [start, start + size) with a fractional stride, rounded (Python round)."""
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    steps, position = [], 0.0
    for _ in range(count):
        steps.append(start + round(position))
        position += stride
    return steps


def space_timesteps(num_timesteps: int, section_counts: str | list[int]) -> list[int]:
    """Sorted original timesteps kept by a respaced process (official ``respace.space_timesteps``).

    The T steps are cut into len(section_counts) near-equal sections (the first T mod k one step longer)
    and section i keeps section_counts[i] evenly strided steps. "ddimN" instead takes the exact integer
    stride of the DDIM paper. Examples: "250", "10,15,20", "ddim50".
    """
    _check_num_timesteps(num_timesteps)
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            return _ddim_stride_steps(num_timesteps, section_counts)
        section_counts = _parse_section_counts(section_counts)
    counts = list(section_counts)
    if not counts or any(c < 0 for c in counts):
        raise ValueError(
            f"section counts must be a non-empty list of non-negative ints, got {section_counts!r}"
        )
    size_per, extra = divmod(num_timesteps, len(counts))
    steps, start = [], 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"cannot divide a section of {size} steps into {count} (section counts {counts})"
            )
        steps += _section_steps(start, size, count)
        start += size
    return sorted(set(steps))
