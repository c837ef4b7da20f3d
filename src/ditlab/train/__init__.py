"""Training: one loop for every backbone and objective, checkpoints, EMA, distributed helpers."""

from .checkpoint import CheckpointWriteError, CorruptCheckpointError
from .config import TrainConfig
from .loop import NonFiniteLossError, TrainResult, train

__all__ = ["CheckpointWriteError", "CorruptCheckpointError", "NonFiniteLossError", "TrainConfig", "TrainResult",
           "train"]
