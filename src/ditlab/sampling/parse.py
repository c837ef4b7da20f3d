"""The command line's sampler strings, read at the edge into sampler specs (``samplers.py``).

The same string can mean different samplers for the two objective families: "250" is DiT's 250-step DDPM for a
Gaussian diffusion model and a 250-step Euler ODE for a flow model, and "ddim50" (the training loop's default
sample grid) is the deterministic Euler ODE for a flow model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..objectives import DiffusionConfig
from ..objectives.flow import FlowConfig
from .samplers import DDIM, DDPM, DDTEuler, Euler, EulerMaruyama, Heun, Sampler

# name -> spec from the step count and the Gaussian samplers' options (eta, clip_denoised), per objective family.
GAUSSIAN_SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "ddpm": lambda n, eta, clip: DDPM(str(n), clip_denoised=clip),
    "ddim": lambda n, eta, clip: DDIM(n, eta, clip_denoised=clip),
}
FLOW_SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "euler": lambda n, *_: Euler(n),
    "ddim": lambda n, *_: Euler(n),  # the deterministic sampler of a flow model
    "heun": lambda n, *_: Heun(n),  # DDT's default: one model call per step
    "heun-exact": lambda n, *_: Heun(n, exact=True),  # DDT's exact_henu=True: 2N - 1 calls
    "sde": lambda n, *_: EulerMaruyama(n),
    "ddt": lambda n, *_: DDTEuler(n),  # DDT's own sampler for its model (no guidance at t = 0)
}


def parse_sampler(text: str, objective: Any, eta: float = 0.0, clip_denoised: bool = False) -> Sampler:
    """``"250"``, ``"ddim50"``, ``"euler50"``, ``"heun12"``, ... -> a sampler spec for ``objective``'s family.

    Gaussian diffusion: "N" or "ddpmN" (DDPM; "N" may be sections "10,20,30"), "ddimN" (DDIM with ``eta``).
    Flow matching: "N" or "eulerN" (Euler ODE), "heunN" / "heun-exactN" (DDT's Heun, 1 / 2 calls per step),
    "sdeN" (Euler–Maruyama), "ddtN" (DDT's own sampler: Euler with no guidance at t = 0); "ddimN" = "eulerN".
    ``eta`` and ``clip_denoised`` (clamp x0 to [-1, 1]) apply to the Gaussian samplers and are ignored for flow.
    """
    flow = isinstance(objective, FlowConfig)
    if not flow and not isinstance(objective, DiffusionConfig):
        raise ValueError(f"no samplers for objective {type(objective).__name__}; expected DiffusionConfig or "
                         "FlowConfig")
    table = FLOW_SAMPLERS if flow else GAUSSIAN_SAMPLERS
    spec = text.strip().lower()
    match = re.fullmatch(r"([a-z-]*)(\d+)", spec)
    if not flow and re.fullmatch(r"\d+(,\d+)*", spec):
        return DDPM(spec, clip_denoised=clip_denoised)  # guided-diffusion's respacing sections
    if match and (match[1] in table or match[1] == "") and int(match[2]) >= 1:
        return table[match[1] or ("euler" if flow else "ddpm")](int(match[2]), eta, clip_denoised)
    names = ", ".join(f"{name}N" for name in table)
    family = "flow-matching" if flow else "Gaussian diffusion"
    raise ValueError(f"bad sampler {text!r} for a {family} model; expected N, {names} (N >= 1)")
