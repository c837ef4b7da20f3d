"""The params / Gflops ledger against the DiT paper's Table 4 and the exact counts of the official code.

Every model here lives on the meta device, so even DiT-XL/2 at 512 px costs no memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import pytest
import torch
from torch import nn

from ditlab.flops import LedgerRow, count, count_forward_macs, format_ledger, ledger, run_flops_command
from ditlab.models.registry import FAMILIES, Family

# Paper Table 4 (256 px): Gflops (MACs) and params in millions as printed.
TABLE_4 = {
    "DiT-S/8": (0.36, 33),
    "DiT-S/4": (1.41, 33),
    "DiT-S/2": (6.06, 33),
    "DiT-B/8": (1.42, 131),
    "DiT-B/4": (5.56, 130),
    "DiT-B/2": (23.01, 130),
    "DiT-L/8": (5.01, 459),
    "DiT-L/4": (19.70, 458),
    "DiT-L/2": (80.71, 458),
    "DiT-XL/8": (7.39, 676),
    "DiT-XL/4": (29.05, 675),
    "DiT-XL/2": (118.64, 675),
}

# Table 4's other conditioning designs, XL/2 at 256: Gflops, params (M).
BLOCK_VARIANTS = {
    "adaLN": (118.56, 600),
    "cross-attention": (137.62, 598),
    "in-context": (119.37, 449),
}


@cache
def _row(name: str, image_size: int = 256, block: str | None = None) -> LedgerRow:
    return count(name, image_size, **({"block": block} if block else {}))


@pytest.mark.parametrize("name", list(TABLE_4))
def test_table_4_gflops_and_params(name: str) -> None:
    gflops, params_m = TABLE_4[name]
    row = _row(name)
    assert row.gmacs == pytest.approx(gflops, rel=0.01)
    assert row.params_m == pytest.approx(params_m, rel=0.01)


@pytest.mark.parametrize(
    "name, image_size, params",
    [
        ("DiT-XL/2", 256, 675_129_632),
        ("DiT-XL/2", 512, 676_014_368),
        ("DiT-L/2", 256, 458_102_816),
        ("DiT-B/2", 256, 130_512_416),
        ("DiT-S/2", 256, 32_963_360),
    ],
)
def test_exact_parameter_counts(name: str, image_size: int, params: int) -> None:
    assert _row(name, image_size).params == params


def test_xl2_trainable_params_exclude_the_frozen_pos_embed() -> None:
    row = _row("DiT-XL/2")
    assert row.trainable_params == 674_834_720
    assert row.params - row.trainable_params == 256 * 1152


def test_xl2_at_512() -> None:
    row = _row("DiT-XL/2", 512)
    assert (row.input_size, row.tokens) == (64, 1024)
    assert row.gmacs == pytest.approx(524.60, rel=0.01)


@pytest.mark.parametrize("block", list(BLOCK_VARIANTS))
def test_table_4_block_variants(block: str) -> None:
    gflops, params_m = BLOCK_VARIANTS[block]
    row = _row("DiT-XL/2", block=block)
    assert row.gmacs == pytest.approx(gflops, rel=0.01)
    assert row.params_m == pytest.approx(params_m, rel=0.01)
    assert row.label == f"DiT-XL/2 block={block}"


def _dit_macs_by_hand(depth: int, hidden: int, patch: int, input_size: int) -> tuple[int, int]:
    """(leading terms, exact total) of an adaLN-Zero DiT's forward MACs for one image."""
    d, tokens, in_ch = hidden, (input_size // patch) ** 2, 4
    per_block = 12 * tokens * d**2 + 2 * tokens**2 * d + 6 * d**2  # qkv+proj+mlp, q@k^T and a@v, adaLN
    leading = depth * per_block
    patch_embed = tokens * d * in_ch * patch**2
    t_embed = 256 * d + d * d
    final = 2 * d * d + tokens * d * patch**2 * 2 * in_ch
    return leading, leading + patch_embed + t_embed + final


@pytest.mark.parametrize("image_size", [256, 512])
def test_xl2_macs_match_hand_formula(image_size: int) -> None:
    leading, exact = _dit_macs_by_hand(28, 1152, 2, image_size // 8)
    macs = _row("DiT-XL/2", image_size).gmacs * 1e9
    assert macs == pytest.approx(leading, rel=0.005)
    assert macs == pytest.approx(exact, rel=1e-9)


def test_sdpa_is_counted_like_the_explicit_attention() -> None:
    """The fused path (what the model runs) and the matmul path count the same attention MACs."""
    from ditlab import create_model

    with torch.device("meta"):
        model = create_model("DiT-S/2").eval()
        x, t, y = torch.zeros(1, 4, 32, 32), torch.zeros(1), torch.zeros(1, dtype=torch.long)
    model.check_inputs = False
    macs = {}
    for fused in (True, False):
        for module in model.modules():
            if hasattr(module, "fused"):
                module.fused = fused
        macs[fused] = count_forward_macs(model, (x, t, y))
    assert macs[True] == macs[False] == _dit_macs_by_hand(12, 384, 2, 32)[1]


def test_macs_are_half_of_torch_flops() -> None:
    layer = nn.Linear(3, 5, bias=True)
    assert count_forward_macs(layer, (torch.zeros(2, 3),)) == 2 * 3 * 5


def test_input_size_override_and_latent_downsample() -> None:
    assert count("DiT-S/8", 256, input_size=64).input_size == 64
    row = count("DiT-S/8", 256, latent_downsample=4)
    assert (row.input_size, row.tokens) == (64, 64)


@pytest.mark.parametrize("image_size", [0, 100])
def test_bad_image_size_names_the_value(image_size: int) -> None:
    with pytest.raises(ValueError, match=f"image_size={image_size}"):
        count("DiT-S/8", image_size)


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model 'DiT-M/2'"):
        count("DiT-M/2")


@dataclass
class _ToyConfig:
    input_size: int = 8
    width: int = 16


class _Toy(nn.Module):
    """A backbone with a call other than (x, t, y): it tells the ledger via ``flops_inputs``."""

    def __init__(self, config: _ToyConfig):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.input_size, config.width)

    def flops_inputs(self, batch: int) -> dict[str, torch.Tensor]:
        return {"signal": torch.zeros(batch, self.config.input_size)}

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return self.proj(signal)


def test_other_backbones_plug_in_with_flops_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FAMILIES, "Toy", Family("Toy", _ToyConfig, _Toy, {"Toy-S": {"width": 32}}))
    row = count("Toy-S", image_size=256)
    assert row.input_size == 32  # the ledger set it from the image size
    assert row.params == 32 * 32 + 32
    assert row.gmacs * 1e9 == pytest.approx(32 * 32)
    assert row.tokens is None


def test_ledger_and_table() -> None:
    rows = ledger(["DiT-S/8", "DiT-B/8"], image_sizes=(256, 512))
    assert [(r.name, r.image_size) for r in rows] == [
        ("DiT-S/8", 256),
        ("DiT-S/8", 512),
        ("DiT-B/8", 256),
        ("DiT-B/8", 512),
    ]
    text = format_ledger(rows)
    assert "multiply-accumulates" in text and "FLOPs / 2" in text
    table = text.split("\n\n", 1)[1].splitlines()
    assert len(table) == 2 + len(rows)
    assert "DiT-S/8" in table[2] and "33,148,160" in table[2] and "0.36" in table[2]
    # Right-aligned numbers: every row ends at the same column.
    assert len({len(line) for line in table}) == 1


def test_run_flops_command_with_block() -> None:
    text = run_flops_command(["DiT-XL/2"], [256], "in-context")
    assert "DiT-XL/2 block=in-context" in text
    assert "119.35" in text
