"""Adan (Xie et al. 2022, arXiv 2208.06677), the optimizer MDTv2 trains with.

Written here rather than installed: the official ``adan`` package (sail-sg/Adan, which MDTv2 imports) is not on
PyPI, and ``adan-pytorch`` is a 2022 re-implementation with other conventions. This follows the official
package's update rule and defaults (``betas=(0.98, 0.92, 0.99)``: each beta weighs the *old* average, i.e. one
minus the paper's β), with its proximal (default) or decoupled weight decay and optional global-norm clipping:

    g_t   = clip · ∇_t                                 clip = min(1, max_grad_norm / (‖∇‖ + eps)) or 1
    d_t   = g_t − g_{t−1}                              (0 at the first step)
    m_t   = β1 m + (1 − β1) g_t
    v_t   = β2 v + (1 − β2) d_t
    n_t   = β3 n + (1 − β3) (g_t + β2 d_t)²
    η_n   = sqrt(n_t / (1 − β3^t)) + eps
    θ    -= lr/(1 − β1^t) · m_t/η_n + lr·β2/(1 − β2^t) · v_t/η_n
    θ    /= 1 + lr·wd                                 (no_prox: θ *= 1 − lr·wd before the update)

Gradients are not modified in place (the official code scales ``p.grad`` by the clip factor).

State: per parameter ``exp_avg`` (m), ``exp_avg_diff`` (v), ``exp_avg_sq`` (n) and ``pre_grad`` = +g_{t−1}, the
previous (clipped) gradient; ``step`` per group. The official package keeps the same averages but stores the
previous gradient negated, as ``neg_pre_grad`` = −g_{t−1} (its kernels update it in place). :meth:`Adan.load_state_dict`
reads both, so a run resumes from an official optimizer file (MDT's ``opt*.pt``, once gathered from ZeRO) with
its gradient difference intact; the official Adan, given ditlab's state, would find no ``neg_pre_grad`` and
restart d at 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


class Adan(torch.optim.Optimizer):
    """Adan with the official package's defaults; ``step`` counts per parameter group, as officially."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        no_prox: bool = False,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0 or max_grad_norm < 0:
            raise ValueError(f"Adan needs lr, eps, weight_decay, max_grad_norm >= 0; got {lr}, {eps}, "
                             f"{weight_decay}, {max_grad_norm}")
        if len(betas) != 3 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adan betas must be three numbers in [0, 1), got {tuple(betas)}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                        no_prox=no_prox)
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load ditlab's state or the official package's (``neg_pre_grad`` = −g, converted to ``pre_grad``)."""
        state = {}
        for key, entry in state_dict["state"].items():
            entry = dict(entry)
            if "neg_pre_grad" in entry and "pre_grad" not in entry:
                entry["pre_grad"] = -entry.pop("neg_pre_grad")
            state[key] = entry
        super().load_state_dict({**state_dict, "state": state})

    @torch.no_grad()
    def _clip_factor(self) -> float:
        """min(1, max_grad_norm / (‖g‖ + eps)) over every gradient of every group; 1 when clipping is off."""
        max_norm = self.defaults["max_grad_norm"]
        if max_norm <= 0:
            return 1.0
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return 1.0
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        return min(1.0, float(max_norm / (norm + self.defaults["eps"])))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip = self._clip_factor()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            group["step"] = group.get("step", 0) + 1
            if params:
                self._update_group(group, params, clip)
        return loss

    def _update_group(self, group: dict[str, Any], params: list[Tensor], clip: float) -> None:
        beta1, beta2, beta3 = group["betas"]
        step, lr, eps, wd = group["step"], group["lr"], group["eps"], group["weight_decay"]
        grads = [p.grad * clip for p in params]
        for p, g in zip(params, grads, strict=True):
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
                state["exp_avg_diff"] = torch.zeros_like(p)
            if step == 1 or "pre_grad" not in state:
                state["pre_grad"] = g.clone()  # so that d_1 = 0
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_diff"] for p in params]
        n = [self.state[p]["exp_avg_sq"] for p in params]
        previous = [self.state[p]["pre_grad"] for p in params]
        diff = torch._foreach_sub(grads, previous)  # d_t
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_lerp_(v, diff, 1 - beta2)
        nesterov = torch._foreach_add(grads, diff, alpha=beta2)  # g_t + β2 d_t
        torch._foreach_mul_(n, beta3)
        torch._foreach_addcmul_(n, nesterov, nesterov, value=1 - beta3)
        denom = torch._foreach_sqrt(n)
        torch._foreach_div_(denom, math.sqrt(1 - beta3**step))
        torch._foreach_add_(denom, eps)
        if group["no_prox"]:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_addcdiv_(params, m, denom, value=-lr / (1 - beta1**step))
        torch._foreach_addcdiv_(params, v, denom, value=-lr * beta2 / (1 - beta2**step))
        if not group["no_prox"]:
            torch._foreach_div_(params, 1 + lr * wd)
        for p, g in zip(params, grads, strict=True):
            self.state[p]["pre_grad"] = g
