"""One registry of backbones: families ("DiT") and named presets with the papers' names ("DiT-XL/2").

``create_model(name, **overrides)`` builds either; overrides use the official constructor argument names.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .ddt import DDT, DDTConfig
from .diffussm import DiffuSSM, DiffuSSMConfig
from .dit import DiT, DiTConfig
from .mdt import MDT, MDTConfig, MDTv2, MDTv2Config


@dataclass(frozen=True)
class Family:
    """A backbone family: its config dataclass, its module class and its named presets."""

    name: str
    config_cls: type
    model_cls: Callable[[Any], nn.Module]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


def _dit_presets() -> dict[str, dict[str, Any]]:
    sizes = {  # (depth, hidden_size, num_heads), models.py DiT_XL_2 ... DiT_S_8
        "XL": (28, 1152, 16),
        "L": (24, 1024, 16),
        "B": (12, 768, 12),
        "S": (12, 384, 6),
    }
    return {
        f"DiT-{size}/{p}": {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": p}
        for size, (depth, hidden, heads) in sizes.items()
        for p in (2, 4, 8)
    }


def _mdt_presets(family: str, patch_sizes: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """MDT v1 has /2, /4, /8 (``[v1] models.py``); MDTv2 only /2. Sizes as DiT's; decode_layer is a family default."""
    return {
        name.replace("DiT", family, 1): kwargs
        for name, kwargs in _dit_presets().items()
        if kwargs["patch_size"] in patch_sizes
    }


def _ddt_presets() -> dict[str, dict[str, Any]]:
    sizes = {  # (hidden_size, num_groups, num_blocks, num_encoder_blocks)
        "B": (768, 12, 12, 8),  # derived: DiT-B width, best split of tools/figures/base++.py (8En4De)
        "L": (1024, 16, 24, 20),  # derived: DiT-L width, best split of tools/figures/large++.py (20En4De)
        "XL": (1152, 16, 28, 22),  # official: configs/repa_improved_ddt_xlen22de6_256.yaml
    }
    return {
        f"DDT-{size}/2-{enc}en{blocks - enc}de": {
            "hidden_size": hidden, "num_groups": groups, "num_blocks": blocks, "num_encoder_blocks": enc,
            "patch_size": 2,
        }
        for size, (hidden, groups, blocks, enc) in sizes.items()
    }


# Presets that no official config ships: sizes and splits read off the paper's ablation plots (ddt.md section 1).
DERIVED_PRESETS = {
    "DDT-B/2-8en4de": "derived from the paper's B-size split ablation; width/heads follow DiT-B (unverified)",
    "DDT-L/2-20en4de": "derived from the paper's L-size split ablation; width/heads follow DiT-L (unverified)",
}

def _diffussm_presets() -> dict[str, dict[str, Any]]:
    sizes = {"XL": (29, 1152), "L": (29, 768), "S": (29, 384)}  # (depth, D); the paper gives depth only for XL
    return {f"DiffuSSM-{size}": {"depth": depth, "hidden_size": hidden} for size, (depth, hidden) in sizes.items()}


FAMILIES: dict[str, Family] = {
    "DiT": Family("DiT", DiTConfig, DiT, _dit_presets()),
    "DDT": Family("DDT", DDTConfig, DDT, _ddt_presets()),
    "MDT": Family("MDT", MDTConfig, MDT, _mdt_presets("MDT", (2, 4, 8))),
    "MDTv2": Family("MDTv2", MDTv2Config, MDTv2, _mdt_presets("MDTv2", (2,))),
    "DiffuSSM": Family("DiffuSSM", DiffuSSMConfig, DiffuSSM, _diffussm_presets()),
}


def list_models(family: str | None = None) -> list[str]:
    """All preset names (of one family if given), in registry order."""
    return [p for f in FAMILIES.values() if family in (None, f.name) for p in f.presets]


def _lookup(name: str) -> tuple[Family, dict[str, Any]]:
    if name in FAMILIES:
        return FAMILIES[name], {}
    for family in FAMILIES.values():
        if name in family.presets:
            return family, dict(family.presets[name])
    allowed = ", ".join(list(FAMILIES) + list_models())
    raise ValueError(f"unknown model {name!r}; allowed: {allowed}")


def model_config(name: str, **overrides: Any) -> tuple[Family, Any]:
    """The family and the config dataclass a preset/family name plus overrides resolve to."""
    family, kwargs = _lookup(name)
    fields = {f.name for f in dataclasses.fields(family.config_cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)} for {name}; allowed: {', '.join(sorted(fields))}")
    _check_types(family.config_cls, overrides, name)
    kwargs.update(overrides)
    return family, family.config_cls(**kwargs)


def _check_types(config_cls: type, overrides: dict[str, Any], name: str) -> None:
    """Refuse an override of the wrong type (``{"depth": "4"}``) in one line, before the model is built."""
    hints = typing.get_type_hints(config_cls)
    for key, value in overrides.items():
        options = typing.get_args(hints[key]) or (hints[key],)  # float | None -> (float, NoneType)
        if not any(_is_a(value, kind) for kind in options):
            wanted = " or ".join("null" if kind is type(None) else kind.__name__ for kind in options)
            raise ValueError(f"{name} argument {key}={value!r} must be {wanted}, not {type(value).__name__}")


def _is_a(value: Any, kind: type) -> bool:
    if kind is type(None):
        return value is None
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, kind) or (kind is float and isinstance(value, int))


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a backbone from a preset ("DiT-XL/2") or a family ("DiT") with official-name overrides.

    >>> model = create_model("DiT-S/2", input_size=16, num_classes=10)
    """
    family, config = model_config(name, **overrides)
    return family.model_cls(config)


def model_from_config(family: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from a family name and a config dict (as stored in checkpoints)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; allowed: {', '.join(FAMILIES)}")
    return create_model(family, **config)


def family_of(model: nn.Module) -> str:
    """The registry family name of a model instance."""
    for family in FAMILIES.values():
        if isinstance(model, family.model_cls):  # type: ignore[arg-type]
            return family.name
    raise ValueError(f"{type(model).__name__} is not a registered backbone")


def preset_name(model: nn.Module) -> str | None:
    """The preset a model's architecture matches (ignoring data-dependent sizes), or None."""
    family = FAMILIES[family_of(model)]
    config = dataclasses.asdict(model.config)  # type: ignore[arg-type]
    for name, kwargs in family.presets.items():
        if all(config.get(k) == v for k, v in kwargs.items()):
            return name
    return None
