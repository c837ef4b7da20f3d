"""DDPM / DDIM samplers: determinism, per-sample generators, and analytic problems with known answers."""

from __future__ import annotations

import pytest
import torch

from ditlab.objectives import DiffusionConfig, GaussianDiffusion
from ditlab.sampling import randn_like, sample_ddim, sample_ddpm


def golden_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The golden file's deterministic "model" (eps + learned-range values), per-sample by construction."""
    s = t.to(torch.float32).view(-1, 1, 1, 1) / 1000.0
    return torch.cat([0.9 * x - 0.3 * s, torch.tanh(0.5 * x) * (1.0 - 2.0 * s)], dim=1)


def ideal_gaussian_eps(diffusion: GaussianDiffusion, mu: float, std: float):
    """E[ε | x_t] when the data are N(mu, std²): sqrt(1−ᾱ)(x_t − sqrt(ᾱ) mu) / (ᾱ std² + 1 − ᾱ).

    The denoiser receives ORIGINAL timesteps, so ᾱ is taken from the original (unspaced) schedule.
    """
    alphas_cumprod = torch.from_numpy(diffusion.original_alphas_cumprod)

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alphas_cumprod[t].to(x.dtype).view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * std**2 + 1 - a)

    return denoiser


def per_sample_generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_ddim_eta0_is_deterministic():
    diffusion = GaussianDiffusion(DiffusionConfig(timestep_respacing="ddim10"))
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    first = sample_ddim(diffusion, golden_model, noise)
    torch.manual_seed(2)
    second = sample_ddim(diffusion, golden_model, noise)
    assert torch.equal(first, second)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta1"])
def test_per_sample_generators_do_not_depend_on_batch(sampler):
    diffusion = GaussianDiffusion(DiffusionConfig(timestep_respacing="20"))
    seeds = [11, 12, 13]

    def run(indices: list[int]) -> torch.Tensor:
        generators = per_sample_generators([seeds[i] for i in indices])
        noise = torch.stack([torch.randn(4, 4, 4, generator=g) for g in generators])
        if sampler == "ddpm":
            return sample_ddpm(diffusion, golden_model, noise, generator=generators)
        return sample_ddim(diffusion, golden_model, noise, eta=1.0, generator=generators)

    batch = run([0, 1, 2])
    for i in range(3):
        torch.testing.assert_close(run([i])[0], batch[i], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


def test_randn_like_generator_forms():
    x = torch.zeros(2, 3)
    torch.testing.assert_close(
        randn_like(x, torch.Generator().manual_seed(5)),
        torch.randn(2, 3, generator=torch.Generator().manual_seed(5)),
    )
    g1, g2 = per_sample_generators([1, 2])
    expected = torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])
    torch.testing.assert_close(randn_like(x, [g1, g2]), expected)
    torch.manual_seed(3)
    first = randn_like(x)
    torch.manual_seed(3)
    torch.testing.assert_close(first, torch.randn_like(x))
    with pytest.raises(ValueError, match="got 3 generators for a batch of 2"):
        randn_like(x, per_sample_generators([1, 2, 3]))


def test_ddpm_recovers_a_point_mass():
    # Data = the single point c: the ideal ε-model makes pred_xstart = c at every step, and the t=0 posterior
    # mean is exactly pred_xstart, so the sampler must land on c.
    diffusion = GaussianDiffusion(DiffusionConfig(learn_sigma=False))
    c = 0.7
    denoiser = ideal_gaussian_eps(diffusion, c, 0.0)
    out = sample_ddpm(
        diffusion,
        denoiser,
        torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0)),
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(out, torch.full_like(out, c), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("sampler", "respacing", "sigma_small"),
    [("ddpm", "", False), ("ddpm", "", True), ("ddpm", "250", False), ("ddim", "", False)],
)
def test_samplers_reproduce_a_gaussian_data_distribution(sampler, respacing, sigma_small):
    mu, std = 0.5, 0.3
    diffusion = GaussianDiffusion(
        DiffusionConfig(learn_sigma=False, sigma_small=sigma_small, timestep_respacing=respacing)
    )
    denoiser = ideal_gaussian_eps(diffusion, mu, std)
    noise = torch.randn(1, 1, 96, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    if sampler == "ddpm":
        samples = sample_ddpm(diffusion, denoiser, noise, generator=generator)
    else:
        samples = sample_ddim(diffusion, denoiser, noise, eta=0.0, generator=generator)
    # 9216 samples: the standard errors are ~0.003 (mean) and ~0.002 (std). Few-step DDIM is biased
    # (std 0.25 at ddim25 here), so the deterministic sampler is checked over all 1000 steps.
    assert samples.mean().item() == pytest.approx(mu, abs=0.01)
    assert samples.std().item() == pytest.approx(std, abs=0.01)


def test_callback_and_progress():
    diffusion = GaussianDiffusion(DiffusionConfig(timestep_respacing="5"))
    calls = []
    noise = torch.randn(1, 4, 2, 2)
    final = sample_ddpm(
        diffusion,
        golden_model,
        noise,
        progress=True,
        callback=lambda i, x, pred: calls.append((i, x.clone(), pred.shape)),
    )
    assert [c[0] for c in calls] == [4, 3, 2, 1, 0]
    assert torch.equal(calls[-1][1], final) and calls[0][2] == noise.shape


def test_global_rng_ddpm_matches_hand_loop():
    # generator=None: each step draws torch.randn_like(x) after the model call, as official p_sample_loop.
    diffusion = GaussianDiffusion(DiffusionConfig(timestep_respacing="4"))
    noise = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(9)
    got = sample_ddpm(diffusion, golden_model, noise)
    torch.manual_seed(9)
    x = noise
    for i in (3, 2, 1, 0):
        t = torch.full((2,), i)
        out = diffusion.p_mean_variance(golden_model(x, diffusion.timestep_map[t]), x, t)
        x = diffusion.p_sample_step(out, t, torch.randn_like(x))
    torch.testing.assert_close(got, x)


def test_sampler_errors():
    diffusion = GaussianDiffusion(DiffusionConfig(timestep_respacing="5"))
    with pytest.raises(ValueError, match="eta must be >= 0, got -0.5"):
        sample_ddim(diffusion, golden_model, torch.zeros(1, 4, 2, 2), eta=-0.5)
    with pytest.raises(ValueError, match="needs noise when eta != 0"):
        diffusion.ddim_step(torch.zeros(1, 8, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor([2]), 0.5, None)
