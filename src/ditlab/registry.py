"""One registry of backbones: families ("DiT") and named presets with the papers' names ("DiT-XL/2").

``create_model(name, **overrides)`` builds either; overrides use the official constructor argument names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .models.dit import DiT, DiTConfig


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


FAMILIES: dict[str, Family] = {
    "DiT": Family("DiT", DiTConfig, DiT, _dit_presets()),
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
    kwargs.update(overrides)
    return family, family.config_cls(**kwargs)


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
