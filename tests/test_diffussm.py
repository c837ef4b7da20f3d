"""DiffuSSM: the block against the paper's per-token equations, init, presets, ledger, training and sampling."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import ditlab
from ditlab.flops import count
from ditlab.models.diffussm import DiffuSSMBlock, DiffuSSMConfig
from ditlab.models.registry import model_config
from ditlab.objectives import DiffusionConfig, GaussianDiffusion
from ditlab.objectives.flow import FlowConfig, FlowMatching
from ditlab.sampling import DDIM, Guidance, Heun, generate_latents
from ditlab.train import TrainConfig, train
from ditlab.train.loop import build_optimizer

TINY = dict(input_size=4, in_channels=4, hidden_size=16, depth=2, state_size=4, num_classes=10)


def tiny(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return ditlab.create_model("DiffuSSM", **{**TINY, **kw})


def inputs(batch: int = 2, side: int = 4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, side, side, generator=g)
    return x, torch.tensor([3.0, 700.0])[:batch], torch.tensor([1, 9])[:batch]


def randomize(module: torch.nn.Module) -> None:
    """Nonzero weights everywhere (the zero-initialised adaLN/output would hide the blocks)."""
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "ssm" not in name:
                p.normal_(0, 0.3)


def block_by_the_equations(block: DiffuSSMBlock, h: torch.Tensor) -> torch.Tensor:
    """The paper's Eq. (1) token by token: j = l // M, k = l % M, per-offset W↑_k, W↓_k, W³_k."""
    m, (_, length, d) = block.downsample_ratio, h.shape
    j_len, act = length // m, block.act
    d_m = block.W_up.out_features // m
    w_up = block.W_up.weight.reshape(m, d_m, d)
    b_up = block.W_up.bias.reshape(m, d_m)
    pool_w = block.pool.weight.reshape(d, m, d)
    inner = torch.stack([
        sum(h[:, j * m + k] @ pool_w[:, k].T for k in range(m)) + block.pool.bias for j in range(j_len)
    ], dim=1)  # I_j
    z = act(block.W0(inner))
    u = torch.stack([act(z[:, l // m] @ w_up[l % m].T + b_up[l % m]) for l in range(length)], dim=1)  # U_l
    y = block.ssm(u)  # the SSM itself is tested in test_s4d.py
    i_prime = torch.stack([
        torch.cat([act(y[:, j * m + k] @ block.W_down.weight[k].T + block.W_down.bias[k]) for k in range(m)], dim=-1)
        for j in range(j_len)
    ], dim=1)  # I'_j = [σ(W↓_k Y_{jM+k})]_k
    fused = act(block.W2(i_prime)) * act(block.W1(inner))
    w3 = block.W3.weight.reshape(m, d, d)
    b3 = block.W3.bias.reshape(m, d)
    return torch.stack([fused[:, l // m] @ w3[l % m].T + b3[l % m] for l in range(length)], dim=1)


@pytest.mark.parametrize("ratio", [2, 4])
def test_block_matches_the_paper_equations_token_by_token(ratio):
    torch.manual_seed(0)
    cfg = DiffuSSMConfig(**{**TINY, "downsample_ratio": ratio})
    block = DiffuSSMBlock(cfg)
    randomize(block)
    h = torch.randn(2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(block.mix(h), block_by_the_equations(block, h), atol=1e-5, rtol=1e-4)


def test_forward_shape_and_zero_init():
    model = tiny()
    x, t, y = inputs()
    out = model(x, t, y)
    assert out.shape == (2, 8, 4, 4)
    assert torch.equal(out, torch.zeros_like(out))  # zeroed final layer (adaLN-Zero convention)
    for block in model.blocks:  # zero gates: every block starts as the identity
        h = torch.randn(2, 16, 16)
        assert torch.equal(block(h, torch.randn(2, 16)), h)
    assert tiny(learn_sigma=False)(x, t, y).shape == (2, 4, 4, 4)


def test_every_token_sees_both_directions():
    model = tiny().eval()
    randomize(model)
    x, t, y = inputs(1)
    with torch.no_grad():
        base = model(x, t, y)
        for row, col in [(0, 0), (3, 3)]:  # first and last token of the raster sequence
            bumped = x.clone()
            bumped[..., row, col] += 1.0
            change = (model(bumped, t, y) - base).abs().amax(dim=1).flatten()
            assert torch.all(change > 1e-6), (row, col)


def test_conditioning_changes_the_output():
    model = tiny().eval()
    randomize(model)
    x, t, y = inputs()
    with torch.no_grad():
        out = model(x, t, y)
        assert not torch.allclose(out, model(x, t + 100, y))
        assert not torch.allclose(out, model(x, t, (y + 1) % 10))


def test_grad_checkpointing_gives_the_same_gradients():
    x, t, y = inputs()
    grads = []
    for ckpt in (False, True):
        model = tiny().train()
        randomize(model)
        model.grad_checkpointing = ckpt
        model(x, t, y, force_drop_ids=torch.zeros(2)).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_save_and_reload_round_trip():
    model = tiny().eval()
    randomize(model)
    again = ditlab.models.registry.model_from_config("DiffuSSM", dataclasses.asdict(model.config)).eval()
    again.load_state_dict(model.state_dict(), strict=True)
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, y), again(x, t, y))


def test_bf16_autocast_forward():
    model = tiny().eval()
    randomize(model)
    x, t, y = inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y)
    with torch.no_grad():
        ref = model(x, t, y)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.1 * ref.abs().max().item(), rtol=0.05)


def test_optimizer_groups_cover_every_parameter_once():
    model = tiny(ssm_lr_scale=0.25)
    config = TrainConfig(weight_decay=0.03, device="cpu")
    opt = build_optimizer(model, config, torch.device("cpu"))
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters()) and len(seen) == len(set(seen))
    rest, dynamics = opt.param_groups
    assert (rest["weight_decay"], rest["lr_scale"]) == (0.03, 1.0)
    assert (dynamics["weight_decay"], dynamics["lr_scale"]) == (0.0, 0.25)
    names = {id(p): n.rsplit(".", 1)[-1] for n, p in model.named_parameters()}
    assert {names[id(p)] for p in dynamics["params"]} == {"log_dt", "log_A_real", "A_imag"}
    assert len(dynamics["params"]) == 3 * 2 * TINY["depth"]  # A_re, A_im, Δ x 2 directions x blocks


def test_presets_and_xl_parameter_count():
    assert ditlab.list_models("DiffuSSM") == ["DiffuSSM-XL", "DiffuSSM-L", "DiffuSSM-S"]
    widths = {name: model_config(name)[1].hidden_size for name in ditlab.list_models("DiffuSSM")}
    assert widths == {"DiffuSSM-XL": 1152, "DiffuSSM-L": 768, "DiffuSSM-S": 384}
    row = count("DiffuSSM-XL", 256)
    assert row.tokens == 1024
    assert abs(row.params / 673e6 - 1) < 0.01, row.params  # paper: ~673M (ours: 668.8M)
    # 17 D^2 per block: adaLN 3, pool 2, W0 1, W_up 2, W_down 4, W1 1, W2 2, W3 2 (plus biases and SSM).
    d = 1152
    dense = 17 * d * d * 29
    assert 0 < row.params - dense < 0.03 * dense


def _matmul_macs(name: str, image_size: int) -> float:
    """Multiply-accumulates without our FFT formula (what FlopCounterMode alone sees), / 1e9."""
    family, config = model_config(name, input_size=image_size // 8)
    with torch.device("meta"):
        model = family.model_cls(config).eval()
        model.check_inputs = False
        x, t, y = torch.zeros(1, 4, config.input_size, config.input_size), torch.zeros(1), torch.zeros(1).long()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, y)
    return counter.get_total_flops() / 2e9


def test_ledger_against_the_paper():
    at_256, at_512 = count("DiffuSSM-XL", 256).gmacs, count("DiffuSSM-XL", 512).gmacs
    assert abs(at_256 / 280.3 - 1) < 0.05, at_256  # ours 283.8
    # At 512 px the paper's 1066.2 is only 3.80x its 256 px number, below the 4x of any network whose cost is
    # linear in the token count; our dense layers are within 5% (1112.4) and the FFTs add 26.7 G (1139.1).
    assert abs(_matmul_macs("DiffuSSM-XL", 512) / 1066.2 - 1) < 0.05
    assert 0 < at_512 / 1066.2 - 1 < 0.07, at_512
    assert at_512 > 4 * at_256  # the FFT's L log L term


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_gaussian_objective_loss_and_ddim_sampling(prediction):
    model = tiny().train()
    objective = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    x0, _, y = inputs()
    terms = objective.loss(model, x0, y)
    assert {"loss", "mse", "vb"} <= set(terms) and torch.isfinite(terms["loss"]).all()
    terms["loss"].mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    latents = generate_latents(model.eval(), DiffusionConfig(prediction=prediction), y, DDIM(3),
                               guidance=Guidance(2.0))
    assert latents.shape == (2, 4, 4, 4) and torch.isfinite(latents).all()


def test_flow_objective_and_ode_sampler():
    model = tiny(learn_sigma=False).train()
    x0, _, y = inputs()
    terms = FlowMatching(FlowConfig(time_scale=1000.0)).loss(model, x0, y)
    assert torch.isfinite(terms["loss"]).all()
    latents = generate_latents(model.eval(), FlowConfig(time_scale=1000.0), y, Heun(2, last_step=None))
    assert latents.shape == (2, 4, 4, 4) and torch.isfinite(latents).all()


def test_trains_on_digits(tmp_path):
    config = TrainConfig(
        run_dir=str(tmp_path / "run"), model="DiffuSSM-S", model_args={"depth": 1, "hidden_size": 16, "state_size": 4},
        data="digits", image_size=8, steps=4, global_batch=4, lr=1e-3, log_every=2, ckpt_every=4, sample_every=-1,
        progress=False, device="cpu",
    )
    train(config)
    assert (tmp_path / "run" / "checkpoints").is_dir()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_size": 3}, "input_size=3 gives 9 tokens, not divisible by downsample_ratio=2"),
        ({"ssm_init": "hippo"}, "ssm_init='hippo' is not one of lin, inv, legs"),
        ({"discretization": "euler"}, "discretization='euler' is not one of zoh, bilinear"),
        ({"state_size": 3}, "state_size=3 must be an even integer"),
        ({"hidden_size": 0}, "hidden_size=0 must be a positive integer"),
        ({"class_dropout_prob": 1.0}, r"class_dropout_prob=1.0 must be in \[0, 1\)"),
        ({"downsample_ratio": 3, "input_size": 6, "hidden_size": 16}, "2 \\* hidden_size must be divisible"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiffuSSMConfig(**{**TINY, **kwargs})


def test_bad_inputs():
    model = tiny()
    x, t, y = inputs()
    with pytest.raises(ValueError, match=r"DiffuSSM expects \(N, 4, 4, 4\)"):
        model(x[:, :3], t, y)
    with pytest.raises(ValueError, match="built for input_size=4"):
        model(F.pad(x, (0, 2, 0, 2)), t, y)
    with pytest.raises(ValueError, match=r"must both have shape \(2,\)"):
        model(x, t[:1], y)
    with pytest.raises(ValueError, match=r"class id 11 is out of range: allowed 0..9 and 10 \(the null class\)"):
        model(x, t, torch.tensor([0, 11]))
