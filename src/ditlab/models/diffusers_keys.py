"""DiT weights and config between the official layout and diffusers' ``DiTTransformer2DModel`` (pure maps).

diffusers stores the same adaLN-Zero DiT under other names (its ``scripts/convert_dit_to_diffusers.py``):

==========================================  ===========================================================
official / ditlab                           diffusers ``DiTTransformer2DModel``
==========================================  ===========================================================
``x_embedder.proj``                         ``pos_embed.proj``
``pos_embed`` (persisted sin-cos table)     not stored (a non-persistent buffer, recomputed)
``t_embedder.mlp.0`` / ``.2``               ``transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_1`` / ``_2``
``y_embedder.embedding_table``              ``transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table``
``blocks.{i}.adaLN_modulation.1``           ``transformer_blocks.{i}.norm1.linear``
``blocks.{i}.attn.qkv`` (q, k, v stacked)   ``transformer_blocks.{i}.attn1.to_q`` / ``to_k`` / ``to_v``
``blocks.{i}.attn.proj``                    ``transformer_blocks.{i}.attn1.to_out.0``
``blocks.{i}.mlp.fc1`` / ``fc2``            ``transformer_blocks.{i}.ff.net.0.proj`` / ``ff.net.2``
``final_layer.adaLN_modulation.1``          ``proj_out_1``
``final_layer.linear``                      ``proj_out_2``
==========================================  ===========================================================

diffusers keeps a copy of the timestep and label embedders in every block (only block 0's feeds the output
layer); the official DiT has one. Going to diffusers copies it into each block; coming back requires the copies
to be equal, else the model is not a DiT that ditlab (or the official code) can hold.

Nothing here imports diffusers: these are maps between dicts of tensors and between config dicts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .dit import DiTConfig

_EMB = "transformer_blocks.{i}.norm1.emb."
# Per-block renames (official suffix -> diffusers suffix), both under their block prefixes.
_BLOCK_RENAMES = {
    "adaLN_modulation.1": "norm1.linear",
    "attn.proj": "attn1.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
# Top-level renames that exist once in both layouts.
_TOP_RENAMES = {
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}
# The embedders: one official copy, one diffusers copy per block.
_EMBEDDER_RENAMES = {
    "t_embedder.mlp.0": "timestep_embedder.linear_1",
    "t_embedder.mlp.2": "timestep_embedder.linear_2",
    "y_embedder.embedding_table": "class_embedder.embedding_table",
}
DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")  # the second: older Hub copies' class name


def _depth(state_dict: Mapping[str, Tensor], pattern: str) -> int:
    return len({m.group(1) for k in state_dict if (m := re.match(pattern, k))})


def dit_to_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers ``DiTTransformer2DModel`` weights from an official (adaLN-Zero) DiT state dict."""
    depth = _depth(state_dict, r"blocks\.(\d+)\.")
    out: dict[str, Tensor] = {}
    for old, new in _TOP_RENAMES.items():
        for leaf in ("weight", "bias"):
            out[f"{new}.{leaf}"] = state_dict[f"{old}.{leaf}"]
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"transformer_blocks.{i}."
        for old, new in _BLOCK_RENAMES.items():
            for leaf in ("weight", "bias"):
                out[f"{dst}{new}.{leaf}"] = state_dict[f"{src}{old}.{leaf}"]
        for leaf in ("weight", "bias"):
            q, k, v = state_dict[f"{src}attn.qkv.{leaf}"].chunk(3, dim=0)
            for name, part in (("to_q", q), ("to_k", k), ("to_v", v)):
                out[f"{dst}attn1.{name}.{leaf}"] = part
        for old, new in _EMBEDDER_RENAMES.items():
            for leaf in ("weight", "bias"):
                if f"{old}.{leaf}" in state_dict:
                    # One copy per block, as diffusers stores it (safetensors refuses shared memory).
                    out[_EMB.format(i=i) + f"{new}.{leaf}"] = state_dict[f"{old}.{leaf}"].clone()
    return {k: v.contiguous() for k, v in out.items()}


def _shared_embedders(state_dict: Mapping[str, Tensor], depth: int) -> dict[str, Tensor]:
    """The official embedder weights, checking that every block's diffusers copy equals block 0's."""
    out = {}
    for old, new in _EMBEDDER_RENAMES.items():
        for leaf in ("weight", "bias"):
            key = f"{new}.{leaf}"
            if _EMB.format(i=0) + key not in state_dict:
                continue
            first = state_dict[_EMB.format(i=0) + key]
            for i in range(1, depth):
                if not torch.equal(state_dict[_EMB.format(i=i) + key], first):
                    raise ValueError(
                        f"block {i} of the diffusers model has its own {key} (unequal to block 0's); the official "
                        "DiT shares one timestep/label embedder, so these weights cannot be converted"
                    )
            out[f"{old}.{leaf}"] = first
    return out


def diffusers_to_dit(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official DiT weights (all but the fixed ``pos_embed``) from a diffusers ``DiTTransformer2DModel``'s."""
    depth = _depth(state_dict, r"transformer_blocks\.(\d+)\.")
    expected = set(diffusers_dit_keys(depth))
    unexpected = sorted(set(state_dict) - expected)
    missing = sorted(expected - set(state_dict))
    if unexpected or missing:
        extra = f"unexpected {', '.join(unexpected[:3])}" if unexpected else f"missing {', '.join(missing[:3])}"
        raise ValueError(f"not a diffusers DiTTransformer2DModel state dict of depth {depth} ({extra})")
    out = {old: state_dict[f"{new}.{leaf_name}"].clone() for old, new, leaf_name in _top_items()}
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
        for old, new in _BLOCK_RENAMES.items():
            for leaf in ("weight", "bias"):
                out[f"{dst}{old}.{leaf}"] = state_dict[f"{src}{new}.{leaf}"].clone()
        for leaf in ("weight", "bias"):
            parts = [state_dict[f"{src}attn1.{name}.{leaf}"] for name in ("to_q", "to_k", "to_v")]
            out[f"{dst}attn.qkv.{leaf}"] = torch.cat(parts, dim=0)
    out.update({k: v.clone() for k, v in _shared_embedders(state_dict, depth).items()})
    return out


def _top_items() -> list[tuple[str, str, str]]:
    return [(f"{old}.{leaf}", new, leaf) for old, new in _TOP_RENAMES.items() for leaf in ("weight", "bias")]


def diffusers_dit_keys(depth: int) -> list[str]:
    """Every key of a diffusers ``DiTTransformer2DModel`` state dict of ``depth`` blocks."""
    keys = [f"{new}.{leaf}" for _, new, leaf in _top_items()]
    for i in range(depth):
        dst = f"transformer_blocks.{i}."
        names = [*_BLOCK_RENAMES.values(), "attn1.to_q", "attn1.to_k", "attn1.to_v"]
        keys += [f"{dst}{n}.{leaf}" for n in names for leaf in ("weight", "bias")]
        keys += [_EMB.format(i=i) + f"{n}.{leaf}" for n in _EMBEDDER_RENAMES.values() for leaf in ("weight", "bias")
                 if not n.endswith("embedding_table") or leaf == "weight"]
    return keys


# ----------------------------------------------------------------------------
# Configs.

# The convention a DiT's weights were trained with -> DiTConfig.timestep_freq_shift. diffusers' DiT always runs
# "diffusers" (downscale_freq_shift=1); the Hub's facebook/DiT-* weights were trained by the official code.
TIMESTEP_CONVENTIONS = {"official": 0, "diffusers": 1}
# Where ditlab's export records the convention in config.json; diffusers ignores keys starting with "_".
TIMESTEPS_KEY = "_ditlab_timesteps"
# diffusers settings a DiT needs, with the one value ditlab (and the official code) can run.
_FIXED = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": True,
          "norm_elementwise_affine": False}


def diffusers_config_for(config: DiTConfig) -> dict[str, Any]:
    """The ``config.json`` of a ``DiTTransformer2DModel`` equal to ``config``; ValueError when none exists.

    ``norm_eps`` is written as 1e-6, the official value: diffusers' default 1e-5 (which the Hub copies use) only
    feeds the pre-MLP LayerNorm, and 1e-6 there makes diffusers compute what the official code computes.
    The timestep convention is recorded under :data:`TIMESTEPS_KEY` so that ditlab reads the folder back as it was.
    """
    if config.block != "adaLN-Zero":
        raise ValueError(f"diffusers' DiTTransformer2DModel has only adaLN-Zero blocks, not block={config.block!r}")
    if config.mlp_ratio != 4.0:
        raise ValueError(f"diffusers' DiTTransformer2DModel has a fixed MLP ratio of 4, not {config.mlp_ratio}")
    return {
        "_class_name": "DiTTransformer2DModel",
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.hidden_size // config.num_heads,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "num_layers": config.depth,
        "dropout": 0.0,
        "norm_num_groups": 32,
        "sample_size": config.input_size,
        "patch_size": config.patch_size,
        "num_embeds_ada_norm": config.num_classes,
        "upcast_attention": False,
        "norm_eps": 1e-6,
        **_FIXED,
        TIMESTEPS_KEY: {v: k for k, v in TIMESTEP_CONVENTIONS.items()}[config.timestep_freq_shift],
    }


def timestep_convention(config: Mapping[str, Any], timesteps: str | None = None) -> str:
    """``timesteps`` when given, else the convention ditlab's export recorded, else "official" (Hub weights)."""
    chosen = timesteps or config.get(TIMESTEPS_KEY, "official")
    if chosen not in TIMESTEP_CONVENTIONS:
        raise ValueError(f"timesteps={chosen!r}; allowed: official (weights trained by the official DiT code, as "
                         "the Hub's facebook/DiT-*) or diffusers (weights trained in diffusers)")
    return chosen


def dit_config_from_diffusers(config: Mapping[str, Any], timesteps: str | None = None) -> DiTConfig:
    """The :class:`DiTConfig` of a diffusers DiT ``config.json``; one-line ValueError for what DiT cannot be.

    diffusers' label table always has the null row (its label dropout is fixed at 0.1), so
    ``class_dropout_prob`` is the official 0.1. ``timesteps`` ("official" or "diffusers") is the convention the
    weights were trained with: see :func:`timestep_convention`.
    """
    name = config.get("_class_name", "DiTTransformer2DModel")
    if name not in DIFFUSERS_CLASSES:
        raise ValueError(f"config _class_name is {name!r}; a DiT transformer is one of {', '.join(DIFFUSERS_CLASSES)}")
    for key, wanted in _FIXED.items():
        if config.get(key, wanted) != wanted:
            raise ValueError(f"diffusers config has {key}={config[key]!r}; the official DiT has {key}={wanted!r}")
    for key in ("cross_attention_dim", "num_vector_embeds", "caption_channels"):
        if config.get(key) is not None:
            raise ValueError(f"diffusers config has {key}={config[key]!r}; a class-conditional DiT has none")
    if config.get("patch_size") is None or config.get("num_embeds_ada_norm") is None:
        raise ValueError("diffusers config lacks patch_size or num_embeds_ada_norm; it is not a patched DiT")
    heads, in_ch = int(config.get("num_attention_heads", 16)), int(config.get("in_channels", 4))
    out_ch = int(config.get("out_channels") or in_ch)
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(f"diffusers config has out_channels={out_ch}; DiT has in_channels ({in_ch}) or twice that")
    return DiTConfig(
        input_size=int(config.get("sample_size", 32)),
        patch_size=int(config["patch_size"]),
        in_channels=in_ch,
        hidden_size=heads * int(config.get("attention_head_dim", 72)),
        depth=int(config.get("num_layers", 28)),
        num_heads=heads,
        num_classes=int(config["num_embeds_ada_norm"]),
        learn_sigma=out_ch == 2 * in_ch,
        timestep_freq_shift=TIMESTEP_CONVENTIONS[timestep_convention(config, timesteps)],
    )
