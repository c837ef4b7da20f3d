"""The Gaussian diffusion process of DiT (official ``diffusion/gaussian_diffusion.py`` + ``respace.py``).

Equation references: Ho et al. 2020 "DDPM" (eqs. 4, 7, 11, 12), Nichol & Dhariwal 2021 "IDDPM" (learned
range variance, eq. 15; hybrid loss, eq. 16), Song et al. 2021 "DDIM" (eq. 12), Salimans & Ho 2022
(v-prediction), Hang et al. 2023 "Min-SNR" (loss weights).

Schedules are float64 numpy arrays; each method gathers the coefficients it needs in float64 at the
batch's timesteps and casts them to the input's dtype, as the official ``_extract_into_tensor`` does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .schedules import BETA_SCHEDULES, beta_schedule, space_timesteps

PREDICTIONS = ("eps", "x0", "v")

Model = Callable[..., Tensor]


# ----------------------------------------------------------------------------------------------------------
# Likelihood helpers (official diffusion_utils.py)
# ----------------------------------------------------------------------------------------------------------


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch one: (N, ...) -> (N,)."""
    return x.mean(dim=list(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF used by the official decoder likelihood."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Elementwise log-probability (nats) of the 8-bit bin around x in [-1, 1] under N(means, σ²).

    log σ = log_scales. DDPM §3.3 decoder: bins have width 2/255; the two edge bins extend to ±∞.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    inner = torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta)
    return torch.where(x < -0.999, log_cdf_plus, inner)


def _broadcast_to_batch(values: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1) with like.ndim dimensions."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def _full_like(values: Tensor, like: Tensor) -> Tensor:
    """(N, 1, ..., 1) -> like.shape, materialised: torch kernels on stride-0 expanded views are very slow."""
    return values.expand_as(like).contiguous()


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DiffusionConfig:
    """How the diffusion process is built; the defaults are DiT's ``create_diffusion("")``."""

    schedule: str = "linear"  # β schedule: "linear" (DDPM, 1e-4..0.02 at T=1000) or "cosine" (IDDPM)
    num_timesteps: int = 1000  # T of the original (training) process
    prediction: str = "eps"  # what the model's first C channels predict: "eps" | "x0" | "v"
    learn_sigma: bool = True  # model also outputs C channels interpolating log σ² (IDDPM LEARNED_RANGE)
    sigma_small: bool = False  # fixed σ² when not learned: posterior variance (small) or β_t (large)
    use_kl: bool = False  # train on the variational bound only (official RESCALED_KL: vb · T)
    rescale_learned_sigmas: bool = False  # official RESCALED_MSE: vb · T/1000
    min_snr_gamma: float | None = None  # Min-SNR-γ weight on the mse term (MDTv2 uses 5.0); None = off
    timestep_respacing: str = ""  # kept steps, e.g. "250", "ddim50", "10,15,20"; "" = all T steps

    def __post_init__(self) -> None:
        if self.schedule not in BETA_SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; allowed: {', '.join(BETA_SCHEDULES)}")
        if (
            isinstance(self.num_timesteps, bool)
            or not isinstance(self.num_timesteps, int)
            or self.num_timesteps < 2
        ):
            raise ValueError(f"num_timesteps must be an int >= 2, got {self.num_timesteps!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; allowed: {', '.join(PREDICTIONS)}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be None or > 0, got {self.min_snr_gamma!r}")
        if not isinstance(self.timestep_respacing, str):
            raise ValueError(
                f"timestep_respacing must be a str like '250' or 'ddim50', got {self.timestep_respacing!r}"
            )
        if self.timestep_respacing and len(space_timesteps(self.num_timesteps, self.timestep_respacing)) < 2:
            raise ValueError(f"timestep_respacing {self.timestep_respacing!r} keeps fewer than 2 steps")


# ----------------------------------------------------------------------------------------------------------
# The process
# ----------------------------------------------------------------------------------------------------------


def _respaced_betas(alphas_cumprod: np.ndarray, kept: list[int]) -> np.ndarray:
    """β'_i = 1 − ᾱ_{k_i} / ᾱ_{k_{i-1}} over kept steps k (ᾱ before the first is 1): ᾱ' = ᾱ at kept steps."""
    kept_alphas_cumprod = alphas_cumprod[kept]
    previous = np.append(1.0, kept_alphas_cumprod[:-1])
    return 1.0 - kept_alphas_cumprod / previous


class GaussianDiffusion:
    """The (possibly respaced) forward process q and the model's reverse process p of DiT.

    When ``config.timestep_respacing`` is set, this object IS the respaced process: its index t runs over
    the kept steps, ``timestep_map[t]`` is the original timestep, and the model is always fed the original
    timestep (official ``_WrappedModel``, without rescaling). Without respacing the map is the identity.
    """

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = config if config is not None else DiffusionConfig()
        cfg = self.config
        self.original_num_steps = cfg.num_timesteps
        base_alphas_cumprod = np.cumprod(1.0 - beta_schedule(cfg.schedule, cfg.num_timesteps))
        self.original_alphas_cumprod = base_alphas_cumprod  # ᾱ on the original 0..T-1 scale
        kept = list(range(cfg.num_timesteps))
        if cfg.timestep_respacing:
            kept = space_timesteps(cfg.num_timesteps, cfg.timestep_respacing)
        self.timestep_map = torch.tensor(kept, dtype=torch.int64)
        # Recomputed even without respacing, as the official create_diffusion("") does (β differs by ~1e-17).
        self._set_schedule(_respaced_betas(base_alphas_cumprod, kept))
        self._tables: dict[tuple[str, torch.device], Tensor] = {}

    def _set_schedule(self, betas: np.ndarray) -> None:
        """All float64 arrays of the official GaussianDiffusion.__init__ (DDPM eqs. 4, 6, 7)."""
        self.betas = betas
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t=0, so its log takes the t=1 value there.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        self.log_betas = np.log(betas)
        # FIXED_LARGE uses β_t, but the posterior variance at t=0 for a better decoder likelihood (official).
        self.large_variance = np.append(self.posterior_variance[1], betas[1:])
        self.log_large_variance = np.log(self.large_variance)

    def with_respacing(self, timestep_respacing: str) -> GaussianDiffusion:
        """The same process respaced differently (e.g. train on "" and sample on "250")."""
        return GaussianDiffusion(dataclasses.replace(self.config, timestep_respacing=timestep_respacing))

    def out_channels(self, in_channels: int) -> int:
        """Channels the model must output: prediction (C) plus the variance interpolation (C) if learned."""
        return 2 * in_channels if self.config.learn_sigma else in_channels

    # ---- coefficient gathering -------------------------------------------------------------------------

    def _table(self, name: str, device: torch.device) -> Tensor:
        key = (name, device)
        if key not in self._tables:
            # MPS has no float64: keep those tables on the CPU and gather there.
            target = torch.device("cpu") if device.type == "mps" else device
            self._tables[key] = torch.from_numpy(getattr(self, name)).to(target)
        return self._tables[key]

    def _extract(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """array[t] gathered in float64, cast to like.dtype, shaped (N, 1, ..., 1) to broadcast on like."""
        table = self._table(name, t.device)
        values = table[t.to(table.device)].to(device=like.device, dtype=like.dtype)
        return _broadcast_to_batch(values, like)

    def original_timesteps(self, t: Tensor) -> Tensor:
        """timestep_map[t]: the original-scale timesteps the model is conditioned on."""
        key = ("timestep_map", t.device)
        if key not in self._tables:  # copied once per device: a copy per sampling step would stall the host
            self._tables[key] = self.timestep_map.to(t.device)
        return self._tables[key][t]

    # ---- forward process q -----------------------------------------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε  (DDPM eq. 4)."""
        noise = torch.randn_like(x0) if noise is None else noise
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)  (DDPM eqs. 6, 7)."""
        mean = (
            self._extract("posterior_mean_coef1", t, x_t) * x0
            + self._extract("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = _full_like(self._extract("posterior_variance", t, x_t), x_t)
        log_variance = _full_like(self._extract("posterior_log_variance_clipped", t, x_t), x_t)
        return mean, variance, log_variance

    # ---- parameterisation conversions ------------------------------------------------------------------

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x0 = (x_t − sqrt(1 − ᾱ) ε) / sqrt(ᾱ), written as sqrt(1/ᾱ) x_t − sqrt(1/ᾱ − 1) ε."""
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """ε = (sqrt(1/ᾱ) x_t − x0) / sqrt(1/ᾱ − 1), the inverse of ``predict_xstart_from_eps``."""
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def predict_v(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x0  (Salimans & Ho 2022, §4)."""
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * eps
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def predict_xstart_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x0 = sqrt(ᾱ) x_t − sqrt(1 − ᾱ) v."""
        return (
            self._extract("sqrt_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * v
        )

    def predict_eps_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """ε = sqrt(1 − ᾱ) x_t + sqrt(ᾱ) v."""
        return (
            self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
            + self._extract("sqrt_alphas_cumprod", t, x_t) * v
        )

    def _pred_xstart(self, prediction: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """x0 implied by the model's prediction half under the configured parameterisation."""
        kind = self.config.prediction
        if kind == "eps":
            return self.predict_xstart_from_eps(x_t, t, prediction)
        if kind == "v":
            return self.predict_xstart_from_v(x_t, t, prediction)
        return prediction

    # ---- reverse process p -----------------------------------------------------------------------------

    def model_output(self, model: Model, x_t: Tensor, t: Tensor, **model_kwargs) -> Tensor:
        """The raw model output at process index t; the model sees the original timestep timestep_map[t].

        A bf16/fp16 output (autocast) is promoted to x_t's dtype: the loss terms (the VB's log-variances in
        particular) are computed in full precision.
        """
        out = model(x_t, self.original_timesteps(t), **model_kwargs)
        return out.to(x_t.dtype) if out.dtype != x_t.dtype and out.is_floating_point() else out

    def _split_output(self, model_output: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """(prediction, variance values or None), checking the channel count against the config."""
        channels = x_t.shape[1]
        expected = (x_t.shape[0], self.out_channels(channels), *x_t.shape[2:])
        if tuple(model_output.shape) != expected:
            raise ValueError(
                f"model output shape {tuple(model_output.shape)} does not match {expected} "
                f"(learn_sigma={self.config.learn_sigma}, x_t shape {tuple(x_t.shape)})"
            )
        if not self.config.learn_sigma:
            return model_output, None
        prediction, var_values = torch.split(model_output, channels, dim=1)
        return prediction, var_values

    def _model_log_variance(self, var_values: Tensor | None, x_t: Tensor, t: Tensor) -> Tensor:
        """log σ²_t: learned range (IDDPM eq. 15) or fixed small / large."""
        if var_values is not None:
            min_log = self._extract("posterior_log_variance_clipped", t, x_t)
            max_log = self._extract("log_betas", t, x_t)
            frac = (var_values + 1) / 2  # model outputs [-1, 1] for [posterior variance, β_t]
            return frac * max_log + (1 - frac) * min_log
        name = "posterior_log_variance_clipped" if self.config.sigma_small else "log_large_variance"
        return _full_like(self._extract(name, t, x_t), x_t)

    def _model_variance(self, log_variance: Tensor, t: Tensor, x_t: Tensor) -> Tensor:
        if self.config.learn_sigma:
            return torch.exp(log_variance)
        # Fixed variances are gathered directly (as official), not exp(log) of them.
        name = "posterior_variance" if self.config.sigma_small else "large_variance"
        return _full_like(self._extract(name, t, x_t), x_t)

    def p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = False
    ) -> dict[str, Tensor]:
        """p(x_{t-1} | x_t) from the RAW model output (N, C or 2C, ...).

        Returns mean, variance, log_variance and pred_xstart, all shaped like x_t. The mean is the
        posterior mean (DDPM eq. 7) at the predicted x0, which is clipped to [-1, 1] if asked.
        """
        prediction, var_values = self._split_output(model_output, x_t)
        log_variance = self._model_log_variance(var_values, x_t, t)
        pred_xstart = self._pred_xstart(prediction, x_t, t)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": self._model_variance(log_variance, t, x_t),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
        }

    # ---- per-step sampler updates (pure: the caller supplies the noise) --------------------------------

    def p_sample_step(self, out: dict[str, Tensor], t: Tensor, noise: Tensor) -> Tensor:
        """Ancestral step x_{t-1} = mean + σ_t z, with no noise at t = 0  (DDPM Algorithm 2)."""
        nonzero = _broadcast_to_batch((t != 0).to(out["mean"].dtype), out["mean"])
        return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise

    def ddim_step(
        self,
        model_output: Tensor,
        x_t: Tensor,
        t: Tensor,
        eta: float,
        noise: Tensor | None,
        clip_denoised: bool = False,
    ) -> dict[str, Tensor]:
        """DDIM step (Song et al. eq. 12) with σ_t = η sqrt((1−ᾱ_prev)/(1−ᾱ)) sqrt(1 − ᾱ/ᾱ_prev).

        ε is re-derived from pred_xstart so that x0/v models (and clipping) work; a learned variance is
        ignored. ``noise`` may be None only when eta == 0.
        """
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
        pred_xstart = out["pred_xstart"]
        eps = self.predict_eps_from_xstart(x_t, t, pred_xstart)
        alpha_bar = self._extract("alphas_cumprod", t, x_t)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, x_t)
        sigma = (
            eta
            * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        sample = pred_xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        if eta != 0:
            if noise is None:
                raise ValueError(f"ddim_step needs noise when eta != 0 (eta={eta!r})")
            nonzero = _broadcast_to_batch((t != 0).to(x_t.dtype), x_t)
            sample = sample + nonzero * sigma * noise
        return {"sample": sample, "pred_xstart": pred_xstart}

    # ---- training --------------------------------------------------------------------------------------

    def _vb_bits(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample VLB term in bits: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)), or the decoder NLL at t=0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(
            2.0
        )
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        decoder_nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)

    def _mse_target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        kind = self.config.prediction
        if kind == "eps":
            return noise
        if kind == "v":
            return self.predict_v(x0, t, noise)
        return x0

    def snr(self, t: Tensor) -> Tensor:
        """SNR = ᾱ/(1 − ᾱ) at the ORIGINAL timestep timestep_map[t], float64, shape (N,)."""
        table = self._table("original_alphas_cumprod", t.device)
        alpha_bar = table[self.original_timesteps(t).to(table.device)].to(t.device)
        return alpha_bar / (1.0 - alpha_bar)

    def min_snr_weight(self, t: Tensor) -> Tensor:
        """Min-SNR-γ weight of the mse term (Hang et al. 2023), float64 (N,).

        eps: min(snr, γ)/snr (MDTv2's min(snr, 5)/snr); x0: min(snr, γ); v: min(snr, γ)/(snr + 1).
        """
        snr = self.snr(t)
        clipped = torch.clamp(snr, max=float(self.config.min_snr_gamma))
        kind = self.config.prediction
        if kind == "eps":
            return clipped / snr
        if kind == "v":
            return clipped / (snr + 1)
        return clipped

    def _kl_losses(
        self, model: Model, x0: Tensor, x_t: Tensor, t: Tensor, model_kwargs: dict
    ) -> dict[str, Tensor]:
        """use_kl: the whole model output trained on the VLB, rescaled by T (official RESCALED_KL)."""
        vb = self._vb_bits(self.model_output(model, x_t, t, **model_kwargs), x0, x_t, t)
        return {"loss": vb * self.num_timesteps, "vb": vb}

    def training_losses(
        self,
        model: Model,
        x0: Tensor,
        t: Tensor,
        noise: Tensor | None = None,
        model_kwargs: dict | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample (N,) losses "loss", "mse" and (learned σ only) "vb"  (IDDPM hybrid loss, eq. 16).

        mse trains the prediction half; vb trains only the variance half because it sees the prediction
        through a stop-gradient. With min_snr_gamma set, "mse" is the Min-SNR-weighted term.
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        if self.config.use_kl:
            return self._kl_losses(model, x0, x_t, t, model_kwargs)
        prediction, var_values = self._split_output(self.model_output(model, x_t, t, **model_kwargs), x_t)
        terms = {"mse": mean_flat((self._mse_target(x0, t, noise) - prediction) ** 2)}
        if self.config.min_snr_gamma is not None:
            terms["mse"] = terms["mse"] * self.min_snr_weight(t).to(terms["mse"].dtype)
        terms["loss"] = terms["mse"]
        if var_values is not None:
            frozen_out = torch.cat([prediction.detach(), var_values], dim=1)
            terms["vb"] = self._vb_bits(frozen_out, x0, x_t, t)
            if self.config.rescale_learned_sigmas:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
            terms["loss"] = terms["mse"] + terms["vb"]
        return terms

    def loss(self, model: Model, x0: Tensor, y: Tensor | None = None, **model_kwargs) -> dict[str, Tensor]:
        """The training-loop objective; draws in DiT's ``train.py`` order: t ~ U{0..T-1} (``torch.randint`` on
        the data's device), then ε ~ N(0, I), then the model's own (label dropout, on the CPU generator).

        Returns the per-sample dict of ``training_losses``; the loop averages "loss".
        """
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        kwargs = dict(model_kwargs)
        if y is not None:
            kwargs["y"] = y
        return self.training_losses(model, x0, t, noise=noise, model_kwargs=kwargs)
