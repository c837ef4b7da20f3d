"""Flow matching (DDT's linear path) and the flow samplers on an exactly solvable Gaussian problem (REPA:
test_repa.py)."""

from __future__ import annotations

import pytest
import torch

import ditlab
from ditlab.objectives.flow import FlowConfig, FlowMatching
from ditlab.sampling import Euler, Guidance, Heun, generate_latents, parse_sampler
from ditlab.sampling.guidance import CFGConfig, classifier_free_guidance
from ditlab.sampling.ode import (
    guidance_interval,
    sample_euler,
    sample_euler_maruyama,
    sample_heun,
    shift_time,
    time_grid,
)

TINY_DDT = dict(in_channels=4, num_groups=2, hidden_size=32, num_blocks=3, num_encoder_blocks=2, patch_size=2,
                num_classes=10, input_size=8)

# ----------------------------------------------------------------------------
# The objective.


def test_path_convention_t0_noise_t1_data():
    x, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    fm = FlowMatching()
    assert torch.equal(fm.interpolate(x, eps, torch.zeros(3)), eps)
    assert torch.equal(fm.interpolate(x, eps, torch.ones(3)), x)
    t = torch.tensor([0.2, 0.5, 0.9])
    x_t = fm.interpolate(x, eps, t)
    torch.testing.assert_close(x_t[1], 0.5 * x[1] + 0.5 * eps[1])
    v = fm.target(x, eps)
    torch.testing.assert_close(v, x - eps)
    torch.testing.assert_close(fm.data_from_velocity(x_t, v, t), x)
    # score = -eps / sigma with sigma = 1 - t
    torch.testing.assert_close(fm.score_from_velocity(x_t, v, t), -eps / (1 - t).view(-1, 1, 1, 1))


def test_loss_is_the_velocity_mse_and_takes_the_first_tuple_element():
    x, eps, t = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2), torch.tensor([0.25, 0.75])
    seen = {}

    def model(x_t, t_model, y):
        seen["t"] = t_model
        return 2 * x_t, "state"  # a DDT-like (v, s) output

    terms = FlowMatching(FlowConfig(time_scale=1000.0)).training_losses(model, x, t, eps, {"y": torch.zeros(2)})
    x_t = t.view(-1, 1, 1, 1) * x + (1 - t.view(-1, 1, 1, 1)) * eps
    expected = ((2 * x_t - (x - eps)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["loss"], expected)
    torch.testing.assert_close(seen["t"], t * 1000)  # time_scale: what a DiT embedder may want


def test_t_sampling_laws_draw_as_ddt():
    torch.manual_seed(5)
    expected = torch.randn(6).sigmoid()
    torch.manual_seed(5)
    torch.testing.assert_close(FlowMatching().sample_t(6), expected)
    torch.manual_seed(5)
    expected = torch.rand(6)
    torch.manual_seed(5)
    torch.testing.assert_close(FlowMatching(FlowConfig(t_sampling="uniform")).sample_t(6), expected)
    torch.manual_seed(0)
    t = FlowMatching(FlowConfig(logit_mean=1.0, logit_std=0.5)).sample_t(20000)
    assert abs(float(torch.logit(t).mean()) - 1.0) < 0.02 and abs(float(torch.logit(t).std()) - 0.5) < 0.02


def test_dit_trains_under_flow_matching_sit():
    model = ditlab.create_model("DiT", input_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=2,
                                num_classes=10, learn_sigma=False)
    terms = FlowMatching().loss(model, torch.randn(4, 4, 8, 8), torch.arange(4))
    assert terms["loss"].shape == (4,) and torch.isfinite(terms["loss"]).all()
    terms["loss"].mean().backward()
    assert model.final_layer.linear.weight.grad is not None


def test_bad_flow_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="t_sampling='normal' is not one of uniform, logit-normal"):
        FlowConfig(t_sampling="normal")
    with pytest.raises(ValueError, match="bad sampler 'rk4' for a flow-matching model; expected N, eulerN"):
        parse_sampler("rk4", FlowConfig())
    with pytest.raises(ValueError, match="last_step=0.0 must be in"):
        Euler(last_step=0.0)
    with pytest.raises(ValueError, match="bad sampler 'dpm20'"):
        parse_sampler("dpm20", FlowConfig())


# ----------------------------------------------------------------------------
# Time grid and guidance interval.


def test_ddt_time_grid():
    grid = time_grid(250, 0.04, 1.0)
    assert grid.shape == (251,) and grid[0] == 0 and grid[-1] == 1
    torch.testing.assert_close(grid[:-1], torch.linspace(0, 0.96, 250))
    shifted = time_grid(10, 0.1, 3.0)
    base = torch.cat([torch.linspace(0, 0.9, 10), torch.tensor([1.0])])
    torch.testing.assert_close(shifted, base / (base + (1 - base) * 3.0))
    assert torch.all(shifted[1:-1] < base[1:-1])  # s > 1 moves the inner steps toward the noise end
    torch.testing.assert_close(time_grid(4), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))  # last_step None: uniform
    torch.testing.assert_close(shift_time(torch.tensor([0.0, 0.5, 1.0]), 2.0), torch.tensor([0.0, 1 / 3, 1.0]))


def test_guidance_interval_is_strict_and_reuses_cfg():
    scale = guidance_interval(2.0, 0.3, 1.0)
    torch.testing.assert_close(scale(torch.tensor([0.0, 0.3, 0.31, 0.99, 1.0])),
                               torch.tensor([1.0, 1.0, 2.0, 2.0, 1.0]))

    def model(x, t, y):  # cond (y=1) and uncond (y=0, the null class) differ by y
        return x + y.view(-1, 1).float()

    denoise = classifier_free_guidance(model, torch.ones(2, dtype=torch.long), CFGConfig(scale=scale, null_class=0))
    x = torch.zeros(2, 3)
    torch.testing.assert_close(denoise(x, torch.tensor([0.1, 0.1])), torch.ones(2, 3))  # outside: conditional
    torch.testing.assert_close(denoise(x, torch.tensor([0.5, 0.5])), torch.full((2, 3), 2.0))  # inside: w = 2


# ----------------------------------------------------------------------------
# Samplers on the linear Gaussian problem: data N(mu, sig^2) per dimension, so the exact velocity is linear in x
# and the ODE carries z ~ N(0, 1) to mu + sig z.

MU = torch.tensor([1.5, -0.5], dtype=torch.float64)
SIG = torch.tensor([0.5, 2.0], dtype=torch.float64)


def exact_velocity(x, t):
    t = t.reshape(-1, 1).to(x.dtype)
    var = t**2 * SIG**2 + (1 - t) ** 2
    return MU + (t * SIG**2 - (1 - t)) / var * (x - t * MU)


def ode_error(sampler, steps, shift=1.0):
    z = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = sampler(exact_velocity, z, time_grid(steps, None, shift).double())
    return float((out - (MU + SIG * z)).abs().max())


def test_euler_converges_to_the_exact_transport_at_first_order():
    errors = [ode_error(sample_euler, n) for n in (20, 40, 80)]
    assert errors[-1] < 0.2
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert 1.7 < coarse / fine < 2.3


@pytest.mark.parametrize("exact", [False, True])  # DDT's exact_henu: reuse the corrector's slope, or not
def test_heun_converges_at_second_order(exact):
    def heun(*args):
        return sample_heun(*args, exact=exact)

    errors = [ode_error(heun, n) for n in (10, 20, 40)]
    assert errors[-1] < 5e-3
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert 3.5 < coarse / fine < 5.0
    assert ode_error(heun, 200, shift=3.0) < 1e-3  # any monotone grid works


def test_heun_reusing_slopes_beats_exact_heun_at_equal_model_calls():
    def exact(*args):
        return sample_heun(*args, exact=True)

    assert ode_error(sample_heun, 20) < ode_error(exact, 10) / 2  # 20 calls vs 19 calls


def test_euler_maruyama_reaches_the_data_distribution():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 2, dtype=torch.float64, generator=gen)
    out = sample_euler_maruyama(exact_velocity, z, time_grid(100).double(), diffusion=1.0, generator=gen)
    torch.testing.assert_close(out.mean(0), MU, atol=0.03, rtol=0)
    torch.testing.assert_close(out.std(0), SIG, atol=0, rtol=0.03)
    # and it is stochastic: not the ODE's deterministic map
    assert float((out - (MU + SIG * z)).abs().mean()) > 0.1


# ----------------------------------------------------------------------------
# The sampling entry point with a flow objective.


def test_generate_latents_flow_branch_is_seeded_and_guided():
    torch.manual_seed(0)
    model = ditlab.create_model("DDT", **TINY_DDT)
    for p in model.final_layer.parameters():
        p.data.normal_(std=0.05)
    labels, guided = torch.tensor([1, 2]), Guidance(2.0, interval=(0.3, 1.0))
    a = generate_latents(model, FlowConfig(), labels, parse_sampler("euler4", FlowConfig()), guidance=guided)
    b = generate_latents(model, FlowConfig(), labels, parse_sampler("ddim4", FlowConfig()), guidance=guided)
    assert torch.equal(a, b)  # "ddimN" means the deterministic Euler ODE for flow
    plain = generate_latents(model, FlowConfig(), labels, parse_sampler("4", FlowConfig()))
    assert not torch.allclose(a, plain)
    heun = generate_latents(model, FlowConfig(), labels, Heun(3), seeds=[0, 1])
    alone = generate_latents(model, FlowConfig(), labels[1:], Heun(3), seeds=[1])
    torch.testing.assert_close(heun[1:], alone)  # seed per image: batch composition does not matter
