"""DDT: golden parity with the official decoupled_improved_dit.py, parts, init, presets, checkpoints, training."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import ditlab
from ditlab.cli import main as cli_main
from ditlab.models.ddt import DDT
from ditlab.models.layers import RMSNorm, apply_rope, rope_2d_freqs
from ditlab.models.official import _check_ddt_split, load_official_ddt
from ditlab.models.registry import DERIVED_PRESETS, list_models
from ditlab.models.repa import build_projector
from helpers import golden, golden_state_dict

TOL = dict(atol=1e-5, rtol=1e-5)
TINY_DDT = dict(in_channels=4, num_groups=2, hidden_size=32, num_blocks=3, num_encoder_blocks=2, patch_size=2,
                num_classes=10, input_size=8)


def load_golden_ddt():
    entry, tensors = golden("ddt_tiny.safetensors")
    model = ditlab.create_model("DDT", **entry["constructor_kwargs"])
    model.load_state_dict(golden_state_dict(tensors), strict=True)
    return model.eval(), tensors


# ----------------------------------------------------------------------------
# Golden parity (both recorded calls).


def test_golden_forward_velocity_and_self_condition():
    model, d = load_golden_ddt()
    with torch.no_grad():
        v, s = model(d["input.x"], d["input.t"], d["input.y"])
    torch.testing.assert_close(v, d["output.velocity"], **TOL)
    torch.testing.assert_close(s, d["output.s"], **TOL)


def test_golden_forward_with_given_s_skips_the_encoder():
    model, d = load_golden_ddt()
    with torch.no_grad():
        v, s = model(d["input.x2"], d["input.t2"], d["input.y"], d["output.s"])
        # t and y do not reach the decoder: other values give the same velocity.
        other, _ = model(d["input.x2"], torch.zeros(4), torch.zeros(4, dtype=torch.long), d["output.s"])
    torch.testing.assert_close(v, d["output.velocity_with_s"], **TOL)
    assert s is d["output.s"]
    assert torch.equal(v, other)


def test_encode_decode_halves_equal_forward():
    model, d = load_golden_ddt()
    with torch.no_grad():
        s = model.encode(d["input.x"], d["input.t"], d["input.y"])
        v = model.decode(d["input.x"], s)
    torch.testing.assert_close(v, d["output.velocity"], **TOL)


def test_sdpa_equals_explicit_softmax():
    model, d = load_golden_ddt()
    for block in model.blocks:
        block.attn.fused = False
    with torch.no_grad():
        v, _ = model(d["input.x"], d["input.t"], d["input.y"])
    torch.testing.assert_close(v, d["output.velocity"], **TOL)


# ----------------------------------------------------------------------------
# Parts against hand-computed values.


def test_patch_order_is_channel_major_and_fold_inverts_it():
    model = ditlab.create_model("DDT", **TINY_DDT)
    x = torch.arange(2 * 4 * 8 * 8, dtype=torch.float32).reshape(2, 4, 8, 8)
    tokens = model.patchify(x)
    assert tokens.shape == (2, 16, 16)
    # token 1 = row 0, column 1 of the 4x4 grid; its features are (C, p, p), channel-major.
    expected = x[0, :, 0:2, 2:4].reshape(-1)
    assert torch.equal(tokens[0, 1], expected)
    assert torch.equal(model.unpatchify(tokens, 8, 8), x)


def test_rope_positions_spread_over_0_16_whatever_the_grid():
    head_dim = 8
    for side in (2, 4, 7):
        freqs = rope_2d_freqs(head_dim, side, side)
        assert freqs.shape == (side * side, head_dim // 2)
        # the last token sits at (x, y) = (16, 16); entries alternate x-frequency, y-frequency.
        base = 1.0 / 10000 ** (torch.arange(0, head_dim, 4).float() / head_dim)
        torch.testing.assert_close(freqs[-1].angle(), torch.remainder(16 * base.repeat_interleave(2) + math.pi,
                                                                       2 * math.pi) - math.pi)
        assert torch.allclose(freqs[0], torch.ones(head_dim // 2, dtype=torch.complex64))


def test_apply_rope_rotates_adjacent_pairs_and_keeps_norms():
    x = torch.randn(1, 2, 4, 8)
    freqs = rope_2d_freqs(8, 2, 2)
    out = apply_rope(x, freqs)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    angle = freqs[3, 0].angle()
    a, b = x[0, 0, 3, 0], x[0, 0, 3, 1]
    torch.testing.assert_close(out[0, 0, 3, :2], torch.stack([a * angle.cos() - b * angle.sin(),
                                                             a * angle.sin() + b * angle.cos()]))


def test_rmsnorm_and_timestep_sinusoid():
    norm = RMSNorm(4)
    norm.weight.data = torch.tensor([1.0, 2.0, 3.0, 4.0])
    x = torch.tensor([[1.0, -1.0, 3.0, 0.0]])
    torch.testing.assert_close(norm(x), norm.weight * x / torch.sqrt(torch.tensor(11 / 4 + 1e-6)))
    model = ditlab.create_model("DDT", **TINY_DDT)
    assert model.t_embedder.max_period == 10.0
    features = ditlab.models.layers.timestep_embedding(torch.tensor([0.5]), 256, 10.0)
    torch.testing.assert_close(features[0, 1], torch.cos(torch.tensor(0.5 * 10 ** (-1 / 128))))


def test_swiglu_width_and_no_biases():
    model = ditlab.create_model("DDT", hidden_size=48, num_groups=4, num_blocks=1, num_encoder_blocks=1, num_classes=10)
    assert isinstance(model, DDT)
    block = model.blocks[0]
    assert block.mlp.w1.weight.shape == (int(2 * 4 * 48 / 3), 48)
    assert block.mlp.w1.bias is None and block.mlp.w2.bias is None and block.attn.qkv.bias is None


# ----------------------------------------------------------------------------
# Init, labels, bad input.


def test_official_init_zeroes_only_the_final_layer():
    model = ditlab.create_model("DDT", **TINY_DDT)
    assert torch.count_nonzero(model.final_layer.linear.weight) == 0
    assert torch.count_nonzero(model.final_layer.adaLN_modulation[0].weight) == 0
    assert all(torch.count_nonzero(b.adaLN_modulation[0].weight) > 0 for b in model.blocks)
    v, _ = model(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 10]))
    assert torch.count_nonzero(v) == 0
    paper = ditlab.create_model("DDT", **TINY_DDT, adaln_zero=True)
    assert all(torch.count_nonzero(b.adaLN_modulation[0].weight) == 0 for b in paper.blocks)


def test_label_table_has_the_null_row_even_without_dropout():
    for p in (0.0, 0.1):
        model = ditlab.create_model("DDT", **TINY_DDT, class_dropout_prob=p)
        assert model.y_embedder.embedding_table.weight.shape == (11, 32)


def test_train_mode_drops_labels_with_one_rand_draw():
    model = ditlab.create_model("DDT", **TINY_DDT, class_dropout_prob=0.5).train()
    x, t, y = torch.randn(6, 4, 8, 8), torch.rand(6), torch.arange(6)
    torch.manual_seed(7)
    drop = torch.rand(6) < 0.5
    torch.manual_seed(7)
    with torch.no_grad():
        s_train = model.encode(x, t, y)
        s_forced = model.eval().encode(x, t, torch.where(drop, 10, y))
    torch.testing.assert_close(s_train, s_forced)


def test_bad_inputs_are_one_line_errors():
    model = ditlab.create_model("DDT", **TINY_DDT)
    with pytest.raises(ValueError, match="class ids span 0..11"):
        model(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="multiples of patch_size=2"):
        model(torch.randn(2, 4, 7, 7), torch.rand(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"self-condition s has shape \(2, 4, 32\)"):
        model(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 1]), torch.zeros(2, 4, 32))
    with pytest.raises(ValueError, match="num_encoder_blocks=5 must be in 0..num_blocks=3"):
        ditlab.create_model("DDT", **{**TINY_DDT, "num_encoder_blocks": 5})


# ----------------------------------------------------------------------------
# Presets.


def test_xl_preset_parameter_count_and_split():
    with torch.device("meta"):
        model = ditlab.create_model("DDT-XL/2-22en6de")
    assert sum(p.numel() for p in model.parameters()) == 674_646_352
    assert model.config.split == "22en6de" and model.config.num_groups == 16
    assert len(model.state_dict()) == 13 + 28 * 12  # 13 embedder/final keys + 12 per block (ddt.md section 7)


def test_b_and_l_presets_use_the_ablation_splits_and_are_marked_derived():
    assert list_models("DDT") == ["DDT-B/2-8en4de", "DDT-L/2-20en4de", "DDT-XL/2-22en6de"]
    assert set(DERIVED_PRESETS) == {"DDT-B/2-8en4de", "DDT-L/2-20en4de"}
    with torch.device("meta"):
        assert ditlab.create_model("DDT-B/2-8en4de").config.split == "8en4de"
        assert ditlab.create_model("DDT-L/2-20en4de").config.split == "20en4de"


# ----------------------------------------------------------------------------
# Official Lightning checkpoints.


def lightning_checkpoint(tmp_path, model, with_projector=True):
    raw = ditlab.create_model("DDT", **TINY_DDT)
    state = {f"denoiser.{k}": v for k, v in raw.state_dict().items()}
    state.update({f"ema_denoiser.{k}": v for k, v in model.state_dict().items()})
    projector = build_projector(32, 32, 12)
    if with_projector:
        state.update({f"diffusion_trainer.proj.{k}": v for k, v in projector.state_dict().items()})
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "global_step": 5}, path)
    return path, projector


def test_lightning_ckpt_loads_ema_weights_and_projector(tmp_path):
    model = ditlab.create_model("DDT", **TINY_DDT)
    for p in model.parameters():
        p.data.normal_(std=0.05)
    path, projector = lightning_checkpoint(tmp_path, model)
    loaded, proj = load_official_ddt(path, num_encoder_blocks=2, input_size=8)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.config.split == "2en1de" and not loaded.training
    for key, value in projector.state_dict().items():
        assert torch.equal(proj.state_dict()[key], value)
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([3, 10])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y)[0], model.eval()(x, t, y)[0])
    path_no_proj, _ = lightning_checkpoint(tmp_path, model, with_projector=False)
    assert load_official_ddt(path_no_proj, num_encoder_blocks=2)[1] is None


def test_wrong_split_says_which_split_fits(tmp_path):
    path, _ = lightning_checkpoint(tmp_path, ditlab.create_model("DDT", **TINY_DDT))
    with pytest.raises(ValueError, match=r"has 3 blocks, so the split 3en1de does not fit; it fits a split NenMde "
                                         r"with N \+ M = 3") as err:
        load_official_ddt(path, num_blocks=4, num_encoder_blocks=3)
    assert "\n" not in str(err.value)
    xl = {"num_blocks": 28, "hidden_size": 1152, "num_groups": 16}
    with pytest.raises(ValueError, match="the split 20en4de does not fit; it fits DDT-XL/2-22en6de"):
        _check_ddt_split(xl, {"num_blocks": 24, "num_encoder_blocks": 20}, "ddt.ckpt")
    assert _check_ddt_split(xl, {}, "ddt.ckpt") == 22
    with pytest.raises(ValueError, match="pass num_encoder_blocks"):
        load_official_ddt(path)


# ----------------------------------------------------------------------------
# Training through the CLI on the embedded digits.


def test_cli_trains_ddt_under_flow_on_digits(tmp_path, capsys):
    args = {"hidden_size": 32, "num_groups": 2, "num_blocks": 2, "num_encoder_blocks": 1, "patch_size": 4}
    code = cli_main(["train", "--model", "DDT", "--objective", "flow", "--model-args", json.dumps(args),
                     "--steps", "4", "--global-batch", "8", "--run-dir", str(tmp_path / "run"), "--log-every", "2",
                     "--sample-every", "-1", "--progress", "false", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and {"loss", "fm"} <= set(rows[0])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["objective"] == "flow" and config["flow"]["t_sampling"] == "logit-normal"


def test_unpatchify_matches_fold_for_rectangular_inputs():
    model = ditlab.create_model("DDT", **TINY_DDT)
    x = torch.randn(1, 4, 6, 10)
    assert torch.equal(model.unpatchify(model.patchify(x), 6, 10), x)
    assert torch.equal(model.patchify(x), F.unfold(x, 2, stride=2).transpose(1, 2))
