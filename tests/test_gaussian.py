"""GaussianDiffusion and schedules against the official DiT golden file and hand-computed equations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ditlab.objectives import DiffusionConfig, GaussianDiffusion, beta_schedule, space_timesteps
from ditlab.sampling import ddim_sample_step, ddpm_step

GOLDEN = Path(__file__).parent / "golden"
F32 = {"atol": 1e-5, "rtol": 1e-5}
F64 = {"atol": 1e-12, "rtol": 1e-10}
SCHEDULE_ARRAYS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def golden_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The manifest's ``deterministic_model`` (t on the original 0..999 scale)."""
    s = t.to(torch.float32).view(-1, 1, 1, 1) / 1000.0
    eps = 0.9 * x - 0.3 * s
    var_values = torch.tanh(0.5 * x) * (1.0 - 2.0 * s)
    return torch.cat([eps, var_values], dim=1)


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "diffusion_dit.safetensors")


@pytest.fixture(scope="module")
def d1000() -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig())


@pytest.fixture(scope="module")
def ddim50() -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig(timestep_respacing="ddim50"))


def test_manifest_matches_the_model_written_here():
    manifest = json.loads((GOLDEN / "MANIFEST.json").read_text())
    entry = manifest["files"]["diffusion_dit.safetensors"]
    assert "eps = 0.9 * x - 0.3 * s" in entry["deterministic_model"]
    assert "torch.tanh(0.5 * x) * (1.0 - 2.0 * s)" in entry["deterministic_model"]


# ---- golden parity ----


@pytest.mark.parametrize("name", SCHEDULE_ARRAYS)
def test_schedule_arrays_match_official(golden, d1000, name):
    np.testing.assert_allclose(getattr(d1000, name), golden[f"schedule.1000.{name}"].numpy(), **F64)


@pytest.mark.parametrize("spacing", ["ddim50", "50", "250"])
def test_respaced_map_and_betas_match_official(golden, spacing):
    diffusion = GaussianDiffusion(DiffusionConfig(timestep_respacing=spacing))
    expected_map = golden[f"schedule.respaced_{spacing}.timestep_map"]
    assert diffusion.timestep_map.dtype == torch.int64
    assert torch.equal(diffusion.timestep_map, expected_map)
    assert space_timesteps(1000, spacing) == expected_map.tolist()
    np.testing.assert_allclose(diffusion.betas, golden[f"schedule.respaced_{spacing}.betas"].numpy(), **F64)


def test_q_sample(golden, d1000):
    x_t = d1000.q_sample(golden["input.x_start"], golden["input.t"], golden["input.noise"])
    torch.testing.assert_close(x_t, golden["output.q_sample"], **F32)


def test_training_losses(golden, d1000):
    terms = d1000.training_losses(
        golden_model, golden["input.x_start"], golden["input.t"], noise=golden["input.noise"]
    )
    for key in ("loss", "mse", "vb"):
        torch.testing.assert_close(terms[key], golden[f"output.training_losses.{key}"], **F32)


@pytest.mark.parametrize("clip", ["noclip", "clip"])
def test_p_mean_variance(golden, d1000, clip):
    x_t, t = golden["output.q_sample"], golden["input.t"]
    out = d1000.p_mean_variance(
        d1000.model_output(golden_model, x_t, t), x_t, t, clip_denoised=clip == "clip"
    )
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
        torch.testing.assert_close(out[key], golden[f"output.p_mean_variance.{clip}.{key}"], **F32)


def test_p_sample_with_stored_noise(golden, d1000):
    x_t, t = golden["output.q_sample"], golden["input.t"]
    out = d1000.p_mean_variance(d1000.model_output(golden_model, x_t, t), x_t, t)
    sample = d1000.p_sample_step(out, t, golden["input.p_sample_noise"])
    torch.testing.assert_close(sample, golden["output.p_sample.sample"], **F32)
    torch.testing.assert_close(out["pred_xstart"], golden["output.p_sample.pred_xstart"], **F32)


def test_p_sample_reproduces_the_rng_call(golden, d1000):
    torch.manual_seed(20)
    step = ddpm_step(d1000, golden_model, golden["output.q_sample"], golden["input.t"])
    torch.testing.assert_close(step["sample"], golden["output.p_sample.sample"], **F32)
    torch.testing.assert_close(step["pred_xstart"], golden["output.p_sample.pred_xstart"], **F32)


def test_ddim50_p_mean_variance_and_p_sample(golden, ddim50):
    x, t = golden["input.ddim50.x"], golden["input.ddim50.t"]
    out = ddim50.p_mean_variance(ddim50.model_output(golden_model, x, t), x, t)
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
        torch.testing.assert_close(out[key], golden[f"output.ddim50.p_mean_variance.noclip.{key}"], **F32)
    torch.manual_seed(20)
    step = ddpm_step(ddim50, golden_model, x, t)
    torch.testing.assert_close(step["sample"], golden["output.ddim50.p_sample.sample"], **F32)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_with_stored_noise(golden, ddim50, eta):
    x, t = golden["input.ddim50.x"], golden["input.ddim50.t"]
    out = ddim50.ddim_step(ddim50.model_output(golden_model, x, t), x, t, eta, golden["input.ddim50.noise"])
    prefix = f"output.ddim50.ddim_sample.eta{int(eta)}"
    torch.testing.assert_close(out["sample"], golden[f"{prefix}.sample"], **F32)
    torch.testing.assert_close(out["pred_xstart"], golden[f"{prefix}.pred_xstart"], **F32)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_sample_step_reproduces_the_rng_call(golden, ddim50, eta):
    torch.manual_seed(21)
    out = ddim_sample_step(ddim50, golden_model, golden["input.ddim50.x"], golden["input.ddim50.t"], eta=eta)
    torch.testing.assert_close(
        out["sample"], golden[f"output.ddim50.ddim_sample.eta{int(eta)}.sample"], **F32
    )


def test_respaced_model_sees_original_timesteps(ddim50):
    seen = []

    def spy(x, t):
        seen.append(t.clone())
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    ddim50.model_output(spy, torch.zeros(3, 4, 2, 2), torch.tensor([0, 1, 49]))
    assert seen[0].tolist() == [0, 20, 980]


# ---- equations ----


def test_linear_schedule_endpoints_scale_with_T():
    betas = beta_schedule("linear", 250)
    assert betas.dtype == np.float64
    assert betas[0] == pytest.approx(4 * 1e-4, abs=1e-15) and betas[-1] == pytest.approx(4 * 0.02, abs=1e-15)


def test_cosine_schedule_endpoints():
    betas = beta_schedule("cosine", 1000)
    f = [math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2 for s in (0.0, 0.001)]
    assert betas[0] == pytest.approx(1 - f[1] / f[0], rel=1e-12)
    assert betas[-1] == 0.999  # ᾱ(1) = cos²(π/2) = 0 -> the cap
    assert np.all(np.diff(betas) > 0) and np.all(betas > 0)
    np.testing.assert_array_equal(beta_schedule("squaredcos_cap_v2", 1000), betas)


def test_space_timesteps_sections():
    assert space_timesteps(300, "10,15,20")[:3] == [0, 11, 22]
    assert len(space_timesteps(300, "10,15,20")) == 45
    assert space_timesteps(300, [10, 15, 20]) == space_timesteps(300, "10,15,20")
    assert space_timesteps(10, "ddim5") == [0, 2, 4, 6, 8]
    assert space_timesteps(1000, "1000") == list(range(1000))


def test_min_snr_weights_by_hand():
    t = torch.tensor([0, 100, 500, 999])
    alpha_bar = np.cumprod(1 - beta_schedule("linear", 1000))[[0, 100, 500, 999]]
    snr = alpha_bar / (1 - alpha_bar)
    for prediction, expected in [
        ("eps", np.minimum(snr, 5) / snr),
        ("x0", np.minimum(snr, 5)),
        ("v", np.minimum(snr, 5) / (snr + 1)),
    ]:
        diffusion = GaussianDiffusion(DiffusionConfig(prediction=prediction, min_snr_gamma=5.0))
        np.testing.assert_allclose(diffusion.min_snr_weight(t).numpy(), expected, rtol=1e-12)
    assert expected[0] == pytest.approx(5 / (snr[0] + 1))  # large SNR: clipped at γ
    assert np.minimum(snr, 5)[3] / snr[3] == 1.0  # small SNR: eps weight 1


def test_min_snr_uses_original_timesteps_when_respaced():
    full = GaussianDiffusion(DiffusionConfig(min_snr_gamma=5.0))
    spaced = GaussianDiffusion(DiffusionConfig(min_snr_gamma=5.0, timestep_respacing="ddim50"))
    torch.testing.assert_close(
        spaced.snr(torch.tensor([1, 25])), full.snr(torch.tensor([20, 500])), rtol=0, atol=0
    )


def test_min_snr_multiplies_only_the_mse_term():
    x0, t, noise = torch.randn(4, 2, 3, 3), torch.tensor([0, 3, 400, 999]), torch.randn(4, 2, 3, 3)
    plain = GaussianDiffusion(DiffusionConfig()).training_losses(golden_model, x0, t, noise=noise)
    weighted_diffusion = GaussianDiffusion(DiffusionConfig(min_snr_gamma=5.0))
    weighted = weighted_diffusion.training_losses(golden_model, x0, t, noise=noise)
    weight = weighted_diffusion.min_snr_weight(t).float()
    torch.testing.assert_close(weighted["mse"], plain["mse"] * weight)
    torch.testing.assert_close(weighted["vb"], plain["vb"])
    torch.testing.assert_close(weighted["loss"], plain["mse"] * weight + plain["vb"])


def test_eps_x0_v_round_trips():
    diffusion = GaussianDiffusion(DiffusionConfig())
    x0, eps = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 500, 998])
    x_t = diffusion.q_sample(x0, t, eps)
    v = diffusion.predict_v(x0, t, eps)
    torch.testing.assert_close(diffusion.predict_xstart_from_eps(x_t, t, eps), x0)
    torch.testing.assert_close(diffusion.predict_eps_from_xstart(x_t, t, x0), eps)
    torch.testing.assert_close(diffusion.predict_xstart_from_v(x_t, t, v), x0)
    torch.testing.assert_close(diffusion.predict_eps_from_v(x_t, t, v), eps)
    a, s = math.sqrt(diffusion.alphas_cumprod[500]), math.sqrt(1 - diffusion.alphas_cumprod[500])
    torch.testing.assert_close(v[1], a * eps[1] - s * x0[1])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_perfect_prediction_has_zero_mse_and_exact_posterior_mean(prediction):
    diffusion = GaussianDiffusion(DiffusionConfig(prediction=prediction, learn_sigma=False))
    x0, noise, t = (
        torch.randn(3, 2, 4, 4, dtype=torch.float64),
        torch.randn(3, 2, 4, 4, dtype=torch.float64),
        None,
    )
    t = torch.tensor([0, 10, 700])
    target = {"eps": noise, "x0": x0, "v": diffusion.predict_v(x0, t, noise)}[prediction]
    terms = diffusion.training_losses(lambda x, ts: target, x0, t, noise=noise)
    assert set(terms) == {"loss", "mse"}
    torch.testing.assert_close(terms["loss"], torch.zeros(3, dtype=torch.float64))
    x_t = diffusion.q_sample(x0, t, noise)
    out = diffusion.p_mean_variance(target, x_t, t)
    torch.testing.assert_close(out["mean"], diffusion.q_posterior_mean_variance(x0, x_t, t)[0])


def test_fixed_variances():
    t, x = torch.tensor([0, 1, 999]), torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    large = GaussianDiffusion(DiffusionConfig(learn_sigma=False))
    out = large.p_mean_variance(x, x, t)
    expected = [large.posterior_variance[1], large.betas[1], large.betas[999]]
    torch.testing.assert_close(out["variance"][:, 0, 0, 0], torch.tensor(expected, dtype=torch.float64))
    small = GaussianDiffusion(DiffusionConfig(learn_sigma=False, sigma_small=True))
    out = small.p_mean_variance(x, x, t)
    torch.testing.assert_close(
        out["variance"][:, 0, 0, 0], torch.from_numpy(small.posterior_variance[[0, 1, 999]])
    )


def test_rescale_learned_sigmas_and_use_kl():
    x0, t, noise = torch.randn(2, 2, 3, 3), torch.tensor([0, 249]), torch.randn(2, 2, 3, 3)
    base = GaussianDiffusion(DiffusionConfig(timestep_respacing="250")).training_losses(
        golden_model, x0, t, noise
    )
    rescaled = GaussianDiffusion(DiffusionConfig(timestep_respacing="250", rescale_learned_sigmas=True))
    torch.testing.assert_close(rescaled.training_losses(golden_model, x0, t, noise)["vb"], base["vb"] * 0.25)
    kl = GaussianDiffusion(DiffusionConfig(use_kl=True)).training_losses(golden_model, x0, t, noise)
    full = GaussianDiffusion(DiffusionConfig()).training_losses(golden_model, x0, t, noise)
    torch.testing.assert_close(kl["loss"], full["vb"] * 1000)


def test_loss_interface_draws_t_then_noise():
    diffusion = GaussianDiffusion(DiffusionConfig())
    seen = {}

    def model(x, t, y=None, extra=None):
        seen.update(t=t, y=y, extra=extra)
        return golden_model(x, t)

    x0 = torch.randn(5, 4, 2, 2)
    torch.manual_seed(7)
    terms = diffusion.loss(model, x0, y=torch.arange(5), extra="kw")
    torch.manual_seed(7)
    t = torch.randint(0, 1000, (5,))
    noise = torch.randn_like(x0)
    assert torch.equal(seen["t"], t) and torch.equal(seen["y"], torch.arange(5)) and seen["extra"] == "kw"
    expected = diffusion.training_losses(golden_model, x0, t, noise=noise)
    for key in ("loss", "mse", "vb"):
        assert terms[key].shape == (5,)
        torch.testing.assert_close(terms[key], expected[key])
    diffusion.loss(model, x0)
    assert seen["y"] is None  # y omitted from the kwargs when None


def test_vb_trains_only_the_variance_half():
    diffusion = GaussianDiffusion(DiffusionConfig())
    x0, t = torch.randn(2, 2, 3, 3), torch.tensor([5, 600])
    output = torch.randn(2, 4, 3, 3, requires_grad=True)
    diffusion.training_losses(lambda x, ts: output, x0, t)["vb"].sum().backward()
    assert output.grad[:, :2].abs().max() == 0 and output.grad[:, 2:].abs().max() > 0


def test_out_channels():
    assert GaussianDiffusion(DiffusionConfig()).out_channels(4) == 8
    assert GaussianDiffusion(DiffusionConfig(learn_sigma=False)).out_channels(4) == 4


def test_with_respacing_keeps_the_rest_of_the_config():
    spaced = GaussianDiffusion(DiffusionConfig(prediction="v")).with_respacing("250")
    assert (
        spaced.num_timesteps == 250 and spaced.config.prediction == "v" and spaced.original_num_steps == 1000
    )


# ---- bad inputs ----


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"schedule": "quadratic"}, "'quadratic'"),
        ({"prediction": "eps2"}, "'eps2'"),
        ({"num_timesteps": 0}, "0"),
        ({"min_snr_gamma": -1.0}, "-1.0"),
        ({"timestep_respacing": "ddim41"}, "ddim41"),
        ({"timestep_respacing": "abc"}, "'abc'"),
        ({"timestep_respacing": "1"}, "'1'"),
    ],
)
def test_config_errors_name_the_bad_value(kwargs, named):
    with pytest.raises(ValueError, match=named):
        DiffusionConfig(**kwargs)


def test_schedule_and_respacing_errors():
    with pytest.raises(ValueError, match="'sigmoid'.*linear, cosine"):
        beta_schedule("sigmoid", 10)
    with pytest.raises(ValueError, match="exactly 41 steps"):
        space_timesteps(1000, "ddim41")
    with pytest.raises(ValueError, match="'ddimx'"):
        space_timesteps(1000, "ddimx")
    with pytest.raises(ValueError, match="section of 3 steps into 5"):
        space_timesteps(9, "5,1,1")
    with pytest.raises(ValueError, match="'10,a'"):
        space_timesteps(100, "10,a")


def test_wrong_model_output_channels_are_reported():
    diffusion = GaussianDiffusion(DiffusionConfig())
    x = torch.zeros(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"\(2, 4, 3, 3\) does not match \(2, 8, 3, 3\)"):
        diffusion.p_mean_variance(x, x, torch.tensor([1, 2]))
