"""Flow matching (DDT's linear path), the flow samplers on an exactly solvable Gaussian problem, and REPA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ditlab
from ditlab.models.repa import (
    REPAConfig,
    REPAFlowMatching,
    build_projector,
    cosine_alignment_loss,
    dinov2_preprocess,
    match_token_count,
)
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
from ditlab.train import TrainConfig, train
from ditlab.train.objective import build_objective

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


# ----------------------------------------------------------------------------
# REPA.


class TinyEncoder(nn.Module):
    """A stand-in vision encoder: 4x4 patches of the image -> 12-dim features."""

    width = 12

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 12, 4, stride=4)

    def forward(self, images):
        return self.proj(dinov2_preprocess(images)).flatten(2).transpose(1, 2)


def test_projector_has_the_official_layout():
    proj = build_projector(32, 32, 12)
    assert list(proj.state_dict()) == ["0.0.weight", "0.0.bias", "0.2.weight", "0.2.bias", "0.4.weight", "0.4.bias"]
    assert isinstance(proj[0][1], nn.SiLU) and proj[0][4].out_features == 12


def test_cosine_alignment_loss_values_and_token_rescaling():
    a = torch.randn(2, 4, 6)
    torch.testing.assert_close(cosine_alignment_loss(a, a), torch.zeros(2))
    torch.testing.assert_close(cosine_alignment_loss(a, -3 * a), torch.full((2,), 2.0))
    constant = torch.ones(2, 1, 6)  # one token, upsampled bilinearly to 4 equal tokens
    assert torch.equal(match_token_count(constant, 4), torch.ones(2, 4, 6))
    with pytest.raises(ValueError, match="cannot rescale 3 feature tokens to 4"):
        match_token_count(torch.ones(1, 3, 6), 4)


def test_dinov2_preprocess_follows_the_official_steps():
    images = torch.zeros(1, 3, 256, 256)  # grey 0.5 after [-1, 1] -> [0, 1]
    out = dinov2_preprocess(images)
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out[0, :, 0, 0], (0.5 - torch.tensor([0.485, 0.456, 0.406])) /
                               torch.tensor([0.229, 0.224, 0.225]))
    assert dinov2_preprocess(torch.zeros(1, 1, 16, 16)).shape == (1, 3, 14, 14)  # grey digits become RGB


def test_repa_loss_adds_half_the_alignment_of_the_hooked_block():
    torch.manual_seed(0)
    model = ditlab.create_model("DDT", **TINY_DDT)
    objective = REPAFlowMatching(FlowMatching(), REPAConfig(enabled=True, align_layer=2), 32, TinyEncoder())
    captured = []
    model.blocks[1].register_forward_hook(lambda _m, _i, out: captured.append(out))
    images = torch.randn(3, 3, 32, 32).clamp(-1, 1)  # pixel space: the model's x are the images
    model_x = nn.functional.avg_pool2d(images, 4)[:, :3]
    model_x = torch.cat([model_x, model_x[:, :1]], dim=1)  # 4 channels, 8x8
    objective.to_images = lambda x: images
    torch.manual_seed(1)
    terms = objective.loss(model, model_x, torch.tensor([0, 1, 10]))
    expected_cos = cosine_alignment_loss(objective.proj(captured[0]), objective.encoder(images))
    torch.testing.assert_close(terms["cos"], expected_cos)
    torch.testing.assert_close(terms["loss"], terms["fm"] + 0.5 * terms["cos"])
    terms["loss"].mean().backward()
    assert objective.proj[0][0].weight.grad is not None and model.blocks[0].attn.qkv.weight.grad is not None
    assert "encoder" not in "".join(objective.state_dict())  # the frozen encoder is not saved


def test_missing_repa_encoder_path_is_a_one_line_error(tmp_path):
    for repa, match in ((REPAConfig(enabled=True), "REPA is on but repa.encoder_path is not set"),
                        (REPAConfig(enabled=True, encoder_path=str(tmp_path / "nope")), "is not a folder")):
        config = TrainConfig(objective="flow", repa=repa, model="DDT")
        with pytest.raises(ValueError, match=match) as err:
            build_objective(config, model=ditlab.create_model("DDT", **TINY_DDT))
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="REPA needs objective='flow'"):
        TrainConfig(repa=REPAConfig(enabled=True))


def test_training_with_repa_trains_and_saves_the_projector(tmp_path, monkeypatch):
    import ditlab.models.repa as repa_module

    monkeypatch.setattr(repa_module, "load_dinov2", lambda path: TinyEncoder())
    args = {"hidden_size": 32, "num_groups": 2, "num_blocks": 2, "num_encoder_blocks": 1, "patch_size": 4}
    config = TrainConfig(run_dir=str(tmp_path / "run"), model="DDT", model_args=args, objective="flow",
                         repa=REPAConfig(enabled=True, encoder_path=str(tmp_path), align_layer=1),
                         steps=3, global_batch=4, log_every=3, ckpt_every=3, sample_every=-1, progress=False,
                         device="cpu")
    result = train(config)
    assert {"fm", "cos"} <= set(result.metrics[0])
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_0000003.train_state.pt", weights_only=True)
    assert set(state["objective"]) == {"proj.0.0.weight", "proj.0.0.bias", "proj.0.2.weight", "proj.0.2.bias",
                                       "proj.0.4.weight", "proj.0.4.bias"}
    assert len(state["optimizer"]["param_groups"]) == 2  # backbone + projector


def test_dinov2_loads_from_a_local_folder_through_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from ditlab.models.repa import load_dinov2

    config = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, patch_size=14, image_size=28)
    torch.manual_seed(0)
    reference = transformers.Dinov2Model(config).eval()
    reference.save_pretrained(tmp_path / "dino")
    encoder = load_dinov2(tmp_path / "dino")
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    features = encoder(images)  # 64 px -> 56 px -> 4 x 4 patch tokens, CLS dropped, after the final norm
    assert features.shape == (2, 16, 16) and encoder.width == 16
    with torch.no_grad():
        expected = reference(pixel_values=dinov2_preprocess(images)).last_hidden_state[:, 1:]
    torch.testing.assert_close(features, expected)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_repa_run_resumes_exactly(tmp_path, monkeypatch):
    import ditlab.models.repa as repa_module

    monkeypatch.setattr(repa_module, "load_dinov2", lambda path: TinyEncoder())
    args = {"hidden_size": 32, "num_groups": 2, "num_blocks": 2, "num_encoder_blocks": 1, "patch_size": 4}

    def config(run: str, steps: int) -> TrainConfig:
        return TrainConfig(run_dir=str(tmp_path / run), model="DDT", model_args=args, objective="flow",
                           repa=REPAConfig(enabled=True, encoder_path=str(tmp_path), align_layer=1), steps=steps,
                           global_batch=4, log_every=2, ckpt_every=2, sample_every=-1, progress=False, device="cpu")

    train(config("straight", 4))
    train(config("split", 2))
    train(config("split", 4), resume=True)
    states = [torch.load(tmp_path / run / "checkpoints" / "step_0000004.train_state.pt", weights_only=True)
              for run in ("straight", "split")]
    for key in states[0]["objective"]:
        assert torch.equal(states[0]["objective"][key], states[1]["objective"][key]), key
    for key in states[0]["model"]:
        assert torch.equal(states[0]["model"][key], states[1]["model"][key]), key
