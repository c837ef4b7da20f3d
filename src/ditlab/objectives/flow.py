"""Flow matching on the linear path, in DDT's convention (``stateful_flow_matching/scheduling.py:LinearScheduler``).

t = 0 is noise and t = 1 is data: ``x_t = t x + (1 - t) ε`` and the model regresses the velocity ``v = x - ε``
(Lipman et al. 2023; Liu et al. 2023; SiT uses the same direction). t is drawn uniformly or logit-normally
(``t = sigmoid(N(m, s²))``, DDT's ``lognorm_t``; Esser et al. 2024). Any backbone trains under it; a backbone
that returns a tuple (DDT: ``(v, s)``) has its first element taken as the velocity.

Random draws of :meth:`FlowMatching.loss`, in DDT's trainer order (``base/training.py:BaseTrainer`` then
``training_repa.py:_impl_trainstep``): the label dropout ``rand(N) < p`` on the labels' device (p = the
backbone's ``class_dropout_prob``, train mode only; the mask reaches the model as ``force_drop_ids`` so the
model draws none of its own), then t, then ε. So with one seed a DDT trains on DDT's batches.

Time scale: the model sees ``t * time_scale``. DDT and SiT feed t in [0, 1] (1.0, the default). DiT's timestep
embedder was built for t in [0, 1000) with max_period 10000; on t in [0, 1] most of its frequencies barely move
(dit.md section 7), so a DiT trained under flow may want ``time_scale=1000``. We keep SiT's 1.0 as default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

T_SAMPLINGS = ("uniform", "logit-normal")


@dataclass
class FlowConfig:
    """Flow-matching objective settings (defaults: DDT's REPA trainer)."""

    t_sampling: str = "logit-normal"  # "uniform" t ~ U(0,1) or "logit-normal" t = sigmoid(N(logit_mean, logit_std²))
    logit_mean: float = 0.0  # mean of the logit-normal t (DDT: 0)
    logit_std: float = 1.0  # std of the logit-normal t (DDT: 1)
    time_scale: float = 1.0  # the model sees t * time_scale: 1 = SiT/DDT; 1000 suits DiT's max_period-10000 embedder

    def __post_init__(self) -> None:
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling={self.t_sampling!r} is not one of {', '.join(T_SAMPLINGS)}")
        if self.logit_std <= 0:
            raise ValueError(f"logit_std={self.logit_std} must be positive")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale={self.time_scale} must be positive")


def velocity_of(output: Tensor | tuple | list) -> Tensor:
    """The velocity in a model output: the tensor itself, or the first element of a tuple (DDT's ``(v, s)``)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def draw_label_dropout(model: Callable, y: Tensor) -> Tensor | None:
    """DDT's trainer label dropout: (N,) 1 where a label becomes the null class, drawn on the labels' device.

    None (no draw) unless the backbone (or the module inside a DDP wrapper) is training with a label embedder
    whose ``dropout_prob`` is positive.
    """
    net = getattr(model, "module", model)
    p = float(getattr(getattr(net, "y_embedder", None), "dropout_prob", 0.0))
    if not getattr(net, "training", False) or p <= 0:
        return None
    return (torch.rand(y.shape[0], device=y.device) < p).long()


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class FlowMatching:
    """The linear-path flow-matching objective: ``loss(model, x, y) -> {"loss", "fm"}`` per sample."""

    def __init__(self, config: FlowConfig | None = None):
        self.config = FlowConfig() if config is None else config

    # ---- the path --------------------------------------------------------------------------------------

    @staticmethod
    def interpolate(x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = t x + (1 - t) ε (alpha = t, sigma = 1 - t)."""
        t = _per_sample(t, x)
        return t * x + (1 - t) * noise

    @staticmethod
    def target(x: Tensor, noise: Tensor) -> Tensor:
        """v = dx_t/dt = x - ε."""
        return x - noise

    @staticmethod
    def data_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
        """x = x_t + (1 - t) v (the clean estimate implied by a velocity)."""
        return x_t + (1 - _per_sample(t, x_t)) * v

    @staticmethod
    def score_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
        """∇ log p_t(x_t) = -ε/σ = (t v - x_t) / (1 - t)  (singular at t = 1)."""
        t = _per_sample(t, x_t)
        return (t * v - x_t) / (1 - t)

    def sample_t(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """(n,) times in (0, 1) from the configured law, drawn from the global RNG."""
        if self.config.t_sampling == "uniform":
            return torch.rand(n, device=device)
        return (torch.randn(n, device=device) * self.config.logit_std + self.config.logit_mean).sigmoid()

    # ---- model calls and losses ------------------------------------------------------------------------

    def velocity(self, model: Callable, x_t: Tensor, t: Tensor, **model_kwargs) -> Tensor:
        """The model's velocity at (x_t, t); the model sees ``t * time_scale``."""
        return velocity_of(model(x_t, t * self.config.time_scale, **model_kwargs))

    def training_losses(self, model: Callable, x: Tensor, t: Tensor, noise: Tensor | None = None,
                        model_kwargs: dict | None = None) -> dict[str, Tensor]:
        """Per-sample (N,) ``fm = mean((v_θ(x_t, t) - (x - ε))²)`` and ``loss = fm``."""
        noise = torch.randn_like(x) if noise is None else noise
        x_t = self.interpolate(x, noise, t)
        out = self.velocity(model, x_t, t, **(model_kwargs or {}))
        if out.shape != x.shape:
            raise ValueError(f"model output shape {tuple(out.shape)} does not match the data shape {tuple(x.shape)}")
        fm = ((out.float() - self.target(x, noise).float()) ** 2).mean(dim=list(range(1, x.ndim)))
        return {"loss": fm, "fm": fm}

    def loss(self, model: Callable, x: Tensor, y: Tensor | None = None, **model_kwargs) -> dict[str, Tensor]:
        """The training-loop objective; draws in DDT's order: label dropout, t, then ε ~ N(0, I)."""
        kwargs = dict(model_kwargs)
        if y is not None:
            kwargs["y"] = y
            dropped = draw_label_dropout(model, y)
            if dropped is not None:
                kwargs["force_drop_ids"] = dropped
        t = self.sample_t(x.shape[0], x.device).to(x.dtype)
        noise = torch.randn_like(x)
        return self.training_losses(model, x, t, noise=noise, model_kwargs=kwargs)
