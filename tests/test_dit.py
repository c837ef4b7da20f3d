"""DiT: golden parity with the official models.py, official init, attention paths, presets, bad input."""

from __future__ import annotations

import pytest
import torch

import ditlab
from ditlab.models.dit import BLOCK_TYPES
from ditlab.models.layers import sincos_2d, timestep_embedding
from ditlab.sampling.guidance import CFGConfig, classifier_free_guidance
from helpers import TINY_DIT, golden, golden_state_dict

GOLDEN_DIT = ["dit_tiny.safetensors", "dit_tiny_p4.safetensors"]
TOL = dict(atol=1e-5, rtol=1e-5)


def load_golden_dit(name: str):
    entry, tensors = golden(name)
    model = ditlab.create_model("DiT", **entry["constructor_kwargs"])
    model.load_state_dict(golden_state_dict(tensors), strict=True)
    return model, tensors


@pytest.mark.parametrize("name", GOLDEN_DIT)
def test_golden_forward(name):
    model, d = load_golden_dit(name)
    model.eval()
    with torch.no_grad():
        out = model(d["input.x"], d["input.t"], d["input.y"])
    torch.testing.assert_close(out, d["output.forward"], **TOL)


@pytest.mark.parametrize("name", GOLDEN_DIT)
def test_golden_forward_train_label_dropout(name):
    model, d = load_golden_dit(name)
    model.train()
    torch.manual_seed(3)  # exactly one torch.rand(4) inside the label embedder, as the manifest says
    with torch.no_grad():
        out = model(d["input.x"], d["input.t"], d["input.y"])
    torch.testing.assert_close(out, d["output.forward_train"], **TOL)
    # The same output through explicit drop ids: the dropped labels are the ones the manifest records.
    model.eval()
    with torch.no_grad():
        forced = model(d["input.x"], d["input.t"], d["input.y"], force_drop_ids=d["aux.forward_train_drop_ids"])
    torch.testing.assert_close(forced, d["output.forward_train"], **TOL)


@pytest.mark.parametrize("name", GOLDEN_DIT)
def test_golden_cfg_legacy_three_channels(name):
    """The official forward_with_cfg (scale 4, guidance on channels [:3]) through our separate CFG piece."""
    model, d = load_golden_dit(name)
    model.eval()
    n = len(d["input.x"])
    cfg = CFGConfig(scale=4.0, null_class=model.config.num_classes, guided_channels=3)
    with torch.no_grad():
        guided = classifier_free_guidance(model, d["input.y"], cfg)(d["input.x"], d["input.t"])
        uncond = model(d["input.x"], d["input.t"], d["input.y_cfg"][n:])
    expected = d["output.forward_with_cfg"]
    torch.testing.assert_close(guided, expected[:n], **TOL)
    # Second half of the official output: the same guided channels, the rest from the unconditional pass.
    torch.testing.assert_close(expected[n:, :3], guided[:, :3], **TOL)
    torch.testing.assert_close(expected[n:, 3:], uncond[:, 3:], **TOL)


@pytest.mark.parametrize("name", GOLDEN_DIT)
def test_sdpa_equals_explicit_softmax(name):
    model, d = load_golden_dit(name)
    model.eval()
    with torch.no_grad():
        fused = model(d["input.x"], d["input.t"], d["input.y"])
        for block in model.blocks:
            block.attn.fused = False
        explicit = model(d["input.x"], d["input.t"], d["input.y"])
    torch.testing.assert_close(fused, explicit, **TOL)
    torch.testing.assert_close(explicit, d["output.forward"], **TOL)


def test_pos_embed_init_equals_official_table():
    """pos_embed was not randomised in the golden files, so a fresh model must reproduce it exactly."""
    for name in GOLDEN_DIT:
        entry, d = golden(name)
        model = ditlab.create_model("DiT", **entry["constructor_kwargs"])
        torch.testing.assert_close(model.pos_embed, d["model.pos_embed"], atol=0, rtol=0)
        assert not model.pos_embed.requires_grad


def test_sincos_table_hand_values():
    """First half encodes the column, second half the row; each half is [sin, cos]."""
    table = sincos_2d(8, 3)  # 9 tokens, row-major
    token = 1 * 3 + 2  # row 1, column 2
    omega = torch.tensor([1.0, 1.0 / 100.0], dtype=torch.float64)
    expected = torch.cat([torch.sin(2 * omega), torch.cos(2 * omega), torch.sin(1 * omega), torch.cos(1 * omega)])
    torch.testing.assert_close(table[token].double(), expected, atol=1e-7, rtol=0)


def test_timestep_embedding_cos_first():
    emb = timestep_embedding(torch.tensor([0.0, 10.0]), 4)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    freqs = torch.tensor([1.0, 10000 ** -0.5])
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))


def test_official_init():
    model = ditlab.create_model("DiT", **TINY_DIT)
    for block in model.blocks:
        assert block.adaLN_modulation[-1].weight.abs().sum() == 0
        assert block.adaLN_modulation[-1].bias.abs().sum() == 0
        assert block.attn.qkv.bias.abs().sum() == 0  # xavier weights, zero biases
    assert model.final_layer.linear.weight.abs().sum() == 0
    assert model.final_layer.adaLN_modulation[-1].weight.abs().sum() == 0
    std = model.y_embedder.embedding_table.weight.std().item()
    assert 0.015 < std < 0.025
    # adaLN-Zero: every block starts as the identity, so the untrained model outputs exactly zero.
    x = torch.randn(2, 4, 8, 8)
    out = model(x, torch.tensor([1, 500]), torch.tensor([0, 3]))
    assert out.abs().max() == 0


def test_state_dict_keys_xl2():
    with torch.device("meta"):
        model = ditlab.create_model("DiT-XL/2")
    sd = model.state_dict()
    assert len(sd) == 1 + 2 + 4 + 1 + 28 * 10 + 4  # pos, x/t/y embedders, blocks, final layer
    assert sd["pos_embed"].shape == (1, 256, 1152)
    assert sd["x_embedder.proj.weight"].shape == (1152, 4, 2, 2)
    assert sd["y_embedder.embedding_table.weight"].shape == (1001, 1152)
    assert sd["blocks.27.attn.qkv.weight"].shape == (3456, 1152)
    assert sd["blocks.0.adaLN_modulation.1.weight"].shape == (6912, 1152)
    assert sd["final_layer.linear.weight"].shape == (32, 1152)
    assert list(model.buffers()) == []


def test_list_models_has_all_twelve_presets():
    names = ditlab.list_models("DiT")
    assert names == [f"DiT-{s}/{p}" for s in ("XL", "L", "B", "S") for p in (2, 4, 8)]


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_block_variants_shapes_and_training_signal(block):
    model = ditlab.create_model("DiT", block=block, **TINY_DIT)
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 10, 999]), torch.tensor([1, 2, 3])
    out = model(x, t, y)
    assert out.shape == (3, 8, 8, 8)
    (out - torch.randn_like(out)).square().mean().backward()
    # The zero-initialised output layer is what learns first, in every design.
    assert model.final_layer.linear.weight.grad.abs().sum() > 0
    # Once the output layer is non-zero the label changes the output in every design (conditioning is wired).
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.1)
    if block == "adaLN-Zero":
        for b in model.blocks:
            torch.nn.init.normal_(b.adaLN_modulation[-1].weight, std=0.1)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x, t, y), model(x, t, torch.tensor([4, 5, 6])))


def test_grad_checkpointing_same_gradients():
    model = ditlab.create_model("DiT", **TINY_DIT)
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)
    for block in model.blocks:
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 2])
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.grad_checkpointing = ckpt
        torch.manual_seed(1)  # same label dropout in both passes
        model(x, t, y).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


# ---- bad input: one clear line naming the value and what is allowed ----


def test_unknown_preset_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown model 'DiT-XXL/2'; allowed: .*DiT-XL/2.*DiT-S/8"):
        ditlab.create_model("DiT-XXL/2")


def test_unknown_override_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown argument\(s\) hidden for DiT-S/2; allowed: .*hidden_size"):
        ditlab.create_model("DiT-S/2", hidden=3)


def test_input_size_not_divisible_by_patch():
    with pytest.raises(ValueError, match=r"input_size=30 is not divisible by patch_size=4"):
        ditlab.create_model("DiT-S/4", input_size=30)


def test_unknown_block():
    with pytest.raises(ValueError, match=r"block='adaln-zero' is not one of adaLN-Zero, adaLN"):
        ditlab.create_model("DiT", block="adaln-zero")


def test_wrong_channel_count():
    model = ditlab.create_model("DiT", **TINY_DIT)
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 8, 8\); DiT expects \(N, 4, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))


def test_wrong_spatial_size():
    model = ditlab.create_model("DiT", **TINY_DIT)
    with pytest.raises(ValueError, match=r"spatial size \(16, 16\); this model was built for input_size=8"):
        model(torch.randn(2, 4, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 1]))


def test_class_id_out_of_range():
    model = ditlab.create_model("DiT", **TINY_DIT)
    with pytest.raises(ValueError, match=r"class id 11 is out of range: allowed 0..9 and 10 \(the null class\)"):
        model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 11]))
    with pytest.raises(ValueError, match=r"class id -1 is out of range"):
        model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([-1, 1]))
    no_null = ditlab.create_model("DiT", **TINY_DIT, class_dropout_prob=0.0)
    with pytest.raises(ValueError, match=r"class id 10 is out of range: allowed 0..9$"):
        no_null(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 10]))
