"""Which random numbers a seed gives each training step: the official code's draws, reproduced by hand.

DDT's trainer draws label dropout, then t, then noise; MDT draws t with numpy (``np.random.choice``); DiT and MDT
draw label dropout from the CPU generator whatever the labels' device.
"""

from __future__ import annotations

import numpy as np
import torch

import ditlab
from ditlab.models.layers import LabelEmbedder
from ditlab.objectives import DiffusionConfig, GaussianDiffusion
from ditlab.objectives.flow import FlowConfig, FlowMatching
from ditlab.objectives.masked import MaskedDiffusionObjective
from ditlab.train import TrainConfig, train

TINY_DDT = dict(in_channels=4, num_groups=2, hidden_size=32, num_blocks=3, num_encoder_blocks=2, patch_size=2,
                num_classes=10, input_size=8, class_dropout_prob=0.5)


def test_label_dropout_draws_from_the_cpu_generator_on_any_device():
    embedder = LabelEmbedder(10, 8, 0.5)
    labels = torch.arange(6, device="meta")  # a device whose draws never touch the CPU generator
    torch.manual_seed(3)
    embedder.token_drop(labels)
    after = torch.get_rng_state()
    torch.manual_seed(3)
    torch.rand(6)  # official DiT/MDT: torch.rand(labels.shape[0]) on the CPU
    assert torch.equal(after, torch.get_rng_state())
    torch.manual_seed(3)
    dropped = embedder.token_drop(torch.arange(6))
    torch.manual_seed(3)
    assert torch.equal(dropped, torch.where(torch.rand(6) < 0.5, 10, torch.arange(6)))


def test_flow_objective_draws_label_dropout_then_t_then_noise_as_ddt():
    torch.manual_seed(0)
    model = ditlab.create_model("DDT", **TINY_DDT).train()
    x, y = torch.randn(6, 4, 8, 8), torch.arange(6)
    for law in ("logit-normal", "uniform"):
        torch.manual_seed(21)
        terms = FlowMatching(FlowConfig(t_sampling=law)).loss(model, x, y)
        after = torch.get_rng_state()
        # By hand, as DDT's BaseTrainer.preproprocess then REPATrainer._impl_trainstep:
        torch.manual_seed(21)
        mask = torch.rand(6) < 0.5
        t = torch.randn(6).sigmoid() if law == "logit-normal" else torch.rand(6)
        noise = torch.randn_like(x)
        assert torch.equal(after, torch.get_rng_state())  # the model drew nothing of its own
        assert 0 < int(mask.sum()) < 6  # this seed drops some labels, not all
        x_t = t.view(-1, 1, 1, 1) * x + (1 - t.view(-1, 1, 1, 1)) * noise
        with torch.no_grad():
            v = model.eval()(x_t, t, torch.where(mask, 10, y))[0]
        model.train()
        torch.testing.assert_close(terms["fm"], ((v - (x - noise)) ** 2).mean(dim=(1, 2, 3)))


def test_flow_objective_draws_no_dropout_in_eval_mode_or_without_a_null_class():
    x, y = torch.randn(3, 4, 8, 8), torch.arange(3)
    for model in (ditlab.create_model("DDT", **TINY_DDT).eval(),
                  ditlab.create_model("DDT", **{**TINY_DDT, "class_dropout_prob": 0.0}).train()):
        torch.manual_seed(5)
        FlowMatching().loss(model, x, y)
        after = torch.get_rng_state()
        torch.manual_seed(5)
        torch.randn(3), torch.randn_like(x)  # t, noise: nothing else
        assert torch.equal(after, torch.get_rng_state())


def test_mdt_draws_t_with_numpy_as_its_uniform_sampler():
    seen = []

    class Recorder(torch.nn.Module):
        mask_ratio = 0.3

        def forward(self, x, t, y, enable_mask=False):
            seen.append(t)
            return torch.cat([x, torch.zeros_like(x)], dim=1)

    x0, y = torch.randn(5, 4, 4, 4), torch.arange(5)
    np.random.seed(4)
    torch.manual_seed(4)
    MaskedDiffusionObjective(GaussianDiffusion(DiffusionConfig())).loss(Recorder(), x0, y)
    np.random.seed(4)  # official resample.py UniformSampler.sample, by hand
    w = np.ones([1000])
    expected = torch.from_numpy(np.random.choice(len(w), size=(5,), p=w / np.sum(w))).long()
    assert torch.equal(seen[0], expected) and torch.equal(seen[1], expected)


def test_mdt_runs_seed_numpy_per_step(tmp_path):
    """The loop seeds numpy's global generator per step: a run does not depend on numpy's state before it."""
    args = dict(input_size=8, patch_size=2, hidden_size=32, depth=4, num_heads=2, decode_layer=2)
    finals = []
    for k, outside in enumerate((1, 2)):
        np.random.seed(outside)
        config = TrainConfig(run_dir=str(tmp_path / f"r{k}"), model="MDTv2", model_args=args, objective="mdt",
                             data="digits", image_size=8, steps=2, global_batch=4, log_every=1, ckpt_every=2,
                             sample_every=-1, progress=False, device="cpu")
        finals.append([row["loss"] for row in train(config).metrics])
    assert finals[0] == finals[1]
