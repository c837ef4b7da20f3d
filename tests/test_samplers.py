"""Sampler specs: DDT's Heun (both modes) and DDT's own sampler against hand-written references of DDT's loops,
the specs' wiring into generate_latents, and the command line's sampler strings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import ditlab
from ditlab.objectives import DiffusionConfig, GaussianDiffusion
from ditlab.objectives.flow import FlowConfig
from ditlab.sampling import (
    DDIM,
    DDPM,
    CFGConfig,
    DDTEuler,
    Euler,
    EulerMaruyama,
    Guidance,
    Heun,
    classifier_free_guidance,
    generate_latents,
    parse_sampler,
    power_cosine_scale,
    sample_ddpm,
    sample_heun,
    time_grid,
)
from helpers import SMALL_MODELS

NULL = 10


def toy_net(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A per-sample, label-dependent, nonlinear velocity (elementwise, so batch layout cannot change its bits)."""
    t_, y_ = t.view(-1, 1, 1, 1), y.to(x.dtype).view(-1, 1, 1, 1)
    return torch.tanh(x) * (1 + t_) - 0.3 * x + 0.05 * y_


class Recorder:
    """A denoiser (x, t) -> v that records the t of every call."""

    def __init__(self, fn):
        self.fn, self.times = fn, []

    def __call__(self, x, t):
        self.times.append(float(t[0]))
        return self.fn(x, t)


def ddt_heun_reference(net, noise, y, scale, num_steps, last_step, shift, exact_henu):
    """DDT's ``flow_matching/sampling.py:HeunSampler._impl_sampling`` with its ODE step and simple guidance,
    written out by hand: [uncond; cond] batch, the corrector's slope reused unless exact, Euler at the last step."""
    grid = torch.cat([torch.linspace(0.0, 1 - last_step, num_steps), torch.tensor([1.0])])
    steps = grid / (grid + (1 - grid) * shift)
    condition = torch.cat([torch.full_like(y, NULL), y])

    def guided(x, t):
        uncond, cond = net(torch.cat([x, x]), t.repeat(len(x) * 2), condition).chunk(2)
        return uncond + scale * (cond - uncond)

    x, v_hat = noise, 0.0
    for i, (t_cur, t_next) in enumerate(zip(steps[:-1], steps[1:], strict=True)):
        dt = t_next - t_cur
        v = guided(x, t_cur) if i == 0 or exact_henu else v_hat
        x_hat = x + v * dt
        if i < num_steps - 1:
            v_hat = guided(x_hat, t_next)
            x = x + (v + v_hat) / 2 * dt
        else:
            x = x + v * dt
    return x


def ddt_euler_reference(net, noise, y, scale, num_steps, last_step, low, high):
    """DDT's ``stateful_flow_matching/sampling.py:EulerSampler`` (ODE): guidance only for low < t < high, else
    ``guidance_fn(out, 1.0)``."""
    grid = torch.cat([torch.linspace(0.0, 1 - last_step, num_steps), torch.tensor([1.0])])
    condition = torch.cat([torch.full_like(y, NULL), y])
    x = noise
    for t_cur, t_next in zip(grid[:-1], grid[1:], strict=True):
        uncond, cond = net(torch.cat([x, x]), t_cur.repeat(len(x) * 2), condition).chunk(2)
        w = scale if low < t_cur < high else 1.0
        x = x + (uncond + w * (cond - uncond)) * (t_next - t_cur)
    return x


def guided_toy(y, guidance: Guidance, sampler) -> torch.Tensor:
    cfg = guidance.config(sampler.guidance_scale(guidance, FlowConfig()), NULL)
    return classifier_free_guidance(sampler.model_fn(toy_net, FlowConfig()), y, cfg)


NOISE = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([1, 4, 7])

# ----------------------------------------------------------------------------
# Heun (issue 13, item 1).


@pytest.mark.parametrize(("exact", "calls"), [(False, 12), (True, 23)])
def test_heun_model_calls_and_times(exact, calls):
    grid = time_grid(12, 0.04, 1.0)
    recorder = Recorder(lambda x, t: toy_net(x, t, torch.zeros(len(x))))
    sample_heun(recorder, NOISE, grid, exact=exact)
    assert len(recorder.times) == calls == Heun(12, exact=exact).evaluations(FlowConfig())
    assert max(recorder.times) < 1.0  # the last step is Euler: the model never runs at t = 1
    expected = grid[:12].tolist() if not exact else [grid[0].item()] + [g for g in grid[1:12].tolist() for _ in (0, 1)]
    assert recorder.times == pytest.approx(expected, abs=0)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize(("steps", "last_step", "shift"), [(6, 0.04, 1.0), (5, 0.1, 3.0), (1, 0.04, 1.0)])
def test_heun_equals_ddts_heun_sampler(exact, steps, last_step, shift):
    heun = Heun(steps, last_step=last_step, shift=shift, exact=exact)
    guidance = Guidance(2.5)
    ours = heun.sample(guided_toy(LABELS, guidance, heun), NOISE, FlowConfig())
    reference = ddt_heun_reference(toy_net, NOISE, LABELS, 2.5, steps, last_step, shift, exact)
    assert torch.equal(ours, reference)


def test_heun_through_generate_latents_matches_ddt_on_a_ddt_model():
    torch.manual_seed(0)
    model = ditlab.create_model("DDT", **SMALL_MODELS["DDT"]).eval()
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    ours = generate_latents(model, FlowConfig(), LABELS, Heun(4), guidance=Guidance(2.0), seeds=[0, 1, 2])
    noise = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (0, 1, 2)])
    with torch.no_grad():
        reference = ddt_heun_reference(lambda x, t, y: model(x, t, y)[0], noise, LABELS, 2.0, 4, 0.04, 1.0, False)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# DDT's own sampler (issue 13, item 7).


@pytest.mark.parametrize("interval", [None, (0.3, 1.0)])
def test_ddt_euler_equals_ddts_stateful_sampler(interval):
    sampler = parse_sampler("ddt5", FlowConfig())
    assert sampler == DDTEuler(5) and (sampler.last_step, sampler.shift) == (0.04, 1.0)
    guidance = Guidance(3.0, interval=interval)
    ours = sampler.sample(guided_toy(LABELS, guidance, sampler), NOISE, FlowConfig())
    low, high = interval or (0.0, 1.0)  # DDT's defaults: guidance_interval_min=0, guidance_interval_max=1
    assert torch.equal(ours, ddt_euler_reference(toy_net, NOISE, LABELS, 3.0, 5, 0.04, low, high))


def test_plain_euler_guides_at_t_zero_where_ddt_does_not():
    guidance = Guidance(3.0)
    ddt = DDTEuler(5).sample(guided_toy(LABELS, guidance, DDTEuler(5)), NOISE, FlowConfig())
    ours = Euler(5).sample(guided_toy(LABELS, guidance, Euler(5)), NOISE, FlowConfig())
    everywhere = ddt_euler_reference(toy_net, NOISE, LABELS, 3.0, 5, 0.04, -1.0, 2.0)
    assert torch.equal(ours, everywhere) and not torch.allclose(ours, ddt)
    open_interval = Guidance(3.0, interval=(0.0, 1.0))  # the same setting spelled out on plain Euler
    assert torch.equal(Euler(5).sample(guided_toy(LABELS, open_interval, Euler(5)), NOISE, FlowConfig()), ddt)


# ----------------------------------------------------------------------------
# Specs wired into generate_latents.


def test_guidance_settings_reach_the_cfg_wrapper_and_the_process():
    torch.manual_seed(0)
    model = ditlab.create_model("DiT", **SMALL_MODELS["DiT"]).eval()
    objective = DiffusionConfig()
    guidance = Guidance(4.0, guided_channels=3, power=4.0, joint_batch=False)
    ours = generate_latents(model, objective, LABELS, DDPM("3"), guidance=guidance, seeds=[5, 6, 7])
    process = GaussianDiffusion(dataclasses.replace(objective, timestep_respacing="3"))
    cfg = CFGConfig(scale=power_cosine_scale(4.0, 4.0, 1000), null_class=10, guided_channels=3, joint_batch=False)
    generators = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    noise = torch.stack([torch.randn(4, 8, 8, generator=g) for g in generators])
    with torch.no_grad():
        reference = sample_ddpm(process, classifier_free_guidance(model, LABELS, cfg), noise, generator=generators)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("sampler", [DDPM("4", clip_denoised=True), DDIM(4, eta=1.0, clip_denoised=True)])
def test_clip_denoised_reaches_the_gaussian_samplers(sampler):
    torch.manual_seed(0)
    model = ditlab.create_model("DiT", **SMALL_MODELS["DiT"], learn_sigma=False).eval()
    for p in model.final_layer.parameters():  # an ε prediction far off, so x0 leaves [-1, 1]
        p.data.normal_(std=0.5)
    objective = DiffusionConfig(learn_sigma=False)
    clipped = generate_latents(model, objective, LABELS, sampler)
    free = generate_latents(model, objective, LABELS, dataclasses.replace(sampler, clip_denoised=False))
    assert clipped.abs().max() <= 1.0 + 1e-3 and free.abs().max() > 1.5


def test_sampler_and_guidance_must_fit_the_objective():
    model = ditlab.create_model("DiT", **SMALL_MODELS["DiT"])
    cases = [
        (FlowConfig(), DDIM(5), Guidance(), "DDIM samples Gaussian diffusion models; this model was trained under "
                                            "FlowConfig"),
        (DiffusionConfig(), Euler(5), Guidance(), "Euler samples flow-matching models"),
        (DiffusionConfig(), DDPM("5"), Guidance(2.0, interval=(0.3, 1.0)), "a guidance interval reads flow time"),
        (FlowConfig(), Heun(5), Guidance(2.0, power=4.0), "guidance power .* reads Gaussian timesteps"),
    ]
    for objective, sampler, guidance, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            generate_latents(model, objective, LABELS, sampler, guidance=guidance)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("make", "match"),
    [(lambda: DDPM("ten"), "DDPM steps='ten'"), (lambda: DDIM(0), "DDIM steps=0"), (lambda: DDIM(eta=-1), "eta"),
     (lambda: Euler(0), "steps=0"), (lambda: Heun(shift=0), "shift=0"), (lambda: EulerMaruyama(diffusion=-1), "-1"),
     (lambda: Guidance(interval=(1.0, 0.3)), "low < high"), (lambda: Guidance(power=0), "power must be > 0"),
     (lambda: Guidance(scale="2"), "scale must be a number")],
)
def test_spec_errors_are_one_line(make, match):
    with pytest.raises(ValueError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------
# The command line's strings.


def test_parse_sampler_strings():
    gaussian, flow = DiffusionConfig(), FlowConfig()
    assert parse_sampler("250", gaussian) == DDPM("250") == parse_sampler("ddpm250", gaussian)
    assert parse_sampler("10,20,30", gaussian) == DDPM("10,20,30")
    assert parse_sampler(" DDIM50 ", gaussian, eta=0.5) == DDIM(50, eta=0.5)
    assert parse_sampler("4", gaussian, clip_denoised=True) == DDPM("4", clip_denoised=True)
    assert parse_sampler("ddim4", flow, eta=1.0, clip_denoised=True) == Euler(4)  # Gaussian-only options
    assert parse_sampler("250", flow) == Euler(250) == parse_sampler("euler250", flow) == parse_sampler("ddim250", flow)
    assert parse_sampler("heun12", flow) == Heun(12) and parse_sampler("heun-exact12", flow) == Heun(12, exact=True)
    assert parse_sampler("sde50", flow) == EulerMaruyama(50) and parse_sampler("ddt250", flow) == DDTEuler(250)
    for text, objective, match in (("euler50", gaussian, "bad sampler 'euler50' for a Gaussian diffusion model; "
                                                          "expected N, ddpmN, ddimN"),
                                   ("heun0", flow, "bad sampler 'heun0' for a flow-matching model"),
                                   ("10,20", flow, "bad sampler '10,20'"), ("", gaussian, "bad sampler ''")):
        with pytest.raises(ValueError, match=match) as err:
            parse_sampler(text, objective)
        assert "\n" not in str(err.value)
