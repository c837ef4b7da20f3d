"""Loading official checkpoints: file formats, weights_only, key checks with useful errors, golden parity."""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ditlab import create_model
from ditlab.models.official import (
    CheckpointLayout,
    extract_state_dict,
    infer_dit_config,
    load_into,
    load_official_dit,
    load_official_state_dict,
    matching_presets,
)
from ditlab.models.registry import FAMILIES

GOLDEN = Path(__file__).parent / "golden"
TINY = dict(depth=2, hidden_size=64, num_heads=4, input_size=8, num_classes=10)


def _tiny_dit(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = create_model("DiT", **{**TINY, **overrides})
    # The official init zeroes the adaLN and output layers; perturb every weight so outputs depend on all.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _inputs(model, n: int = 3):
    g = torch.Generator().manual_seed(5)
    cfg = model.config
    x = torch.randn(n, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, cfg.num_classes, (n,), generator=g)
    return x, t, y


def _assert_same_outputs(a, b) -> None:
    inputs = _inputs(a)
    with torch.no_grad():
        torch.testing.assert_close(a(*inputs), b(*inputs), atol=0, rtol=0)


# ----------------------------------------------------------------------------
# File formats.


def test_raw_state_dict_round_trip(tmp_path: Path) -> None:
    model = _tiny_dit()
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    loaded = load_official_dit(tmp_path / "raw.pt", num_heads=4)
    assert loaded.config == model.config
    assert not loaded.training
    assert not loaded.pos_embed.requires_grad and loaded.x_embedder.proj.weight.requires_grad
    _assert_same_outputs(model, loaded)


def test_train_script_checkpoint_takes_ema_and_allows_namespace_args(tmp_path: Path) -> None:
    model, ema = _tiny_dit(seed=0), _tiny_dit(seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(*_inputs(model)).square().mean().backward()
    opt.step()
    args = argparse.Namespace(model="DiT-XL/2", image_size=256, num_classes=10, results_dir="out", vae="ema")
    checkpoint = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "args": args}
    torch.save(checkpoint, tmp_path / "0400000.pt")
    state_dict = load_official_state_dict(tmp_path / "0400000.pt")
    assert state_dict.keys() == ema.state_dict().keys()
    torch.testing.assert_close(state_dict, ema.state_dict(), atol=0, rtol=0)
    _assert_same_outputs(ema, load_official_dit(tmp_path / "0400000.pt", num_heads=4))


def test_safetensors_file(tmp_path: Path) -> None:
    model = _tiny_dit()
    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    _assert_same_outputs(model, load_official_dit(tmp_path / "weights.safetensors", num_heads=4))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefix_on_every_key_is_stripped(tmp_path: Path, prefix: str) -> None:
    state_dict = _tiny_dit().state_dict()
    torch.save({prefix + k: v for k, v in state_dict.items()}, tmp_path / "wrapped.pt")
    assert load_official_state_dict(tmp_path / "wrapped.pt").keys() == state_dict.keys()


def test_prefix_on_some_keys_only_is_kept_and_reported(tmp_path: Path) -> None:
    state_dict = _tiny_dit().state_dict()
    state_dict["module.pos_embed"] = state_dict.pop("pos_embed")
    torch.save(state_dict, tmp_path / "odd.pt")
    assert "module.pos_embed" in load_official_state_dict(tmp_path / "odd.pt")
    model = create_model("DiT", **TINY)
    with pytest.raises(ValueError, match="missing") as info:
        load_into(model, state_dict, "DiT")
    assert "missing from the checkpoint: pos_embed" in str(info.value)
    assert "unexpected in the checkpoint: module.pos_embed" in str(info.value)


def test_layout_prefix_selects_and_strips_keys() -> None:
    """How a family such as DDT (Lightning ``state_dict`` with ``ema_denoiser.``) plugs in."""
    weights = {"a.weight": torch.ones(2), "b.bias": torch.zeros(2)}
    raw = {f"denoiser.{k}": v + 1 for k, v in weights.items()}
    ema = {f"ema_denoiser.{k}": v for k, v in weights.items()}
    lightning = {"state_dict": raw | ema, "epoch": 3, "global_step": 1000}
    layout = CheckpointLayout(containers=("state_dict",), prefix="ema_denoiser.")
    torch.testing.assert_close(extract_state_dict(lightning, layout), weights, atol=0, rtol=0)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "DiT-XL-2-256x256.pt"
    with pytest.raises(FileNotFoundError, match="DiT-XL-2-256x256.pt"):
        load_official_state_dict(path)


def test_checkpoint_without_weights_lists_its_keys(tmp_path: Path) -> None:
    torch.save({"step": 3, "config": {"lr": 1.0}}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"'ema'.*'step', 'config'"):
        load_official_state_dict(tmp_path / "odd.pt")


# ----------------------------------------------------------------------------
# weights_only: no code from a pickle ever runs.


class Payload:
    """An arbitrary object whose unpickling would run code (writes a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (str(self.marker),))


def _write_marker(path: str) -> None:
    Path(path).write_text("code ran")


def test_arbitrary_pickles_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    torch.save({"ema": {"w": torch.ones(1)}, "extra": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError, match=r"weights_only=True.*refuses") as info:
        load_official_state_dict(tmp_path / "evil.pt")
    assert "_write_marker" in str(info.value) and "evil.pt" in str(info.value)
    assert not marker.exists()


def test_torch_load_is_called_with_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.save(_tiny_dit().state_dict(), tmp_path / "raw.pt")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_official_state_dict(tmp_path / "raw.pt")
    assert calls == [{"map_location": "cpu", "weights_only": True}]


# ----------------------------------------------------------------------------
# Inferring the config, and errors that say what would fit.


def test_infer_config_of_a_tiny_model() -> None:
    model = _tiny_dit(learn_sigma=False, patch_size=4, input_size=16, mlp_ratio=2.0)
    config = infer_dit_config(model.state_dict())
    assert config == {
        "input_size": 16,
        "patch_size": 4,
        "in_channels": 4,
        "hidden_size": 64,
        "depth": 2,
        "num_heads": None,  # no preset of this width and depth: not recoverable from the weights
        "mlp_ratio": 2.0,
        "class_dropout_prob": 0.1,
        "num_classes": 10,
        "learn_sigma": False,
        "block": "adaLN-Zero",
    }
    assert matching_presets(model.state_dict()) == []


def test_label_table_without_null_row() -> None:
    state_dict = _tiny_dit(class_dropout_prob=0.0).state_dict()  # 10 rows, no CFG null class
    assert infer_dit_config(state_dict)["num_classes"] == 9  # ambiguous: the official layout is assumed
    config = infer_dit_config(state_dict, num_classes=10)
    assert (config["num_classes"], config["class_dropout_prob"]) == (10, 0.0)
    with pytest.raises(ValueError, match="12 rows"):
        infer_dit_config(_tiny_dit(num_classes=11).state_dict(), num_classes=5)


@pytest.mark.parametrize("block", ["adaLN", "cross-attention", "in-context"])
def test_infer_block_variant(block: str) -> None:
    assert infer_dit_config(_tiny_dit(block=block).state_dict())["block"] == block


def test_heads_must_be_given_when_no_preset_fits(tmp_path: Path) -> None:
    torch.save(_tiny_dit().state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="num_heads"):
        load_official_dit(tmp_path / "tiny.pt")


def test_preset_supplies_the_heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a preset of the checkpoint's width and depth, the whole config comes from the file."""
    tiny_preset = {"depth": 2, "hidden_size": 64, "num_heads": 4, "patch_size": 2}
    monkeypatch.setitem(FAMILIES["DiT"].presets, "DiT-T/2", tiny_preset)
    model = _tiny_dit()
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    assert matching_presets(model.state_dict()) == ["DiT-T/2 at input_size=8 (64 px), num_classes=10"]
    loaded = load_official_dit(tmp_path / "tiny.pt")
    assert loaded.config == model.config
    _assert_same_outputs(model, loaded)
    _assert_same_outputs(model, load_official_dit(tmp_path / "tiny.pt", "DiT-T/2"))


def test_wrong_preset_names_the_mismatch_and_the_fit(tmp_path: Path) -> None:
    torch.save(_tiny_dit().state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ValueError) as info:
        load_official_dit(tmp_path / "tiny.pt", "DiT-S/2")
    message = str(info.value)
    first, *rest = message.splitlines()
    assert first.startswith("checkpoint does not fit DiT-S/2 at input_size=8: ")
    assert "pos_embed (1, 16, 64) vs (1, 16, 384)" in message
    assert "unexpected in the checkpoint" not in message  # its 2 blocks exist among the 12 of S/2
    assert "missing from the checkpoint: blocks.2." in message
    assert rest[-1].strip().startswith("it fits no preset; it fits DiT with input_size=8, patch_size=2")
    assert "hidden_size=64, depth=2" in rest[-1]


def test_wrong_input_size_names_the_size_that_fits(tmp_path: Path) -> None:
    torch.save(_tiny_dit().state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match=r"pos_embed \(1, 16, 64\) vs \(1, 64, 64\)(.|\n)*input_size=8"):
        load_official_dit(tmp_path / "tiny.pt", num_heads=4, input_size=16)


def test_unknown_preset_is_refused(tmp_path: Path) -> None:
    torch.save(_tiny_dit().state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="unknown DiT model 'DiT-M/2'"):
        load_official_dit(tmp_path / "tiny.pt", "DiT-M/2")


# ----------------------------------------------------------------------------
# Golden parity through the loader, and the official XL/2 key list.


def test_golden_tiny_dit_through_the_official_loader(tmp_path: Path) -> None:
    golden = load_file(GOLDEN / "dit_tiny.safetensors")
    raw = {k.removeprefix("model."): v for k, v in golden.items() if k.startswith("model.")}
    torch.save(raw, tmp_path / "dit_tiny.pt")
    config = infer_dit_config(raw)
    assert {k: v for k, v in config.items() if k not in ("num_heads", "block")} == {
        "input_size": 8,
        "patch_size": 2,
        "in_channels": 4,
        "hidden_size": 64,
        "depth": 2,
        "mlp_ratio": 4.0,
        "class_dropout_prob": 0.1,
        "num_classes": 10,
        "learn_sigma": True,
    }
    model = load_official_dit(tmp_path / "dit_tiny.pt", num_heads=4)  # heads are not in the weights
    model.eval()
    with torch.no_grad():
        out = model(golden["input.x"], golden["input.t"], golden["input.y"])
    torch.testing.assert_close(out, golden["output.forward"], atol=1e-5, rtol=1e-5)


def _official_xl2_shapes(image_size: int) -> dict[str, tuple[int, ...]]:
    """The key list of DiT-XL-2-{256,512}.pt as derived in the paper notes (dit.md section 4)."""
    d, tokens = 1152, (image_size // 8 // 2) ** 2
    shapes = {
        "pos_embed": (1, tokens, d),
        "x_embedder.proj.weight": (d, 4, 2, 2),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (1001, d),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
        "final_layer.linear.weight": (32, d),
        "final_layer.linear.bias": (32,),
    }
    for i in range(28):
        for name, rows in (
            ("attn.qkv", 3 * d),
            ("attn.proj", d),
            ("mlp.fc1", 4 * d),
            ("adaLN_modulation.1", 6 * d),
        ):
            shapes[f"blocks.{i}.{name}.weight"] = (rows, d)
            shapes[f"blocks.{i}.{name}.bias"] = (rows,)
        shapes[f"blocks.{i}.mlp.fc2.weight"] = (d, 4 * d)
        shapes[f"blocks.{i}.mlp.fc2.bias"] = (d,)
    return shapes


@pytest.mark.parametrize("image_size", [256, 512])
def test_xl2_keys_and_shapes_match_the_official_list(image_size: int) -> None:
    with torch.device("meta"):
        model = create_model("DiT-XL/2", input_size=image_size // 8)
    state_dict = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state_dict.items()} == _official_xl2_shapes(image_size)
    assert matching_presets(state_dict) == [f"DiT-XL/2 at input_size={image_size // 8} ({image_size} px)"]
    config = infer_dit_config(state_dict)
    assert (config["depth"], config["hidden_size"], config["num_heads"], config["num_classes"]) == (
        28,
        1152,
        16,
        1000,
    )


def test_xl2_512_checkpoint_in_a_256_model_says_it_fits_512() -> None:
    with torch.device("meta"):
        model_256 = create_model("DiT-XL/2")
        weights_512 = create_model("DiT-XL/2", input_size=64).state_dict()
    with pytest.raises(ValueError) as info:
        load_into(model_256, weights_512, "DiT-XL/2")
    first, *_, last = str(info.value).splitlines()
    assert first == (
        "checkpoint does not fit DiT-XL/2 at input_size=32: 1 shape mismatch(es) "
        "(pos_embed (1, 1024, 1152) vs (1, 256, 1152))"
    )
    assert last.strip() == "it fits DiT-XL/2 at input_size=64 (512 px)"


def test_xl2_weights_in_an_l2_model_truncate_long_lists() -> None:
    with torch.device("meta"):
        model = create_model("DiT-L/2")
        weights = create_model("DiT-XL/2").state_dict()
    with pytest.raises(ValueError) as info:
        load_into(model, weights, "DiT-L/2")
    message = str(info.value)
    assert "40 unexpected key(s)" in message.splitlines()[0]
    assert "blocks.24.attn.qkv.weight" in message and "(+35 more)" in message
    assert message.splitlines()[-1].strip() == "it fits DiT-XL/2 at input_size=32 (256 px)"


def test_meta_model_takes_the_checkpoint_tensors(tmp_path: Path) -> None:
    source = _tiny_dit()
    with torch.device("meta"):
        target = create_model("DiT", **TINY)
    load_into(target, source.state_dict(), "DiT").eval()
    assert not any(p.is_meta for p in target.parameters())
    assert not target.pos_embed.requires_grad
    _assert_same_outputs(source, target)


# ----------------------------------------------------------------------------
# Which family a file belongs to, and what the weights cannot tell.

FAMILY_SIZES = {
    "DiT": dict(input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=10),
    "MDT": dict(input_size=8, patch_size=2, hidden_size=32, depth=4, num_heads=2, num_classes=10, decode_layer=2),
    "MDTv2": dict(input_size=8, patch_size=2, hidden_size=32, depth=4, num_heads=2, num_classes=10, decode_layer=2),
    "DDT": dict(input_size=8, patch_size=2, hidden_size=32, num_blocks=3, num_encoder_blocks=2, num_groups=2,
                num_classes=10),
    "DiffuSSM": dict(input_size=4, hidden_size=16, depth=2, state_size=4, num_classes=10),
}


def _family_file(tmp_path: Path, family: str) -> Path:
    path = tmp_path / f"{family}.pt"
    torch.manual_seed(0)
    state = create_model(family, **FAMILY_SIZES[family]).state_dict()  # random everywhere (no zeroed layers):
    torch.save({k: torch.randn_like(v) * 0.2 if v.is_floating_point() else v for k, v in state.items()}, path)
    return path


def test_checkpoint_family_reads_the_keys() -> None:
    from ditlab.models.official import checkpoint_family

    for family, sizes in FAMILY_SIZES.items():
        assert checkpoint_family(create_model(family, **sizes).state_dict()) == family
    assert checkpoint_family({"w": torch.zeros(1)}) is None


def test_official_file_family_unwraps_train_script_and_lightning_files() -> None:
    from ditlab.models.official import official_file_family

    dit = create_model("DiT", **FAMILY_SIZES["DiT"]).state_dict()
    ddt = create_model("DDT", **FAMILY_SIZES["DDT"]).state_dict()
    assert official_file_family({"model": dit, "ema": dit, "opt": {}, "args": None}) == "DiT"  # DiT train.py
    lightning = {"state_dict": {**{f"ema_denoiser.{k}": v for k, v in ddt.items()},
                                **{f"denoiser.{k}": v for k, v in ddt.items()}}, "epoch": 3}
    assert official_file_family(lightning) == "DDT"
    assert official_file_family({"state_dict": {"w": torch.zeros(1)}}) is None
    assert official_file_family([dit]) is None


@pytest.mark.parametrize("family,label,loader", [("DiT", "DiT", "load_official_dit"),
                                                 ("MDT", "MDT v1", "load_official_mdt(path, 'MDT-XL/2'")])
def test_a_dit_or_mdt_v1_file_loaded_as_mdtv2_names_its_family(tmp_path: Path, family: str, label: str,
                                                                loader: str) -> None:
    from ditlab.models.official import load_official_mdt

    path = _family_file(tmp_path, family)
    with pytest.raises(ValueError, match=f"does not hold MDTv2 weights: its keys are those of {label}; load it "
                                         f"with {re.escape(loader)}") as err:
        load_official_mdt(path, "MDTv2-S/2")
    assert "decode_layer=0" not in str(err.value) and "\n" not in str(err.value)


def test_files_of_other_families_are_named_by_every_loader(tmp_path: Path) -> None:
    from ditlab.models.official import load_official_ddt, load_official_mdt

    with pytest.raises(ValueError, match="does not hold DiT weights: its keys are those of MDTv2"):
        load_official_dit(_family_file(tmp_path, "MDTv2"))
    with pytest.raises(ValueError, match="does not hold DDT weights: its keys are those of DiT"):
        load_official_ddt(_family_file(tmp_path, "DiT"))
    with pytest.raises(ValueError, match="does not hold MDT weights: its keys are those of MDTv2"):
        load_official_mdt(_family_file(tmp_path, "MDTv2"), "MDT-S/2")


def test_a_ddt_split_or_mdt_v1_decode_layer_that_keeps_the_depth_cannot_be_detected(tmp_path: Path) -> None:
    """Documented limit: these load without error and compute another network (the weights cannot tell)."""
    from ditlab.models.official import load_official_ddt, load_official_mdt

    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.7]), torch.tensor([1, 2])
    ddt_path = _family_file(tmp_path, "DDT")
    right, _ = load_official_ddt(ddt_path, num_encoder_blocks=2)
    wrong, _ = load_official_ddt(ddt_path, num_encoder_blocks=1)
    with torch.no_grad():
        assert not torch.allclose(right(x, t, y)[0], wrong(x, t, y)[0])
    mdt_path = _family_file(tmp_path, "MDT")
    args = {k: v for k, v in FAMILY_SIZES["MDT"].items() if k not in ("input_size", "num_classes", "decode_layer")}
    right = load_official_mdt(mdt_path, "MDT", **args, decode_layer=2)
    wrong = load_official_mdt(mdt_path, "MDT", **args, decode_layer=1)
    with torch.no_grad():
        assert not torch.allclose(right(x, torch.tensor([10, 900]), y), wrong(x, torch.tensor([10, 900]), y))
