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

# name -> spec from (step count, eta), per objective family.
GAUSSIAN_SAMPLERS: dict[str, Callable[[int, float], Sampler]] = {
    "ddpm": lambda n, eta: DDPM(str(n)),
    "ddim": lambda n, eta: DDIM(n, eta),
}
FLOW_SAMPLERS: dict[str, Callable[[int, float], Sampler]] = {
    "euler": lambda n, eta: Euler(n),
    "ddim": lambda n, eta: Euler(n),  # the deterministic sampler of a flow model
    "heun": lambda n, eta: Heun(n),  # DDT's default: one model call per step
    "heun-exact": lambda n, eta: Heun(n, exact=True),  # DDT's exact_henu=True: 2N - 1 calls
    "sde": lambda n, eta: EulerMaruyama(n),
    "ddt": lambda n, eta: DDTEuler(n),  # DDT's own sampler for its model (no guidance at t = 0)
}


def parse_sampler(text: str, objective: Any, eta: float = 0.0) -> Sampler:
    """``"250"``, ``"ddim50"``, ``"euler50"``, ``"heun12"``, ... -> a sampler spec for ``objective``'s family.

    Gaussian diffusion: "N" or "ddpmN" (DDPM; "N" may be sections "10,20,30"), "ddimN" (DDIM with ``eta``).
    Flow matching: "N" or "eulerN" (Euler ODE), "heunN" / "heun-exactN" (DDT's Heun, 1 / 2 calls per step),
    "sdeN" (Euler–Maruyama), "ddtN" (DDT's own sampler: Euler with no guidance at t = 0); "ddimN" = "eulerN".
    """
    flow = isinstance(objective, FlowConfig)
    if not flow and not isinstance(objective, DiffusionConfig):
        raise ValueError(f"no samplers for objective {type(objective).__name__}; expected DiffusionConfig or "
                         "FlowConfig")
    table = FLOW_SAMPLERS if flow else GAUSSIAN_SAMPLERS
    spec = text.strip().lower()
    match = re.fullmatch(r"([a-z-]*)(\d+)", spec)
    if not flow and re.fullmatch(r"\d+(,\d+)*", spec):
        return DDPM(spec)  # guided-diffusion's respacing sections
    if match and (match[1] in table or match[1] == "") and int(match[2]) >= 1:
        return table[match[1] or ("euler" if flow else "ddpm")](int(match[2]), eta)
    names = ", ".join(f"{name}N" for name in table)
    family = "flow-matching" if flow else "Gaussian diffusion"
    raise ValueError(f"bad sampler {text!r} for a {family} model; expected N, {names} (N >= 1)")
