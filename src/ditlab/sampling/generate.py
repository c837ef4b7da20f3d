"""From a trained backbone to latents: a sampler spec, a denoiser made from the model, noise per image.

    latents = generate_latents(model, DiffusionConfig(), labels, DDIM(50), guidance=Guidance(1.5), seeds=seeds)

``objective`` is the config the model was trained under (:class:`DiffusionConfig` or :class:`FlowConfig`); the
sampler spec (``samplers.py``) must sample that family and supplies its conventions, so nothing here switches on
the family. ``share`` reuses the encoder state of a model with an encoder/decoder split (DDT).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..models.checks import inputs_checked_once
from .ddpm import Denoiser
from .guidance import Guidance, classifier_free_guidance
from .samplers import Sampler
from .sharing import SharedEncoder, ShareSpec, resolve_schedule

# What ``share`` takes: a spec to solve ("uniform" every r evaluations, "dp" with K), or solved evaluations.
Share = ShareSpec | Sequence[int] | None


def image_generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per image, so each image's noise depends only on its own seed."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def initial_noise(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> Tensor:
    """x_T for each image from its own generator: (N, *shape)."""
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])


def latent_shape(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of the model's input."""
    cfg = model.config
    return (cfg.in_channels, cfg.input_size, cfg.input_size)


@contextlib.contextmanager
def sampling_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (label dropout off) for the block; its training flag restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def generate_latents(model: nn.Module, objective: Any, labels: Tensor, sampler: Sampler, *,
                     guidance: Guidance | None = None, share: Share = None, seeds: list[int] | None = None,
                     progress: bool = False) -> Tensor:
    """Model-space samples for ``labels`` by ``sampler`` (e.g. ``DDPM("250")``, ``DDIM(50)``, ``Euler(50)``).

    Image i uses seed ``seeds[i]`` (default i) for its initial noise and every later draw, so results do not
    depend on batch composition. ``guidance``: classifier-free guidance (default none). ``share``: encoder
    sharing, see :func:`sharing_schedule`.
    """
    sampler.check(objective)
    guidance = Guidance() if guidance is None else guidance
    seeds = _image_seeds(seeds, labels)
    device = next(model.parameters()).device
    with sampling_mode(model):
        recompute = sharing_schedule(model, objective, sampler, share, guidance)
        shared = None if recompute is None else SharedEncoder(model, recompute)
        denoiser = model_denoiser(model, objective, labels.to(device), sampler, guidance, shared)
        generators = image_generators(seeds, device)
        noise = initial_noise(generators, latent_shape(model), device)
        with inputs_checked_once(model):  # the label check would sync the host at every step
            return sampler.sample(denoiser, noise, objective, generators, progress)


def generate(model: nn.Module, objective: Any, labels: Tensor, sampler: Sampler, *, codec: Any = None,
             seed: int = 0, **kwargs: Any) -> Tensor:
    """Images in [-1, 1] for ``labels``: :func:`generate_latents` then ``codec.decode`` (identity if None).

    Image i uses seed ``seed + i``.
    """
    seeds = [seed + i for i in range(len(labels))]
    latents = generate_latents(model, objective, labels, sampler, seeds=seeds, **kwargs)
    return latents if codec is None else codec.decode(latents)


def model_denoiser(model: nn.Module, objective: Any, labels: Tensor, sampler: Sampler, guidance: Guidance,
                   shared: SharedEncoder | None = None) -> Denoiser:
    """``(x, t) -> guided output`` for ``labels``: the model (through ``shared`` if given) called as the
    sampler's family calls it, wrapped by classifier-free guidance."""
    cfg = model.config
    cfg_config = guidance.config(sampler.guidance_scale(guidance, objective), cfg.num_classes)
    if not cfg_config.is_unguided and cfg.class_dropout_prob <= 0:
        raise ValueError("classifier-free guidance needs a model trained with label dropout (class_dropout_prob > 0)")
    net = model if shared is None else shared
    return classifier_free_guidance(sampler.model_fn(net, objective), labels, cfg_config)


def _image_seeds(seeds: list[int] | None, labels: Tensor) -> list[int]:
    """One seed per image: ``seeds`` as given (checked) or 0..N-1."""
    seeds = list(range(len(labels))) if seeds is None else seeds
    if len(seeds) != len(labels):
        raise ValueError(f"got {len(seeds)} seeds for {len(labels)} labels; need one per image")
    return seeds


# ----------------------------------------------------------------------------
# Encoder sharing (DDT section 3.3).


@torch.no_grad()
def sharing_schedule(model: nn.Module, objective: Any, sampler: Sampler, share: Share,
                     guidance: Guidance | None = None, calibration_samples: int = 8) -> list[int] | None:
    """The model evaluations (0-based) at which the encoder runs; None without sharing.

    ``share``: ``ShareSpec("uniform", r)`` recomputes every r evaluations; ``ShareSpec("dp", K)`` first samples
    ``calibration_samples`` images (noise and labels from seed 0, as DDT) with a fresh encoder state at every
    evaluation and with the same sampler and guidance, then solves DDT's DP for K recompute evaluations; a list
    is taken as already solved (pass this function's result back to skip the calibration, as DDT caches it).
    """
    if share is None:
        return None
    if not (hasattr(model, "encode") and hasattr(model, "decode")):
        raise ValueError(f"encoder sharing needs a model with an encoder/decoder split (DDT); "
                         f"{type(model).__name__} has none")
    if isinstance(share, str):
        raise ValueError(f"share={share!r}: pass ShareSpec('uniform', r) / ShareSpec('dp', K) or a list of "
                         "evaluations (parse_share_spec reads the command line's strings)")
    evaluations = sampler.evaluations(objective)
    if isinstance(share, ShareSpec):
        guidance = Guidance() if guidance is None else guidance
        return resolve_schedule(share, evaluations, lambda: _calibration_states(
            model, objective, sampler, guidance, calibration_samples))
    steps = sorted(int(i) for i in share)
    if not steps or steps[0] != 0 or steps[-1] >= evaluations:
        raise ValueError(f"recompute steps {steps} must start at 0 and stay below {evaluations}")
    return steps


def _calibration_states(model: nn.Module, objective: Any, sampler: Sampler, guidance: Guidance,
                        count: int) -> list[Tensor]:
    """DDT's DP calibration: ``count`` samples (noise and labels from seed 0), a fresh state at every evaluation."""
    cfg, device = model.config, next(model.parameters()).device
    noise = torch.randn((count, *latent_shape(model)), device=device, generator=torch.Generator(device).manual_seed(0))
    y = torch.randint(0, cfg.num_classes, (count,), device=device, generator=torch.Generator(device).manual_seed(0))
    recorder = SharedEncoder(model, None, record=True)
    with sampling_mode(model):
        denoiser = model_denoiser(model, objective, y, sampler, guidance, recorder)
        sampler.sample(denoiser, noise, objective, torch.Generator(device).manual_seed(0))
    return recorder.states
