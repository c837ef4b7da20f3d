"""One optimisation step without a host synchronisation, shared by the training loop and the benchmarks.

On a GPU the Python thread queues kernels ahead of the device; every ``float(tensor)`` or ``int(tensor)`` makes
it wait until the queue drains, so the next step's launches no longer overlap this step's compute. The step
therefore returns its loss terms and gradient norm as device tensors; the loop reads them (and checks them for
NaN) only when it logs or checkpoints (:func:`read_window`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..models.checks import inputs_checked_once
from ..utils.distributed import all_reduce_mean
from .ema import EMA

__all__ = ["NonFiniteLoss", "StepParts", "StepStats", "inputs_checked_once", "optimisation_step", "read_window"]


@dataclass
class StepParts:
    """Everything one step touches. ``net`` is what the objective calls (``model`` or its DDP wrapper)."""

    net: nn.Module
    model: nn.Module
    objective: object  # loss(model, x0, y) -> dict of per-sample tensors, "loss" among them
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    autocast: torch.autocast
    max_grad_norm: float | None = None
    objective_params: list[nn.Parameter] = field(default_factory=list)  # trained outside DDP (REPA's projector)
    world_size: int = 1


@dataclass
class StepStats:
    """A step's logged numbers, still on the device: mean loss terms over ranks (``names`` order) and ‖∇‖."""

    step: int
    names: list[str]
    terms: Tensor
    grad_norm: Tensor


def optimisation_step(parts: StepParts, x0: Tensor, y: Tensor, step: int, lr: float, **extra: Tensor | None,
                      ) -> StepStats:
    """Forward under autocast, backward, optional clipping, optimizer and EMA updates; no host sync.

    ``extra`` goes to the objective's loss (REPA: ``images``, the real images of the batch)."""
    for group in parts.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # e.g. S4D's A and Δ train at a scaled rate
    with parts.autocast:
        terms = parts.objective.loss(parts.net, x0, y, **extra)
    loss = terms["loss"].mean()
    names = ["loss"] + [k for k in terms if k != "loss"]
    mean_terms = all_reduce_mean(torch.stack([terms[k].detach().float().mean() for k in names]))
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _average_gradients(parts.objective_params, parts.world_size)
    grad_norm = _clip_gradients(parts.model, parts.max_grad_norm)
    parts.optimizer.step()
    if parts.ema is not None:
        parts.ema.update(parts.model, step)
    return StepStats(step, names, mean_terms, grad_norm)


def read_window(window: list[StepStats]) -> list[dict[str, float]]:
    """The window's numbers as floats (one host sync for all of them); raises at the first non-finite loss."""
    if not window:
        return []
    values = torch.stack([torch.cat([s.terms.float(), s.grad_norm.reshape(1).float()]) for s in window]).tolist()
    rows = []
    for stats, row in zip(window, values, strict=True):
        if not math.isfinite(row[0]):
            raise NonFiniteLoss(stats.step, row[0])
        rows.append(dict(zip(stats.names, row[:-1], strict=True)) | {"grad_norm": row[-1]})
    return rows


class NonFiniteLoss(Exception):
    """Raised by :func:`read_window`; the loop turns it into its user-facing error.

    ``step`` counts optimizer steps from 1, as checkpoint names do (``StepStats.step`` counts from 0).
    """

    def __init__(self, step_index: int, value: float):
        self.step, self.value = step_index + 1, value
        super().__init__(f"loss became {value} at step {self.step}")


def _average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """All-reduce the gradients of parameters outside DDP (a trainable objective's) to their mean over ranks."""
    if world_size > 1:
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world_size


def _clip_gradients(model: nn.Module, max_norm: float | None) -> Tensor:
    """The global gradient norm (a device tensor), after clipping to ``max_norm`` if given."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    elif params:
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
    else:
        norm = torch.zeros((), device=next(model.parameters()).device)
    # Under FSDP2 the norm is a DTensor; its full value is a collective, not a host sync.
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
