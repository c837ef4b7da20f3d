"""Training: one loop for every backbone and objective, checkpoints, EMA, distributed helpers."""

from .config import TrainConfig
from .loop import NonFiniteLossError, TrainResult, train

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "train"]
