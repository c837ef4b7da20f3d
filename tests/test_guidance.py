"""Classifier-free guidance with a hand-made deterministic model and hand-computed expectations."""

from __future__ import annotations

import pytest
import torch

from ditlab.objectives import DiffusionConfig, GaussianDiffusion
from ditlab.sampling import CFGConfig, classifier_free_guidance, sample_ddim

NULL = 1000


class ToyModel:
    """out = [x·(1 + y/1000) + t/1000, x − y/1000]: (N, 2C, H, W), recording every call it gets."""

    def __init__(self, learn_sigma: bool = True) -> None:
        self.learn_sigma = learn_sigma
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append((x, t, y))
        return self.expected(x, t, y)

    def expected(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y_ = y.to(x.dtype).view(-1, 1, 1, 1) / 1000
        t_ = t.to(x.dtype).view(-1, 1, 1, 1) / 1000
        prediction = x * (1 + y_) + t_
        return torch.cat([prediction, x - y_], dim=1) if self.learn_sigma else prediction


def official_forward_with_cfg(model, x, t, y, cfg_scale):
    """The official DiT ``forward_with_cfg`` on a doubled batch (guides channels [:3] only)."""
    half = x[: len(x) // 2]
    out = model(torch.cat([half, half]), t, y)
    eps, rest = out[:, :3], out[:, 3:]
    cond_eps, uncond_eps = eps.chunk(2)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    return torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 2, 2, generator=g), torch.tensor([5, 500, 999]), torch.tensor([1, 7, 42])


def test_full_guidance_by_hand(inputs):
    x, t, y = inputs
    model = ToyModel()
    out = classifier_free_guidance(model, y, CFGConfig(scale=4.0))(x, t)
    cond = model.expected(x, t, y)
    uncond = model.expected(x, t, torch.full_like(y, NULL))
    assert out.shape == (3, 8, 2, 2)
    torch.testing.assert_close(out[:, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]))
    torch.testing.assert_close(out[:, 4:], cond[:, 4:])  # learned σ from the conditional pass
    # Hand form: guided = x·(1 + (1000 + 4·(y − 1000))/1000) + t/1000
    y_eff = (1000 + 4 * (y - 1000)).float().view(-1, 1, 1, 1) / 1000
    torch.testing.assert_close(out[:, :4], x * (1 + y_eff) + t.float().view(-1, 1, 1, 1) / 1000)


def test_one_batched_forward_on_doubled_inputs(inputs):
    x, t, y = inputs
    model = ToyModel()
    classifier_free_guidance(model, y, CFGConfig(scale=1.5))(x, t)
    assert len(model.calls) == 1
    called_x, called_t, called_y = model.calls[0]
    assert torch.equal(called_x, torch.cat([x, x])) and torch.equal(called_t, torch.cat([t, t]))
    assert called_y.tolist() == [1, 7, 42, NULL, NULL, NULL]


def test_separate_passes_give_the_joint_result_with_two_forwards_on_n(inputs):
    x, t, y = inputs
    joint = classifier_free_guidance(ToyModel(), y, CFGConfig(scale=2.5))(x, t)
    model = ToyModel()
    separate = classifier_free_guidance(model, y, CFGConfig(scale=2.5, joint_batch=False))(x, t)
    assert [call[2].tolist() for call in model.calls] == [[1, 7, 42], [NULL, NULL, NULL]]
    assert all(call[0] is x and call[1] is t for call in model.calls)
    torch.testing.assert_close(separate, joint, rtol=0, atol=0)


def test_legacy_three_channel_guidance_matches_official_forward_with_cfg(inputs):
    x, t, y = inputs
    model = ToyModel()
    out = classifier_free_guidance(model, y, CFGConfig(scale=4.0, guided_channels=3))(x, t)
    official = official_forward_with_cfg(
        model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, NULL)]), 4.0
    )
    torch.testing.assert_close(out, official[:3])
    cond = model.expected(x, t, y)
    torch.testing.assert_close(out[:, 3:], cond[:, 3:])  # channel 3 and the σ half pass through
    assert not torch.allclose(out[:, :3], cond[:, :3])


def test_scale_one_is_a_single_plain_forward(inputs):
    x, t, y = inputs
    model = ToyModel()
    out = classifier_free_guidance(model, y, CFGConfig(scale=1.0))(x, t)
    assert len(model.calls) == 1 and model.calls[0][0].shape[0] == 3 and torch.equal(model.calls[0][2], y)
    torch.testing.assert_close(out, model.expected(x, t, y))


def test_time_dependent_scale(inputs):
    x, t, y = inputs
    model = ToyModel()
    out = classifier_free_guidance(model, y, CFGConfig(scale=lambda ts: 1.0 + ts.float() / 100))(x, t)
    cond, uncond = model.expected(x, t, y), model.expected(x, t, torch.full_like(y, NULL))
    for i, scale in enumerate([1.05, 6.0, 10.99]):
        torch.testing.assert_close(out[i, :4], uncond[i, :4] + scale * (cond[i, :4] - uncond[i, :4]))
    assert len(model.calls) == 1 and model.calls[0][0].shape[0] == 6  # a callable always runs both passes


def test_model_without_learned_sigma_guides_every_channel(inputs):
    x, t, y = inputs
    model = ToyModel(learn_sigma=False)
    out = classifier_free_guidance(model, y, CFGConfig(scale=2.0, null_class=10))(x, t)
    cond, uncond = model.expected(x, t, y), model.expected(x, t, torch.full_like(y, 10))
    torch.testing.assert_close(out, 2 * cond - uncond)


def test_guided_denoiser_drives_a_sampler(inputs):
    x, _, y = inputs
    diffusion = GaussianDiffusion(DiffusionConfig(timestep_respacing="ddim5"))
    model = ToyModel()
    denoiser = classifier_free_guidance(model, y, CFGConfig(scale=1.5))
    assert sample_ddim(diffusion, denoiser, x).shape == x.shape
    assert [c[1].tolist() for c in model.calls][:2] == [[800] * 6, [600] * 6]  # original-scale timesteps


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"guided_channels": 0}, "got 0"), ({"scale": "4"}, "'4'"), ({"null_class": -1}, "got -1")],
)
def test_cfg_config_errors(kwargs, named):
    with pytest.raises(ValueError, match=named):
        CFGConfig(**kwargs)
