"""Datasets and deterministic, resumable batch order."""

from .digits import DigitsDataset, load_digits_arrays
from .sampler import StepBatchSampler

__all__ = ["DigitsDataset", "StepBatchSampler", "load_digits_arrays"]
