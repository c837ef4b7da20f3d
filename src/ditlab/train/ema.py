"""Exponential moving average of a model's weights (the weights DiT samples with)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy of ``model`` whose parameters track ``ema = decay * ema + (1 - decay) * param``.

    The copy has the model's own state-dict keys, so its weights load into a fresh model directly. As in
    the official DiT code every parameter is averaged (frozen ones too) and the copy starts equal to the
    model (an update with decay 0). Buffers are copied, not averaged.

    Under FSDP2 (``parallel="fsdp"``) the training loop shards ``module`` exactly like the model
    (:func:`ditlab.train.fsdp.shard`): ``update`` then averages each rank's own DTensor shards, and
    ``state_dict`` holds shards; gather the full weights with :func:`ditlab.train.fsdp.full_state_dict`.

    Args:
        model: the (unwrapped) model being trained.
        decay: the per-step decay (DiT: 0.9999).
        warmup: if True, use ``min(decay, (1 + step) / (10 + step))`` so short runs are not dominated by
            the initial weights; the official code has no warm-up.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay={decay} must be in [0, 1)")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used for the update that follows optimizer step ``step`` (0-based)."""
        if self.warmup:
            return min(self.decay, (1 + step) / (10 + step))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise RuntimeError("EMA and model have different parameter lists")
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay_at(step))
        for ema_buf, buf in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state_dict, strict=True)
