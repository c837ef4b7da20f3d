"""Datasets and deterministic, resumable batch order."""

from .digits import DigitsDataset, load_digits_arrays
from .images import BadImageError, ImageFolder, center_crop_arr
from .latents import ExtractConfig, LatentShards, extract_latents
from .sampler import StepBatchSampler

__all__ = ["BadImageError", "DigitsDataset", "ExtractConfig", "ImageFolder", "LatentShards", "StepBatchSampler",
           "center_crop_arr", "extract_latents", "load_digits_arrays"]
