"""Gaussian noise for samplers, from the global RNG, one generator, or one generator per sample."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None


def _randn_from(generator: torch.Generator, shape: torch.Size, like: Tensor) -> Tensor:
    # Draw on the generator's own device (a CPU generator cannot fill a CUDA tensor), then move.
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def randn_like(x: Tensor, generator: Generators = None) -> Tensor:
    """Standard normal noise shaped like x.

    * None: the global RNG (``torch.randn_like``, as the official samplers).
    * one ``torch.Generator``: the whole batch from it.
    * a sequence of N generators: sample i from generator i, so a sample's noise does not depend on which
      other samples share its batch (seed-per-image sampling).
    """
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, torch.Generator):
        return _randn_from(generator, x.shape, x)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}; need one per sample")
    return torch.stack([_randn_from(g, x.shape[1:], x) for g in generator])
