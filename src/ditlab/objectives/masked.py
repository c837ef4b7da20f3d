"""MDT's training step as an objective: a full and a masked diffusion pass, losses added with equal weight.

Official ``masked_diffusion/train_util.py`` ``forward_backward``: one timestep draw t (the ``uniform``
schedule sampler: ``np.random.choice`` from numpy's global generator, which the training loop seeds per step), then
``training_losses`` twice with that t, each drawing its own noise (and label dropout): first the plain pass,
then the pass with ``enable_mask=True``. Both passes go through the same (possibly DDP-wrapped) model call before
a single backward, so the side-interpolater, used only by the masked pass, still gets its gradient in the same
reduction (``DDP(find_unused_parameters=False)`` as officially). Each loss is over all tokens, masked or not.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .gaussian import GaussianDiffusion

Model = Callable[..., Tensor]


def check_maskable(model: Model) -> None:
    """One-line error unless ``model`` (or the module inside a DDP wrapper) has a masked pass to train."""
    net = getattr(model, "module", model)
    if getattr(net, "mask_ratio", None) is None:
        name = type(net).__name__
        why = "was built with mask_ratio=None" if hasattr(net, "mask_ratio") else "has no masked pass"
        raise ValueError(f"the mdt objective needs an MDT/MDTv2 model with a mask_ratio; this {name} {why}")


def uniform_timesteps(num_timesteps: int, n: int, device: torch.device | str) -> Tensor:
    """(n,) timesteps as MDT's ``UniformSampler.sample``: ``np.random.choice`` over uniform weights (its
    importance weights are all 1, so they are not returned)."""
    weights = np.ones([num_timesteps])
    indices = torch.from_numpy(np.random.choice(num_timesteps, size=(n,), p=weights / np.sum(weights))).long()
    if torch.device(device).type == "cuda":  # a queued copy from pinned memory: the host does not wait
        indices = indices.pin_memory()
    return indices.to(device, non_blocking=True)


class MaskedDiffusionObjective:
    """``loss(model, x0, y)`` = full-pass losses + masked-pass losses (per sample), over a GaussianDiffusion.

    MDTv2's Min-SNR-5 weighting of the mse term is ``DiffusionConfig(min_snr_gamma=5.0)`` on the wrapped process
    (it applies to both passes, as officially); v1 trains unweighted. The model must accept ``enable_mask``.
    """

    def __init__(self, diffusion: GaussianDiffusion):
        self.diffusion = diffusion

    @property
    def config(self):
        return self.diffusion.config

    def loss(self, model: Model, x0: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Per-sample (N,) terms: ``loss`` (the sum the loop averages) and the official log keys.

        ``mse``/``vb`` are the full pass's, ``m_mse``/``m_vb``/``m_loss`` the masked pass's. Random draws in the
        official order: t (numpy), then the full pass's ε and its model draws (label dropout; MDTv2's masked
        pass: the ratio, the token order), then those of the masked pass.
        """
        check_maskable(model)
        t = uniform_timesteps(self.diffusion.num_timesteps, x0.shape[0], x0.device)
        kwargs = {} if y is None else {"y": y}
        full = self.diffusion.training_losses(model, x0, t, model_kwargs=kwargs)
        masked = self.diffusion.training_losses(model, x0, t, model_kwargs={**kwargs, "enable_mask": True})
        terms = {"loss": full["loss"] + masked["loss"]}
        terms.update({k: v for k, v in full.items() if k != "loss"})
        terms.update({f"m_{k}": v for k, v in masked.items()})
        return terms
