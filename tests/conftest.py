"""Pytest fixtures shared by the suite."""

from __future__ import annotations

import pytest
import torch

# Tiny models run fastest on one thread, and one thread per process cannot oversubscribe the cores when the
# DDP tests start two processes (OpenMP spin-waiting under oversubscription costs 10-60x).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
