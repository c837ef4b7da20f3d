"""MDT / MDTv2: golden parity with sail-sg/MDT, masking, relative bias, init, presets, ledger, loading, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import ditlab
from ditlab.flops import count
from ditlab.models.layers import RelativePositionBias, sincos_2d
from ditlab.models.mdt import MDTBlock, random_masking
from ditlab.models.official import load_official_mdt
from ditlab.models.registry import list_models
from ditlab.sampling.guidance import CFGConfig, classifier_free_guidance, power_cosine_scale
from helpers import golden, golden_state_dict

GOLDEN = {"MDT": "mdtv1_tiny.safetensors", "MDTv2": "mdtv2_tiny.safetensors"}
TOL = dict(atol=1e-5, rtol=1e-5)
TINY = dict(input_size=8, patch_size=2, hidden_size=32, depth=4, num_heads=2, num_classes=10, decode_layer=2)


def load_golden(family: str):
    entry, tensors = golden(GOLDEN[family])
    model = ditlab.create_model(family, **entry["constructor_kwargs"])
    model.load_state_dict(golden_state_dict(tensors), strict=True)
    return model, tensors


def call(model, d, **kw):
    with torch.no_grad():
        return model(d["input.x"], d["input.t"], d["input.y"], **kw)


# ----------------------------------------------------------------------------
# Golden parity.


@pytest.mark.parametrize("family", GOLDEN)
def test_golden_inference_forward(family):
    model, d = load_golden(family)
    model.eval()
    torch.testing.assert_close(call(model, d), d["output.forward"], **TOL)
    torch.testing.assert_close(call(model, d), d["output.forward_with_cfg_none"], **TOL)


@pytest.mark.parametrize("family", GOLDEN)
@pytest.mark.parametrize("mode,seed", [("eval", 5), ("train", 3)])
def test_golden_masked_forward_reproduces_the_draws(family, mode, seed):
    """The manifest's calls verbatim: the seed, then label dropout (train), the v2 ratio and the token order."""
    model, d = load_golden(family)
    model.train(mode == "train")
    torch.manual_seed(seed)
    out = call(model, d, enable_mask=True)
    torch.testing.assert_close(out, d[f"output.forward_masked_{mode}"], **TOL)


@pytest.mark.parametrize("family", GOLDEN)
@pytest.mark.parametrize("tag", ["masked_eval", "masked_train"])
def test_random_masking_alone_matches_aux(family, tag):
    entry, d = golden(GOLDEN[family])
    ratio = entry["constructor_kwargs"]["mask_ratio"]
    if family == "MDTv2":  # one ratio per batch from [r, r + 0.2), float32 as officially
        ratio = d[f"aux.{tag}.rand_mask_ratio_uniform"] * 0.2 + ratio
    x = torch.randn(4, 16, 8)
    kept, m = random_masking(x, ratio, noise=d[f"aux.{tag}.noise"])
    assert m.ids_keep.shape[1] == int(d[f"aux.{tag}.len_keep"])
    assert torch.equal(m.ids_keep, d[f"aux.{tag}.ids_keep"])
    assert torch.equal(m.mask, d[f"aux.{tag}.mask"])
    assert torch.equal(kept, torch.gather(x, 1, m.ids_keep[..., None].expand(-1, -1, 8)))
    # ids_restore undoes the shuffle: the kept tokens land back where they came from.
    assert torch.equal(torch.gather(torch.argsort(d[f"aux.{tag}.noise"], 1), 1, m.ids_restore),
                       torch.arange(16).expand(4, -1))


@pytest.mark.parametrize("family", GOLDEN)
def test_golden_cfg_power_cosine_through_guidance_piece(family):
    """Official forward_with_cfg(cfg_scale=3.8, scale_pow=4) = our CFG with power_cosine_scale, channels [:3]."""
    model, d = load_golden(family)
    model.eval()
    n = len(d["input.x_cfg"]) // 2
    x, t, y = d["input.x_cfg"][:n], d["input.t_cfg"][:n], d["input.y_cfg"][:n]
    cfg = CFGConfig(scale=power_cosine_scale(3.8, 4.0, 1000), null_class=10, guided_channels=3)
    with torch.no_grad():
        guided = classifier_free_guidance(model, y, cfg)(x, t)
        uncond = model(x, t, d["input.y_cfg"][n:])
    expected = d["output.forward_with_cfg"]
    torch.testing.assert_close(guided, expected[:n], **TOL)
    torch.testing.assert_close(expected[n:, :3], guided[:, :3], **TOL)
    torch.testing.assert_close(expected[n:, 3:], uncond[:, 3:], **TOL)


def test_power_cosine_schedule_values():
    w = power_cosine_scale(3.8, 4.0, 1000)(torch.tensor([0, 500, 1000]))
    mid = (3.8 - 1) * (1 - math.cos(math.pi * 0.5**4)) / 2 + 1
    torch.testing.assert_close(w, torch.tensor([3.8, mid, 1.0]))
    with pytest.raises(ValueError, match="power > 0"):
        power_cosine_scale(power=0)


@pytest.mark.parametrize("family", GOLDEN)
def test_sdpa_with_relative_bias_equals_explicit_softmax(family):
    model, d = load_golden(family)
    model.eval()
    fused = call(model, d)
    torch.manual_seed(5)
    fused_masked = call(model, d, enable_mask=True)
    for m in model.modules():
        if hasattr(m, "fused"):
            m.fused = False
    torch.testing.assert_close(call(model, d), fused, atol=2e-6, rtol=1e-5)
    torch.manual_seed(5)
    torch.testing.assert_close(call(model, d, enable_mask=True), fused_masked, atol=2e-6, rtol=1e-5)


# ----------------------------------------------------------------------------
# Structure: keys, buffers, relative bias, init.


@pytest.mark.parametrize("family", GOLDEN)
def test_state_dict_keys_and_parameter_order_are_official(family):
    entry, d = golden(GOLDEN[family])
    model = ditlab.create_model(family, **entry["constructor_kwargs"])
    ours = model.state_dict()
    theirs = golden_state_dict(d)
    assert sorted(ours) == sorted(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert [n for n, _ in model.named_parameters()] == entry["randomized_parameters"]
    for key in entry["buffers"]:  # fixed BEiT index, persisted: a fresh model rebuilds it exactly
        assert ours[key].dtype == torch.int64 and torch.equal(ours[key], theirs[key])


def test_relative_bias_masked_gather_equals_official_double_gather():
    rpb = RelativePositionBias(grid_size=4, num_heads=3)
    ids_keep = torch.stack([torch.randperm(16)[:7] for _ in range(2)])
    full = rpb().unsqueeze(0).repeat(2, 1, 1, 1)  # (B, H, N, N)
    rows = torch.gather(full, 2, ids_keep[:, None, :, None].expand(-1, 3, -1, 16))
    expected = torch.gather(rows, 3, ids_keep[:, None, None, :].expand(-1, 3, 7, -1))
    assert torch.equal(rpb(ids_keep), expected)
    assert rpb.relative_position_bias_table.shape == (7 * 7 + 3, 3)
    # Same relative offset -> same bias: token pairs (0, 5) and (10, 15) are both one row down, one column right.
    bias = rpb()
    assert torch.equal(bias[:, 0, 5], bias[:, 10, 15])


@pytest.mark.parametrize("family", ["MDT", "MDTv2"])
def test_official_init(family):
    model = ditlab.create_model(family, **TINY)
    table = sincos_2d(32, 4).unsqueeze(0)
    assert torch.equal(model.pos_embed.data, table) and torch.equal(model.decoder_pos_embed.data, table)
    assert model.pos_embed.requires_grad and model.decoder_pos_embed.requires_grad  # learnable, unlike DiT
    blocks = [m for m in model.modules() if isinstance(m, MDTBlock)]
    assert len(blocks) == TINY["depth"] + 1 and model.sideblocks[0] in blocks
    assert all(not b.adaLN_modulation[-1].weight.any() for b in blocks)
    assert not model.final_layer.linear.weight.any()
    assert 0.005 < model.mask_token.std() < 0.05 and model.mask_token.requires_grad
    no_mask = ditlab.create_model(family, **{**TINY, "mask_ratio": None})
    assert not no_mask.mask_token.any() and not no_mask.mask_token.requires_grad
    assert "mask_token" in no_mask.state_dict()


def test_mdtv2_layout_and_long_skips():
    model = ditlab.create_model("MDTv2", **{**TINY, "depth": 6})  # half = (6 - 2) / 2 = 2
    assert (len(model.en_inblocks), len(model.en_outblocks), len(model.de_blocks)) == (2, 2, 2)
    assert all(b.skip_linear is None for b in model.en_inblocks) and model.sideblocks[0].skip_linear is None
    assert all(b.skip_linear.in_features == 64 for b in (*model.en_outblocks, *model.de_blocks))
    assert len(model.blocks) == 7
    # The dense input skip: decoder output changes with the *input tokens* even when the encoder path is fixed.
    seen = []
    model.de_blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[2]))
    x = torch.randn(2, 4, 8, 8)
    model.eval()(x, torch.tensor([1, 2]), torch.tensor([0, 1]))
    torch.testing.assert_close(seen[0], model.x_embedder(x) + model.pos_embed)


def test_masked_pass_trains_side_block_and_plain_pass_does_not():
    model = ditlab.create_model("MDTv2", **TINY)
    for p in model.parameters():  # leave the zero init so that every path carries gradient
        torch.nn.init.normal_(p, std=0.05) if p.requires_grad else None
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 2])
    model(x, t, y).square().mean().backward()
    assert model.sideblocks[0].attn.qkv.weight.grad is None and model.mask_token.grad is None
    model(x, t, y, enable_mask=True).square().mean().backward()
    assert model.sideblocks[0].attn.qkv.weight.grad.abs().sum() > 0 and model.mask_token.grad.abs().sum() > 0


def test_grad_checkpointing_gives_the_same_gradients():
    model = ditlab.create_model("MDT", **TINY)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 2])
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.grad_checkpointing = flag
        torch.manual_seed(1)
        model(x, t, y, enable_mask=True).sum().backward()
        grads.append(model.x_embedder.proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


# ----------------------------------------------------------------------------
# Registry and ledger.


def test_presets_and_family_defaults():
    names = list_models("MDT") + list_models("MDTv2")
    assert names == [f"MDT-{s}/{p}" for s in ("XL", "L", "B", "S") for p in (2, 4, 8)] + [
        f"MDTv2-{s}/2" for s in ("XL", "L", "B", "S")
    ]
    assert ditlab.create_model("MDTv2", **{**TINY, "decode_layer": 2}).config.decode_layer == 2
    _, v1 = ditlab.models.registry.model_config("MDT-XL/2")
    _, v2 = ditlab.models.registry.model_config("MDTv2-XL/2")
    assert (v1.decode_layer, v2.decode_layer, v2.half_depth, v1.mask_ratio) == (2, 4, 12, 0.3)
    assert ditlab.models.registry.family_of(ditlab.create_model("MDTv2", **TINY)) == "MDTv2"


# Parameter counts of ../shared/papers/mdt.md (hand-computed there, M, one decimal), decode_layer as noted.
PAPER_PARAMS = [("MDT-XL/2", {}, 699.8), ("MDT-L/2", {}, 477.6), ("MDT-B/2", {}, 141.5), ("MDT-S/2", {}, 35.8),
                ("MDTv2-XL/2", {}, 742.3), ("MDTv2-L/2", {}, 507.0), ("MDTv2-B/2", {}, 150.9),
                ("MDTv2-S/2", {}, 38.2), ("MDTv2-B/2", {"decode_layer": 6}, 152.1)]


@pytest.mark.parametrize("name,kw,millions", PAPER_PARAMS)
def test_parameter_counts_of_the_notes(name, kw, millions):
    assert abs(count(name, 256, **kw).params / 1e6 - millions) < 0.05


def side_block_params(hidden: int) -> int:
    """One MDTBlock: qkv + proj + mlp + adaLN + a (31*31+3, 16) relative table at 256 px."""
    d = hidden
    return (3 * d * d + 3 * d) + (d * d + d) + (8 * d * d + 5 * d) + (6 * d * d + 6 * d) + (31 * 31 + 3) * 16


def test_mdt_xl2_without_side_block_and_inference_gflops():
    v1, v2, dit = count("MDT-XL/2", 256), count("MDTv2-XL/2", 256), count("DiT-XL/2", 256)
    assert abs((v1.params - side_block_params(1152)) / 1e6 - 675.9) < 0.05  # the "676M" quoted for MDT-XL/2
    # Inference = DiT's matmuls (the side block and masking are training-only) plus MDTv2's skip_linears.
    assert v1.gmacs == dit.gmacs and round(v1.gmacs, 1) == 118.6
    skip_macs = (12 + 4) * 256 * 2 * 1152 * 1152
    assert v2.gmacs * 1e9 == pytest.approx(dit.gmacs * 1e9 + skip_macs, abs=1)
    assert round(v2.gmacs, 1) == 129.5


# ----------------------------------------------------------------------------
# Official checkpoints from a local path.


def test_official_checkpoint_loads_strict_and_wrong_decode_layer_is_named(tmp_path):
    cfg = dict(input_size=8, num_classes=10, decode_layer=6)
    with torch.device("meta"):
        shapes = ditlab.create_model("MDTv2-S/2", **cfg).state_dict()
    state = {k: torch.randn(v.shape) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
             for k, v in shapes.items()}
    state.update({k: v for k, v in ditlab.create_model("MDTv2", **{**TINY, "input_size": 8}).state_dict().items()
                  if k.endswith("relative_position_index") and k in state})
    path = tmp_path / "mdt_s2_v2.pt"
    torch.save(state, path)
    model = load_official_mdt(path, "MDTv2-S/2")
    assert model.config.decode_layer == 6 and model.config.input_size == 8 and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match=r"needs decode_layer=6, not decode_layer=4"):
        load_official_mdt(path, "MDTv2-S/2", decode_layer=4)
    with pytest.raises(ValueError, match="does not fit"):
        load_official_mdt(path, "MDTv2-B/2")


def test_official_v1_checkpoint_loads_with_the_given_decode_layer(tmp_path):
    entry, d = golden(GOLDEN["MDT"])
    path = tmp_path / "mdt_v1.pt"
    torch.save(golden_state_dict(d), path)
    kwargs = {k: v for k, v in entry["constructor_kwargs"].items() if k not in ("input_size", "num_classes")}
    model = load_official_mdt(path, "MDT", **kwargs)  # input size and classes read off the weights
    assert (model.config.input_size, model.config.num_classes, model.config.decode_layer) == (8, 10, 2)
    torch.testing.assert_close(call(model, d), d["output.forward"], **TOL)


# ----------------------------------------------------------------------------
# Bad input: one-line errors.


@pytest.mark.parametrize(
    "family,kw,message",
    [
        ("MDT", {"mask_ratio": 1.0}, r"mask_ratio=1.0 must be in \[0, 1\)"),
        ("MDT", {"mask_ratio": -0.1}, r"mask_ratio=-0.1 must be in \[0, 1\)"),
        ("MDTv2", {"mask_ratio": 0.9}, r"mask_ratio=0.9 must be in \[0, 0.8\)"),
        ("MDT", {"decode_layer": 4}, r"decode_layer=4 must be in \[1, depth-1\] = \[1, 3\]"),
        ("MDTv2", {"decode_layer": 0}, r"decode_layer=0 must be in"),
        ("MDTv2", {"decode_layer": 1}, r"depth - decode_layer = 4 - 1 is odd"),
        ("MDT", {"input_size": 9}, r"input_size=9 is not divisible by patch_size=2"),
    ],
)
def test_bad_config_is_one_line(family, kw, message):
    with pytest.raises(ValueError, match=message) as err:
        ditlab.create_model(family, **{**TINY, **kw})
    assert "\n" not in str(err.value)


def test_bad_calls_are_one_line():
    model = ditlab.create_model("MDT", **{**TINY, "mask_ratio": None})
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="enable_mask=True needs a model built with mask_ratio"):
        model(x, t, y, enable_mask=True)
    with pytest.raises(ValueError, match=r"spatial size \(6, 6\); this model was built for input_size=8"):
        model(torch.randn(2, 4, 6, 6), t, y)
    with pytest.raises(ValueError, match=r"expects \(N, 4, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8), t, y)
    with pytest.raises(ValueError, match=r"class id 11 is out of range: allowed 0..9 and 10 \(the null class\)"):
        model(x, t, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="keeps no token"):
        random_masking(torch.randn(1, 4, 2), 0.9)
