"""REPA's projector: the only trained part of representation alignment (Yu et al. 2025) besides the backbone.

As DDT's ``stateful_flow_matching/training_repa.py:REPATrainer``, a ``Linear-SiLU-Linear-SiLU-Linear`` MLP maps
a block's tokens to the vision encoder's width; the official checkpoint stores it under
``diffusion_trainer.proj.``. The loss that uses it (and its frozen target encoder) is an objective:
:mod:`ditlab.objectives.repa`.
"""

from __future__ import annotations

from torch import nn


def build_projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """The official projector, nested as there so its keys are ``0.0.weight``, ``0.2.weight``, ``0.4.weight``."""
    return nn.Sequential(nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.SiLU(),
        nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
        nn.Linear(hidden_dim, out_dim),
    ))
