"""MDT training: the two-pass objective, Min-SNR-5, Adan against hand-computed steps, CLI and DDP runs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ditlab
from ditlab.cli import main
from ditlab.objectives import DiffusionConfig, GaussianDiffusion
from ditlab.objectives.masked import MaskedDiffusionObjective
from ditlab.optim import Adan
from ditlab.train import TrainConfig
from ditlab.train.loop import build_optimizer, read_metrics
from ditlab.train.objective import build_objective

TINY = dict(input_size=8, patch_size=2, hidden_size=32, depth=4, num_heads=2, num_classes=10, decode_layer=2)


class RecordingModel(torch.nn.Module):
    """A stand-in backbone that records what each pass was called with (an MDT-like ``mask_ratio``)."""

    mask_ratio = 0.3

    def __init__(self):
        super().__init__()
        self.calls = []
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, y, enable_mask=False):
        self.calls.append({"x": x.clone(), "t": t.clone(), "y": y.clone(), "enable_mask": enable_mask})
        out = self.w * x * (2.0 if enable_mask else 1.0)
        return torch.cat([out, torch.zeros_like(out)], dim=1)


def test_two_passes_same_t_separate_noise_equal_weights():
    diffusion = GaussianDiffusion(DiffusionConfig())
    model = RecordingModel()
    x0, y = torch.randn(3, 4, 4, 4), torch.tensor([1, 2, 3])
    torch.manual_seed(7)
    np.random.seed(7)
    terms = MaskedDiffusionObjective(diffusion).loss(model, x0, y)
    full, masked = model.calls
    assert (full["enable_mask"], masked["enable_mask"]) == (False, True)
    assert torch.equal(full["t"], masked["t"]) and torch.equal(full["y"], y)
    assert not torch.allclose(full["x"], masked["x"])  # each pass draws its own noise
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"] + terms["m_mse"] + terms["m_vb"])
    assert set(terms) == {"loss", "mse", "vb", "m_loss", "m_mse", "m_vb"}
    # The official draws: t by numpy (MDT's UniformSampler), then the full pass's noise, then the masked pass's
    # (this stand-in model draws nothing).
    torch.manual_seed(7)
    np.random.seed(7)
    t = torch.from_numpy(np.random.choice(1000, size=(3,), p=np.ones(1000) / 1000))
    noise_full, noise_masked = torch.randn_like(x0), torch.randn_like(x0)
    assert torch.equal(t, full["t"])
    torch.testing.assert_close(full["x"], diffusion.q_sample(x0, t, noise_full))
    torch.testing.assert_close(masked["x"], diffusion.q_sample(x0, t, noise_masked))


def test_min_snr_5_weights_the_mse_of_both_passes():
    x0, y = torch.randn(4, 4, 8, 8), torch.tensor([1, 2, 3, 4])
    model = ditlab.create_model("MDTv2", **TINY)
    out = {}
    for gamma in (None, 5.0):
        torch.manual_seed(11)
        np.random.seed(11)
        objective = MaskedDiffusionObjective(GaussianDiffusion(DiffusionConfig(min_snr_gamma=gamma)))
        out[gamma] = objective.loss(model, x0, y)
    np.random.seed(11)
    t = torch.from_numpy(np.random.choice(1000, size=(4,), p=np.ones(1000) / 1000))
    alpha_bar = torch.from_numpy(GaussianDiffusion().alphas_cumprod)[t]
    snr = alpha_bar / (1 - alpha_bar)
    weight = (torch.clamp(snr, max=5.0) / snr).float()
    for key in ("mse", "m_mse"):
        torch.testing.assert_close(out[5.0][key], out[None][key] * weight)
    for key in ("vb", "m_vb"):  # the VB term stays unweighted
        torch.testing.assert_close(out[5.0][key], out[None][key])


def test_mdt_objective_refuses_models_without_a_masked_pass():
    objective = build_objective(TrainConfig(objective="mdt"))
    x0, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="needs an MDT/MDTv2 model with a mask_ratio; this DiT has no masked pass"):
        objective.loss(ditlab.create_model("DiT", input_size=8, depth=1, hidden_size=32, num_heads=2), x0, y)
    no_mask = ditlab.create_model("MDT", **{**TINY, "mask_ratio": None})
    with pytest.raises(ValueError, match="this MDT was built with mask_ratio=None"):
        objective.loss(no_mask, x0, y)


# ----------------------------------------------------------------------------
# Adan.


def adan_by_hand(grads, lr, betas, eps=1e-8, wd=0.0, no_prox=False, theta=1.0):
    """The update rule of the official Adan on one scalar, written out step by step in Python floats."""
    b1, b2, b3 = betas
    m = v = n = 0.0
    prev = None
    for k, g in enumerate(grads, start=1):
        d = 0.0 if prev is None else g - prev
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * d
        n = b3 * n + (1 - b3) * (g + b2 * d) ** 2
        denom = math.sqrt(n) / math.sqrt(1 - b3**k) + eps
        if no_prox:
            theta *= 1 - lr * wd
        theta -= lr / (1 - b1**k) * m / denom + lr * b2 / (1 - b2**k) * v / denom
        if not no_prox:
            theta /= 1 + lr * wd
        prev = g
    return theta


@pytest.mark.parametrize("wd,no_prox", [(0.0, False), (0.1, False), (0.1, True)])
def test_adan_matches_hand_computed_steps(wd, no_prox):
    grads = [0.3, -0.2, 0.5]
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = Adan([p], lr=0.1, weight_decay=wd, no_prox=no_prox)
    for g in grads:
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    assert p.item() == pytest.approx(adan_by_hand(grads, 0.1, (0.98, 0.92, 0.99), wd=wd, no_prox=no_prox), rel=1e-12)
    # First step with no decay: the update is lr * sign(g) (m/sqrt(n) after bias correction, d_1 = 0).
    q = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    q.grad = torch.tensor([-4.0], dtype=torch.float64)
    Adan([q], lr=0.1).step()
    assert q.item() == pytest.approx(1.1, rel=1e-7)


def test_adan_global_norm_clipping_and_bad_arguments():
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.0])]  # global norm 5 -> clip factor 1/5
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = Adan([p], lr=0.01, max_grad_norm=1.0, eps=0.0)
    for g in grads:
        p.grad = g.double()
        opt.step()
    expected = [adan_by_hand([float(g[i]) / 5 if k == 0 else 0.0 for k, g in enumerate(grads)], 0.01,
                             (0.98, 0.92, 0.99), eps=0.0, theta=0.0) for i in range(2)]
    torch.testing.assert_close(p.data, torch.tensor(expected, dtype=torch.float64))
    assert torch.equal(p.grad, grads[1].double())  # gradients are not scaled in place
    with pytest.raises(ValueError, match=r"betas must be three numbers in \[0, 1\)"):
        Adan([p], betas=(0.9, 0.999))


def as_official_adan_state(state: dict) -> dict:
    """ditlab's Adan state in the official package's format: its ``neg_pre_grad`` holds −g where ditlab's
    ``pre_grad`` holds +g (sail-sg/Adan ``adan.py``), and its groups carry ``foreach``/``fused``."""
    entries = {k: {**{n: t for n, t in v.items() if n != "pre_grad"}, "neg_pre_grad": -v["pre_grad"]}
               for k, v in state["state"].items()}
    groups = [{**g, "foreach": True, "fused": False} for g in state["param_groups"]]
    return {"state": entries, "param_groups": groups}


def test_adan_resumes_from_an_official_state_as_if_uninterrupted():
    torch.manual_seed(0)
    start, grads = torch.randn(6, 5), [torch.randn(6, 5) for _ in range(10)]

    def run(p, opt, steps):
        for g in steps:
            p.grad = g.clone()
            opt.step()

    straight = torch.nn.Parameter(start.clone())
    run(straight, Adan([straight], lr=1e-2, weight_decay=0.02, max_grad_norm=1.0), grads)
    for convert in (as_official_adan_state, lambda state: state):  # an official file, and ditlab's own
        p = torch.nn.Parameter(start.clone())
        first = Adan([p], lr=1e-2, weight_decay=0.02, max_grad_norm=1.0)
        run(p, first, grads[:5])
        second = Adan([p], lr=1e-2, weight_decay=0.02, max_grad_norm=1.0)
        second.load_state_dict(convert(first.state_dict()))
        assert torch.equal(second.state[p]["pre_grad"], first.state[p]["pre_grad"])
        run(p, second, grads[5:])
        assert torch.equal(p.data, straight.data)


def test_build_optimizer_chooses_adan():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, TrainConfig(optimizer="adan", lr=5e-4), torch.device("cpu"))
    assert isinstance(opt, Adan) and opt.defaults["betas"] == (0.98, 0.92, 0.99)
    with pytest.raises(ValueError, match="optimizer='sgd' is not one of adamw, adan"):
        build_optimizer(model, TrainConfig(optimizer="sgd"), torch.device("cpu"))


# ----------------------------------------------------------------------------
# End to end: the CLI on the digits, single process and 2-process DDP (gloo).

TINY_CLI = json.dumps({"depth": 4, "hidden_size": 32, "num_heads": 2, "patch_size": 4, "decode_layer": 2})


def train_args(run_dir, steps: int) -> list[str]:
    return ["train", "--run-dir", str(run_dir), "--model", "MDTv2", "--model-args", TINY_CLI, "--objective", "mdt",
            "--optimizer", "adan", "--min-snr-gamma", "5", "--global-batch", "8", "--steps", str(steps),
            "--lr", "5e-4", "--log-every", "1", "--ckpt-every", "2", "--sample-every", "-1", "--progress", "false",
            "--device", "cpu"]


def test_cli_trains_mdtv2_with_the_mdt_objective_and_resumes(tmp_path, capsys):
    assert main(train_args(tmp_path / "r", 2)) == 0
    assert main(["train", "--resume", str(tmp_path / "r"), "--steps", "3", "--progress", "false"]) == 0
    rows = read_metrics(tmp_path / "r")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["m_loss"]) and r["loss"] == pytest.approx(r["mse"] + r["vb"] + r["m_loss"], rel=1e-5)
               for r in rows)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["objective"], saved["optimizer"], saved["diffusion"]["min_snr_gamma"]) == ("mdt", "adan", 5.0)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_two_processes_both_passes_one_backward(tmp_path):
    """Two forwards (full, masked) through DDP(find_unused_parameters=False) before one backward, as officially."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ditlab",
           *train_args(tmp_path / "ddp", 2)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_metrics(tmp_path / "ddp")
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["m_loss"]) for r in rows)


def test_demo_passes_its_objective_to_training():
    from ditlab.demo import DemoConfig, demo_train_config

    assert demo_train_config(DemoConfig(model="MDTv2", objective="mdt")).objective == "mdt"
    assert demo_train_config(DemoConfig()).objective == "diffusion"
