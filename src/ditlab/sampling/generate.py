"""From a trained backbone to images: noise per image, a sampler, guidance, decoding."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..models.checks import inputs_checked_once
from ..objectives import DiffusionConfig, GaussianDiffusion
from ..objectives.flow import FlowConfig, velocity_of
from .ddim import sample_ddim
from .ddpm import sample_ddpm
from .guidance import CFGConfig, classifier_free_guidance, power_cosine_scale
from .ode import FLOW_METHODS, FlowSamplerConfig, guidance_interval, sample_flow
from .sharing import SharedEncoder, ShareSpec, parse_share_spec, resolve_schedule


def image_generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per image, so each image's noise depends only on its own seed."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def initial_noise(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> Tensor:
    """x_T for each image from its own generator: (N, *shape)."""
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])


@torch.no_grad()
def generate_latents(
    model: nn.Module,
    diffusion: DiffusionConfig,
    labels: Tensor,
    *,
    sampler_steps: str = "250",
    cfg_scale: float = 1.0,
    guided_channels: int | None = None,
    eta: float = 0.0,
    seeds: list[int] | None = None,
    progress: bool = False,
    flow_sampler: FlowSamplerConfig | None = None,
    cfg_interval: tuple[float, float] | None = None,
    share: str | ShareSpec | None = None,
    cfg_power: float | None = None,
    clip_denoised: bool = False,
) -> Tensor:
    """Sample model-space tensors for ``labels`` with the sampler that ``sampler_steps`` names.

    ``sampler_steps`` is a respacing string: "ddimN" runs DDIM (with ``eta``) over N steps; anything else
    ("250", "50", "10,20") runs ancestral DDPM over those steps. Image i uses seed ``seeds[i]`` (default i)
    for its initial noise and every later draw, so results do not depend on batch composition.

    With a :class:`FlowConfig` (flow matching) the flow sampler runs instead: ``flow_sampler``, or the one
    ``sampler_steps`` names ("N"/"eulerN", "heunN", "sdeN"; "ddimN" = the deterministic Euler ODE);
    ``cfg_interval=(0.3, 1.0)`` limits guidance to that open interval of t (DDT); ``share`` ("uniform:R" /
    "dp:K") reuses the encoder state of a model with an encoder/decoder split (DDT).
    ``cfg_power`` turns the constant guidance scale into MDT's power-cosine schedule with that exponent.
    ``clip_denoised`` clamps each predicted x0 to [-1, 1] (Gaussian samplers; ADM does so for pixel-space models,
    DiT's latent sampler does not).
    """
    if isinstance(diffusion, FlowConfig):
        sampler = flow_sampler or flow_sampler_from_steps(sampler_steps)
        return generate_flow_latents(model, diffusion, labels, sampler=sampler, cfg_scale=cfg_scale,
                                     cfg_interval=cfg_interval, guided_channels=guided_channels, seeds=seeds,
                                     share=share)[0]
    cfg = model.config
    device = next(model.parameters()).device
    labels, seeds = labels.to(device), _image_seeds(seeds, labels)
    process = GaussianDiffusion(dataclasses.replace(diffusion, timestep_respacing=sampler_steps))
    generators = image_generators(seeds, device)
    noise = initial_noise(generators, (cfg.in_channels, cfg.input_size, cfg.input_size), device)
    scale = cfg_scale if cfg_power is None else power_cosine_scale(cfg_scale, cfg_power, diffusion.num_timesteps)
    guidance = CFGConfig(scale=scale, null_class=cfg.num_classes, guided_channels=guided_channels)
    if not guidance.is_unguided and cfg.class_dropout_prob <= 0:
        raise ValueError("classifier-free guidance needs a model trained with label dropout (class_dropout_prob > 0)")
    denoiser = classifier_free_guidance(_output_in_input_dtype(model), labels, guidance)
    was_training = model.training
    model.eval()  # label dropout must be off while sampling
    try:
        with inputs_checked_once(model):  # the label check would sync the host at every step
            if sampler_steps.startswith("ddim"):
                return sample_ddim(process, denoiser, noise, eta=eta, clip_denoised=clip_denoised, generator=generators,
                                   progress=progress)
            return sample_ddpm(process, denoiser, noise, clip_denoised=clip_denoised, generator=generators,
                               progress=progress)
    finally:
        model.train(was_training)


def _image_seeds(seeds: list[int] | None, labels: Tensor) -> list[int]:
    """One seed per image: ``seeds`` as given (checked) or 0..N-1."""
    seeds = list(range(len(labels))) if seeds is None else seeds
    if len(seeds) != len(labels):
        raise ValueError(f"got {len(seeds)} seeds for {len(labels)} labels; need one per image")
    return seeds


def _output_in_input_dtype(model: nn.Module):
    """The model with its output cast to x's dtype: under bf16 autocast the sampler state stays float32."""

    def call(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return model(x, t, y).to(x.dtype)

    return call


def flow_sampler_from_steps(sampler_steps: str) -> FlowSamplerConfig:
    """A flow sampler with DDT's defaults from "50" / "euler50" / "heun50" / "sde50" ("ddim50" = Euler ODE)."""
    spec = sampler_steps.strip().lower()
    method = next((m for m in (*FLOW_METHODS, "ddim") if spec.startswith(m)), "euler")
    count = spec[len(method):] if spec.startswith(method) else spec
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"bad flow sampler {sampler_steps!r}; expected N, eulerN, heunN or sdeN with N >= 1")
    return FlowSamplerConfig(method="euler" if method == "ddim" else method, num_steps=int(count))


def _time_scaled(fn, time_scale: float):
    """``fn(x, t, y)`` seen by a sampler whose t is in [0, 1]; the model gets ``t * time_scale``."""
    if time_scale == 1.0:
        return fn
    return lambda x, t, y: fn(x, t * time_scale, y)


def _flow_denoiser(model: nn.Module, flow: FlowConfig, labels: Tensor, guidance: CFGConfig,
                   recompute: list[int] | None, record: bool = False, sharing: bool = False):
    """(denoiser (x, t) -> guided v, the SharedEncoder or None)."""
    if not sharing:
        velocity = _time_scaled(lambda x, t, y: velocity_of(model(x, t, y)), flow.time_scale)
        return classifier_free_guidance(velocity, labels, guidance), None
    shared = SharedEncoder(model, recompute, record=record)
    return classifier_free_guidance(_time_scaled(shared, flow.time_scale), labels, guidance), shared


def _share_request(share: str | ShareSpec | list[int] | None, num_evaluations: int,
                   ) -> tuple[ShareSpec | None, list[int] | None]:
    """(a spec to resolve, or an already solved list of recompute evaluations)."""
    if isinstance(share, (list, tuple, set, frozenset)):
        steps = sorted(int(i) for i in share)
        if not steps or steps[0] != 0 or steps[-1] >= num_evaluations:
            raise ValueError(f"recompute steps {steps} must start at 0 and stay below {num_evaluations}")
        return None, steps
    return (parse_share_spec(share) if share is None or isinstance(share, str) else share), None


def _calibration_states(model: nn.Module, flow: FlowConfig, guidance: CFGConfig, sampler: FlowSamplerConfig,
                        count: int) -> list[Tensor]:
    """DDT's DP calibration: ``count`` samples (noise and labels from seed 0), a fresh state at every evaluation."""
    cfg, device = model.config, next(model.parameters()).device
    noise = torch.randn((count, cfg.in_channels, cfg.input_size, cfg.input_size), device=device,
                        generator=torch.Generator(device).manual_seed(0))
    y = torch.randint(0, cfg.num_classes, (count,), device=device, generator=torch.Generator(device).manual_seed(0))
    denoiser, recorder = _flow_denoiser(model, flow, y, guidance, None, record=True, sharing=True)
    sample_flow(denoiser, noise, sampler, generator=torch.Generator(device).manual_seed(0))
    return recorder.states


def _check_split(model: nn.Module) -> None:
    if not (hasattr(model, "encode") and hasattr(model, "decode")):
        raise ValueError(f"encoder sharing needs a model with an encoder/decoder split (DDT); "
                         f"{type(model).__name__} has none")


@torch.no_grad()
def generate_flow_latents(model: nn.Module, flow: FlowConfig, labels: Tensor, *, sampler: FlowSamplerConfig,
                          cfg_scale: float = 1.0, cfg_interval: tuple[float, float] | None = None,
                          guided_channels: int | None = None, seeds: list[int] | None = None,
                          share: str | ShareSpec | list[int] | None = None, calibration_samples: int = 8,
                          ) -> tuple[Tensor, SharedEncoder | None]:
    """Flow-matching samples (t = 0 noise -> t = 1 data) and the SharedEncoder that ran (None without sharing).

    DP sharing first samples ``calibration_samples`` images (noise and labels from seed 0, as DDT) with a fresh
    encoder state at every evaluation, then solves the DP for the recompute steps; its ``recompute`` set can be
    passed back as ``share`` (a list of evaluation indices) to skip the calibration next time, as DDT caches it.
    """
    cfg = model.config
    device = next(model.parameters()).device
    labels, seeds = labels.to(device), _image_seeds(seeds, labels)
    spec, fixed = _share_request(share, sampler.num_evaluations)
    if spec is not None or fixed is not None:
        _check_split(model)
    scale = cfg_scale if cfg_interval is None else guidance_interval(cfg_scale, *cfg_interval)
    guidance = CFGConfig(scale=scale, null_class=cfg.num_classes, guided_channels=guided_channels)
    if not guidance.is_unguided and cfg.class_dropout_prob <= 0:
        raise ValueError("classifier-free guidance needs a model trained with label dropout (class_dropout_prob > 0)")
    was_training = model.training
    model.eval()  # label dropout must be off while sampling
    try:
        recompute = fixed if fixed is not None else resolve_schedule(
            spec, sampler.num_evaluations, lambda: _calibration_states(model, flow, guidance, sampler,
                                                                       calibration_samples))
        generators = image_generators(seeds, device)
        noise = initial_noise(generators, (cfg.in_channels, cfg.input_size, cfg.input_size), device)
        denoiser, shared = _flow_denoiser(model, flow, labels, guidance, recompute, sharing=recompute is not None)
        with inputs_checked_once(model):
            return sample_flow(denoiser, noise, sampler, generator=generators), shared
    finally:
        model.train(was_training)


def generate(model: nn.Module, diffusion: DiffusionConfig, labels: Tensor, *, codec=None, seed: int = 0,
             **kwargs) -> Tensor:
    """Images in [-1, 1] for ``labels``: :func:`generate_latents` then ``codec.decode`` (identity if None).

    Image i uses seed ``seed + i``.
    """
    seeds = [seed + i for i in range(len(labels))]
    latents = generate_latents(model, diffusion, labels, seeds=seeds, **kwargs)
    return latents if codec is None else codec.decode(latents)
