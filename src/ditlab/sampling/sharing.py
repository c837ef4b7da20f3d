"""Encoder sharing at inference (DDT section 3.3): reuse the encoder's self-condition across sampler steps.

Works for any model with an encoder/decoder split: either ``encode(x, t, y) -> state`` and
``decode(x, state) -> out`` methods, or DDT's ``forward(x, t, y, state) -> (out, state)`` convention.

* Uniform (``sampling.py``): recompute the state when ``i % r == 0``, i = 0..N-1 the model evaluations.
* Statistical DP (``sharing_sampling.py:EulerSampler.sharing_dp``): run calibration samples with a fresh state at
  every evaluation, average the per-token cosine similarity of the states into an N x N matrix, and choose the K
  recompute evaluations (the first is 0) that minimise the summed ``1 - cos`` between each evaluation's state and
  the state it reuses.

"Steps" here are model evaluations: one per sampler step for DDPM, DDIM, Euler, Euler–Maruyama and DDT's
default Heun, 2N - 1 for exact Heun (``Sampler.evaluations``). DDT's DP sampler is an Euler ODE; ditlab solves
the DP for any sampler, calibrating with that same sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

SHARE_KINDS = ("uniform", "dp")


@dataclass(frozen=True)
class ShareSpec:
    """An encoder-sharing request: ``uniform`` with ratio r, or ``dp`` with K recompute evaluations."""

    kind: str
    value: int

    def __post_init__(self) -> None:
        if self.kind not in SHARE_KINDS:
            raise ValueError(f"encoder sharing {self.kind!r} is not one of {', '.join(SHARE_KINDS)}")
        if self.value < 1:
            what = "sharing ratio" if self.kind == "uniform" else "number of recompute steps K"
            raise ValueError(f"{what} must be >= 1, got {self.value}")


def parse_share_spec(text: str | None) -> ShareSpec | None:
    """``"uniform:4"`` / ``"dp:K"`` -> :class:`ShareSpec`; None, "" or "none" -> None (no sharing)."""
    if text is None or text.strip().lower() in ("", "none"):
        return None
    kind, sep, value = text.partition(":")
    if not sep or not value.strip().lstrip("-").isdigit():
        raise ValueError(f"bad --share {text!r}; expected 'uniform:R' (R >= 1) or 'dp:K' (K >= 1) or 'none'")
    return ShareSpec(kind.strip().lower(), int(value))


# ----------------------------------------------------------------------------
# Schedules.


def uniform_schedule(num_evaluations: int, ratio: int) -> list[int]:
    """Recompute at evaluations 0, r, 2r, ... (``i % r == 0``): ceil(N / r) encoder calls."""
    if ratio < 1:
        raise ValueError(f"sharing ratio must be >= 1, got {ratio}")
    return list(range(0, num_evaluations, ratio))


def similarity_matrix(states: Sequence[Tensor]) -> Tensor:
    """(N, N) float64 mean over tokens and samples of cos(s_i, s_j), from N states shaped (B, L, D).

    Equal to the official bmm of L2-normalised tokens averaged over B*L, computed as one (N, B*L*D) float32
    product (the official float64 autocast is a no-op, so it is float32 too).
    """
    flat = torch.stack([nn.functional.normalize(s.float(), dim=-1).reshape(-1) for s in states])
    tokens = states[0].numel() // states[0].shape[-1]
    return (flat @ flat.T).double().cpu() / tokens


def segment_costs(similarity: Tensor | np.ndarray) -> np.ndarray:
    """E[i, j] = sum_{k=j..i} (1 - sim[k, j]) for j <= i: the cost of serving evaluations j..i with state j."""
    error = 1.0 - np.asarray(similarity, dtype=np.float64)
    return np.tril(np.cumsum(np.tril(error), axis=0))


def dp_schedule(similarity: Tensor | np.ndarray, k: int) -> list[int]:
    """The K recompute evaluations (ascending, starting at 0) that minimise the summed ``1 - cos`` (official DP).

    C[1][i] = E[i-1][0]; C[m][i] = min_{m-1 <= j < i} C[m-1][j] + E[i-1][j]; traced back from C[K][N]. Ties go
    to the smallest j, as the official strict ``<``.
    """
    n = len(similarity)
    if not 1 <= k <= n:
        raise ValueError(f"K={k} recompute steps is not in 1..{n} (the number of sampler steps)")
    cost = segment_costs(similarity)
    best = np.full((k + 1, n + 1), np.inf)
    parent = np.zeros((k + 1, n + 1), dtype=np.int64)
    best[1, 1:] = cost[:, 0]
    for m in range(2, k + 1):
        for i in range(m, n + 1):
            j = np.arange(m - 1, i)
            values = best[m - 1, j] + cost[i - 1, j]
            pick = int(np.argmin(values))
            best[m, i], parent[m, i] = values[pick], j[pick]
    schedule, end = [], n
    for m in range(k, 0, -1):
        end = int(parent[m, end])
        schedule.append(end)
    return schedule[::-1]


def schedule_cost(similarity: Tensor | np.ndarray, schedule: Sequence[int]) -> float:
    """Summed ``1 - sim[i, anchor(i)]`` of a schedule, anchor(i) = the last recompute evaluation <= i."""
    sim = np.asarray(similarity, dtype=np.float64)
    steps = np.asarray(sorted(schedule))
    anchors = steps[np.searchsorted(steps, np.arange(len(sim)), side="right") - 1]
    return float(sum(1.0 - sim[i, a] for i, a in enumerate(anchors)))


# ----------------------------------------------------------------------------
# The model wrapper.


class SharedEncoder:
    """``model(x, t, y) -> out`` that recomputes the encoder state only at the scheduled evaluations.

    Args:
        model: a backbone with ``encode``/``decode`` halves or DDT's ``forward(x, t, y, s) -> (out, s)``.
        recompute: evaluation indices where the state is recomputed; None = every evaluation (no sharing).
        record: keep the state used at every evaluation in ``states`` (DP calibration).
    """

    def __init__(self, model: Callable, recompute: Iterable[int] | None = None, record: bool = False):
        self.model = model
        self.recompute = None if recompute is None else frozenset(int(i) for i in recompute)
        self.record = record
        self.reset()

    def reset(self) -> None:
        """Start a new sampling run: evaluation 0, no state, counters cleared."""
        self.evaluation = 0
        self.encoder_calls = 0
        self.state: Tensor | None = None
        self.states: list[Tensor] = []

    def _encode(self, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor | None, Tensor]:
        if hasattr(self.model, "encode") and hasattr(self.model, "decode"):
            return None, self.model.encode(x, t, y)
        return self.model(x, t, y, None)

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        fresh = self.state is None or self.recompute is None or self.evaluation in self.recompute
        out = None
        if fresh:
            out, self.state = self._encode(x, t, y)
            self.encoder_calls += 1
        if out is None:
            if hasattr(self.model, "decode"):
                out = self.model.decode(x, self.state)
            else:
                out, _ = self.model(x, t, y, self.state)
        if self.record:
            self.states.append(self.state)
        self.evaluation += 1
        return out


def resolve_schedule(spec: ShareSpec | None, num_evaluations: int,
                     calibrate: Callable[[], Sequence[Tensor]] | None = None) -> list[int] | None:
    """The recompute evaluations a spec asks for; ``calibrate()`` returns the N calibration states (DP only)."""
    if spec is None:
        return None
    if spec.kind == "uniform":
        return uniform_schedule(num_evaluations, spec.value)
    if spec.value > num_evaluations:
        raise ValueError(f"K={spec.value} recompute steps exceeds the {num_evaluations} sampler steps")
    if calibrate is None:
        raise ValueError("dp encoder sharing needs calibration samples (a calibrate function)")
    states = calibrate()
    if len(states) != num_evaluations:
        raise ValueError(f"calibration gave {len(states)} states for {num_evaluations} evaluations")
    return dp_schedule(similarity_matrix(states), spec.value)
