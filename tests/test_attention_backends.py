"""Attention backends: FlexAttention with MDT's relative bias as a score_mod equals SDPA and the explicit softmax.

Everything runs on CPU, where flex_attention is torch's eager reference implementation. torch refuses a flex
backward on CPU at its API (CUDA has the kernels), so gradient tests lift that check to compare the score_mod's
gradients; without the lift, CPU training with the "flex" backend runs SDPA (tested too).
"""

from __future__ import annotations

import sys

import pytest
import torch

import ditlab
from ditlab.models import layers
from ditlab.models.layers import Attention, CrossAttention, RelPosAttention, set_attention_backend
from helpers import TINY_DIT, golden, golden_state_dict

flex_module = pytest.importorskip("torch.nn.attention.flex_attention")

# Eager flex warns once that it is unfused; on CPU that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

GOLDEN = {"MDT": "mdtv1_tiny.safetensors", "MDTv2": "mdtv2_tiny.safetensors"}
TOL = dict(atol=1e-5, rtol=1e-5)
DIM, HEADS, GRID = 16, 2, 4  # 16 tokens


def rel_pos_attention(backend: str) -> RelPosAttention:
    torch.manual_seed(0)
    attn = RelPosAttention(DIM, HEADS, GRID)
    with torch.no_grad():  # a bias of order one, so a wrong gather shows (the init's std is 0.02)
        attn.rel_pos_bias.relative_position_bias_table.normal_()
    return set_attention_backend(attn, backend)


def per_row_ids_keep(batch: int = 3, keep: int = 11) -> torch.Tensor:
    """Different kept tokens, in shuffled order, for each batch row."""
    g = torch.Generator().manual_seed(1)
    return torch.stack([torch.randperm(GRID * GRID, generator=g)[:keep] for _ in range(batch)])


def inputs(ids_keep: torch.Tensor | None) -> torch.Tensor:
    length = GRID * GRID if ids_keep is None else ids_keep.shape[1]
    return torch.randn(3, length, DIM, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def flex_calls(monkeypatch) -> list[int]:
    """Counts the calls that really go through FlexAttention (the fallback must not pass for it)."""
    calls: list[int] = []
    real = layers._flex_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(layers, "_flex_attention", spy)
    return calls


@pytest.fixture
def cpu_flex_backward(monkeypatch) -> None:
    """Lift torch's API refusal of a flex backward on CPU: its eager math backward works (checked here)."""
    monkeypatch.setattr(flex_module, "_validate_device", lambda *args: None)
    monkeypatch.setattr(layers, "_FLEX_NO_BACKWARD_DEVICES", frozenset())


def outputs(ids_keep: torch.Tensor | None, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {backend: rel_pos_attention(backend)(x, ids_keep) for backend in ("flex", "explicit", "sdpa")}


@pytest.mark.parametrize("masked", [False, True], ids=["all_tokens", "ids_keep"])
def test_flex_equals_explicit_and_sdpa_forward(masked, flex_calls):
    ids_keep = per_row_ids_keep() if masked else None
    out = outputs(ids_keep, inputs(ids_keep))
    assert len(flex_calls) == 1
    torch.testing.assert_close(out["flex"], out["explicit"], **TOL)
    torch.testing.assert_close(out["flex"], out["sdpa"], **TOL)


@pytest.mark.parametrize("masked", [False, True], ids=["all_tokens", "ids_keep"])
def test_flex_gradients_match_explicit(masked, flex_calls, cpu_flex_backward):
    ids_keep = per_row_ids_keep() if masked else None
    grads = {}
    for backend in ("flex", "explicit"):
        attn = rel_pos_attention(backend)
        x = inputs(ids_keep).requires_grad_()
        out = attn(x, ids_keep)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        table = attn.rel_pos_bias.relative_position_bias_table
        grads[backend] = torch.autograd.grad((out * weights).sum(), [x, table, attn.qkv.weight])
    assert len(flex_calls) == 1
    assert grads["flex"][1].abs().sum() > 0  # the table's gradient comes through the score_mod
    for flex_grad, explicit_grad in zip(grads["flex"], grads["explicit"], strict=True):
        torch.testing.assert_close(flex_grad, explicit_grad, **TOL)


def test_cpu_training_with_flex_falls_back_to_sdpa(flex_calls):
    """torch has no flex backward on CPU: a forward that needs gradients uses SDPA with the same bias."""
    ids_keep = per_row_ids_keep()
    x = inputs(ids_keep)
    out = rel_pos_attention("flex")(x, ids_keep)
    assert out.requires_grad and not flex_calls
    torch.testing.assert_close(out, rel_pos_attention("sdpa")(x, ids_keep), atol=0, rtol=0)


def test_flex_under_bf16_autocast(flex_calls, cpu_flex_backward):
    """bf16 q/k/v with the fp32 bias table: flex runs, agrees with SDPA to bf16 precision, the table grad is fp32."""
    ids_keep = per_row_ids_keep()
    x = inputs(ids_keep)
    out = {}
    for backend in ("flex", "sdpa"):
        attn = rel_pos_attention(backend)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out[backend] = attn(x, ids_keep)
        table = attn.rel_pos_bias.relative_position_bias_table
        (grad,) = torch.autograd.grad(out[backend].float().sum(), [table])
        assert out[backend].dtype == torch.bfloat16 and grad.dtype == table.dtype == torch.float32
    assert len(flex_calls) == 1
    torch.testing.assert_close(out["flex"].float(), out["sdpa"].float(), atol=3e-2, rtol=3e-2)


def load_golden(family: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    entry, tensors = golden(GOLDEN[family])
    model = ditlab.create_model(family, **entry["constructor_kwargs"])
    model.load_state_dict(golden_state_dict(tensors), strict=True)
    return model, tensors


def call(model: torch.nn.Module, d: dict[str, torch.Tensor], **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(d["input.x"], d["input.t"], d["input.y"], **kw)


@pytest.mark.parametrize("family", GOLDEN)
def test_mdt_flex_reproduces_the_official_golden_outputs(family, flex_calls):
    """Plain and masked (training) forwards, as in test_mdt's golden tests, with flex and with SDPA."""
    model, d = load_golden(family)
    for backend in ("sdpa", "flex"):
        set_attention_backend(model, backend)
        model.eval()
        torch.testing.assert_close(call(model, d), d["output.forward"], **TOL)
        for mode, seed in (("eval", 5), ("train", 3)):
            model.train(mode == "train")
            torch.manual_seed(seed)
            torch.testing.assert_close(call(model, d, enable_mask=True), d[f"output.forward_masked_{mode}"], **TOL)
    assert flex_calls  # the flex pass really ran FlexAttention


def test_mdt_flex_training_gradients_equal_sdpa(cpu_flex_backward, flex_calls):
    """A tiny MDTv2's masked training pass: the loss gradients of every parameter agree between flex and SDPA."""
    model, d = load_golden("MDTv2")
    model.train()
    grads = {}
    for backend in ("sdpa", "flex"):
        set_attention_backend(model, backend)
        torch.manual_seed(3)
        out = model(d["input.x"], d["input.t"], d["input.y"], enable_mask=True)
        params = [p for p in model.parameters() if p.requires_grad]
        grads[backend] = torch.autograd.grad(out.square().mean(), params, allow_unused=True)
    assert flex_calls
    for name, g_sdpa, g_flex in zip([n for n, p in model.named_parameters() if p.requires_grad],
                                    grads["sdpa"], grads["flex"], strict=True):
        if g_sdpa is None:
            assert g_flex is None, name
        else:
            torch.testing.assert_close(g_flex, g_sdpa, **TOL, msg=lambda m, name=name: f"{name}: {m}")


def test_backends_set_the_flags_and_keep_the_state_dict():
    dit = ditlab.create_model("DiT", **TINY_DIT)
    attention_modules = [m for m in dit.modules() if isinstance(m, (Attention, CrossAttention))]
    assert attention_modules and all(m.fused for m in attention_modules)
    assert set_attention_backend(dit, "explicit") is dit
    assert not any(m.fused for m in dit.modules() if hasattr(m, "fused"))
    set_attention_backend(dit, "flex")  # no relative bias in DiT: flex leaves it on SDPA
    assert all(m.fused for m in attention_modules)

    mdt, _ = load_golden("MDT")
    keys = list(mdt.state_dict())
    set_attention_backend(mdt, "flex")
    rel = [m for m in mdt.modules() if isinstance(m, RelPosAttention)]
    assert rel and all(m.flex and m.fused for m in rel)
    assert list(mdt.state_dict()) == keys
    set_attention_backend(mdt, "sdpa")
    assert not any(m.flex for m in rel) and all(m.fused for m in rel)


def test_bad_backend_name_is_refused():
    with pytest.raises(ValueError, match=r"'flash'.*sdpa, explicit, flex"):
        set_attention_backend(torch.nn.Linear(2, 2), "flash")


def test_flex_without_flex_attention_names_the_torch_version(monkeypatch):
    """torch 2.4 (allowed by the project) has no flex_attention: asking for it says which torch is needed."""
    monkeypatch.setattr(layers, "_flex_fn", None)
    monkeypatch.setitem(sys.modules, "torch.nn.attention.flex_attention", None)  # makes the import fail
    with pytest.raises(ValueError, match=r"torch >= 2\.5"):
        set_attention_backend(torch.nn.Linear(2, 2), "flex")
    set_attention_backend(torch.nn.Linear(2, 2), "sdpa")  # the other backends do not need it
