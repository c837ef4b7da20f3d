"""``ditlab convert``: weights between the official files, ditlab's safetensors and diffusers folders.

Three formats:

- ``official``: the official code's checkpoint (DiT ``.pt`` raw EMA state dict; MDT/MDTv2 flat ``.pt``; DDT
  Lightning ``.ckpt`` with ``state_dict.ema_denoiser.*``);
- ``ditlab``: ``.safetensors`` with official key names and the family, config and objective in its metadata
  (what ``ditlab train`` writes and ``ditlab sample`` reads);
- ``diffusers``: a ``DiTPipeline`` folder (DiT only).

Every source is read into a ditlab model plus its objective settings, then written in the target format, so any
pair of formats that both exist for a family converts. What has no target format is refused in one line:
:data:`UNSUPPORTED` says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models.official import official_file_family
from ..models.registry import FAMILIES, family_of, preset_name
from ..objectives import DiffusionConfig
from ..objectives.flow import FlowConfig
from ..utils.files import atomic_write
from ..utils.hub import resolve_weights

FORMATS = ("official", "ditlab", "diffusers")
OFFICIAL_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# (family, format) pairs with no target format, and why.
UNSUPPORTED = {
    ("DiffuSSM", "official"): "DiffuSSM has no released official code or weights, so there is no official format",
    ("MDT", "diffusers"): "diffusers has no MDT pipeline or transformer class",
    ("MDTv2", "diffusers"): "diffusers has no MDT pipeline or transformer class",
    ("DDT", "diffusers"): "diffusers has no DDT pipeline or transformer class",
    ("DiffuSSM", "diffusers"): "diffusers has no DiffuSSM pipeline or transformer class",
}
# The objective each family's official code trains with (what ditlab sample needs to rebuild the sampler).
OFFICIAL_OBJECTIVE = {"DiT": "diffusion", "MDT": "mdt", "MDTv2": "mdt", "DDT": "flow"}


@dataclass
class ConvertConfig:
    """What ``ditlab convert`` reads and writes."""

    source: str = ""  # official .pt/.ckpt, ditlab .safetensors, diffusers folder, or a Hub id of any of them
    out: str = ""  # output file (.safetensors = ditlab, .pt/.ckpt = official) or folder (diffusers)
    to: str | None = None  # target format: official, ditlab or diffusers; None = from the output's suffix
    model: str | None = None  # official source: family or preset (DiT-XL/2, MDTv2-XL/2, DDT); None = from the keys
    model_args: dict[str, Any] = field(default_factory=dict)  # official source: sizes the weights do not fix
    vae: str | None = None  # diffusers target: VAE folder or Hub id to copy into vae/ (None = no vae/)
    allow_download: bool = False  # let Hub ids missing from the cache be downloaded (never with HF_HUB_OFFLINE)
    timesteps: str | None = None  # diffusers source trained by: official (Hub DiT) or diffusers; None: as recorded


@dataclass
class Converted:
    """A model in memory with the settings ditlab needs to sample from it."""

    model: nn.Module
    family: str
    objective: str  # "diffusion", "mdt" or "flow"
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    notes: list[str] = field(default_factory=list)  # what did not carry over, one line each
    vae: str | None = None  # the codec its latents decode with ("identity" = pixels); None = not recorded


# ----------------------------------------------------------------------------
# Formats of sources and outputs.


def target_format(out: str, to: str | None) -> str:
    if to is not None:
        if to not in FORMATS:
            raise ValueError(f"--to {to!r} is not one of {', '.join(FORMATS)}")
        return to
    suffix = Path(out).suffix
    if suffix == ".safetensors":
        return "ditlab"
    if suffix in OFFICIAL_SUFFIXES:
        return "official"
    if suffix:
        raise ValueError(f"output {out!r}: suffix {suffix!r} names no format; use .safetensors, .pt/.ckpt, "
                         "a folder name (diffusers), or --to")
    return "diffusers"


def source_format(path: Path) -> str:
    if path.is_dir():
        return "diffusers"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as err:  # SafetensorError (damaged header), OSError (unreadable)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"{path} is not a readable safetensors file ({first})") from None
        return "ditlab" if "family" in meta and "config" in meta else "official"
    return "official"


# ----------------------------------------------------------------------------
# Reading.


def official_family(checkpoint: Any) -> str:
    """The family an official checkpoint belongs to, from its keys; one line asking for --model otherwise."""
    family = official_file_family(checkpoint)
    if family is None:
        raise ValueError("cannot tell which family the checkpoint belongs to from its keys; pass --model")
    return family


def _family_of_name(name: str) -> str:
    if name in FAMILIES:
        return name
    for family in FAMILIES.values():
        if name in family.presets:
            return family.name
    raise ValueError(f"unknown model {name!r}; allowed: {', '.join(FAMILIES)} or one of their presets")


def _learns_sigma(model: nn.Module) -> bool:
    config = model.config  # type: ignore[attr-defined]
    return bool(getattr(config, "learn_sigma", False))


@contextlib.contextmanager
def _broken_file_is_one_line(path: Path) -> Iterator[None]:
    """A truncated or foreign file (torch.load's EOFError, RuntimeError, ...) as a one-line ValueError."""
    try:
        yield
    except (EOFError, RuntimeError, pickle.UnpicklingError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {first})") from err


def read_official(path: Path, name: str | None, overrides: dict[str, Any]) -> Converted:
    """An official checkpoint as a ditlab model; the family from ``name`` or the keys."""
    from ..models import official

    with _broken_file_is_one_line(path):
        family = _family_of_name(name) if name else official_family(official.read_checkpoint(path))
        if family == "DiffuSSM":
            raise ValueError(f"{path}: {UNSUPPORTED[('DiffuSSM', 'official')]}")
        notes = []
        if family == "DiT":
            model = official.load_official_dit(path, name if name and name != "DiT" else None, **overrides)
        elif family in ("MDT", "MDTv2"):
            model = official.load_official_mdt(path, name or family, **overrides)
        else:
            model, projector = official.load_official_ddt(path, name or "DDT", **overrides)
            if projector is not None:
                notes.append("the REPA projector (diffusion_trainer.proj.*, training only) is not kept")
    objective = OFFICIAL_OBJECTIVE[family]
    diffusion = DiffusionConfig(learn_sigma=_learns_sigma(model)) if objective != "flow" else DiffusionConfig()
    return Converted(model, family, objective, diffusion, FlowConfig(), notes)


def read_ditlab(path: Path) -> Converted:
    from ..models.registry import model_from_config
    from ..train.checkpoint import load_weights

    state, meta = load_weights(path)
    model = model_from_config(meta["family"], meta["config"])
    model.load_state_dict(state, strict=True)
    objective = meta.get("objective", "diffusion")
    diffusion = DiffusionConfig(**meta["diffusion"]) if "diffusion" in meta else DiffusionConfig()
    flow = FlowConfig(**meta["flow"]) if "flow" in meta else FlowConfig()
    vae = meta.get("vae") if isinstance(meta.get("vae"), str) else None
    return Converted(model.eval(), meta["family"], objective, diffusion, flow, vae=vae)


def read_diffusers(path: Path, timesteps: str | None = None) -> Converted:
    from .diffusers_dit import load_diffusers_dit

    loaded = load_diffusers_dit(path, timesteps=timesteps)
    notes = [f"the pipeline's VAE is at {loaded.vae}; sample with --vae {loaded.vae}"] if loaded.vae else []
    vae = str(Path(loaded.vae).absolute()) if loaded.vae else None  # recorded where it is now
    return Converted(loaded.model, "DiT", "diffusion", loaded.diffusion, FlowConfig(), notes, vae=vae)


def read_any(source: str, name: str | None = None, overrides: dict[str, Any] | None = None,
             allow_download: bool = False, timesteps: str | None = None) -> Converted:
    """Any source (a path or a Hub id) as a :class:`Converted`."""
    path = resolve_weights(source, "source", allow_download)
    kind = source_format(path)
    if kind != "official" and (name or overrides):
        raise ValueError(f"--model/--model-args apply to official checkpoints; {source!r} is a {kind} source")
    if kind != "diffusers" and timesteps:
        raise ValueError(f"--timesteps applies to diffusers sources; {source!r} is a {kind} source (a DiT's "
                         "config field timestep_freq_shift holds it, e.g. --model-args '{\"timestep_freq_shift\": 1}')")
    if kind == "diffusers":
        return read_diffusers(path, timesteps)
    if kind == "ditlab":
        return read_ditlab(path)
    return read_official(path, name, dict(overrides or {}))


# ----------------------------------------------------------------------------
# Writing.


def _state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def write_ditlab(converted: Converted, out: Path, source: str) -> None:
    from ..train.checkpoint import save_weights

    model = converted.model
    save_weights(out, _state_dict(model), {
        "family": converted.family,
        "model": preset_name(model) or converted.family,
        "config": dataclasses.asdict(model.config),  # type: ignore[arg-type]
        "objective": converted.objective,
        "diffusion": dataclasses.asdict(converted.diffusion),
        "flow": dataclasses.asdict(converted.flow),
        "converted_from": source,
        **({"vae": converted.vae} if converted.vae else {}),  # the codec ditlab sample decodes with
    })


def write_official(converted: Converted, out: Path) -> None:
    """The official layout: a raw state dict (DiT, MDT), or a Lightning-style ``.ckpt`` dict (DDT)."""
    state = _state_dict(converted.model)
    if converted.family == "DDT":
        # The official DDT reads ema_denoiser.*; denoiser.* (the raw weights) gets the same EMA weights.
        lightning = {f"{prefix}.{k}": v for prefix in ("ema_denoiser", "denoiser") for k, v in state.items()}
        obj: Any = {"state_dict": lightning}
    else:
        obj = state
    atomic_write(out, lambda tmp: torch.save(obj, tmp))


def write_diffusers(converted: Converted, out: Path, vae: str | None, allow_download: bool) -> list[str]:
    """Export the pipeline folder; returns notes on what DiTPipeline will need or cannot do with it."""
    from .diffusers_dit import export_diffusers_dit

    if converted.objective != "diffusion":
        raise ValueError(f"a {converted.objective!r}-trained DiT has no DiTPipeline scheduler; only diffusion DiTs "
                         "convert to diffusers")
    export_diffusers_dit(converted.model, converted.diffusion, out, vae, allow_download)  # type: ignore[arg-type]
    notes = [] if vae else ["no --vae: the folder has no vae/; give DiTPipeline.from_pretrained(..., vae=...)"]
    if converted.model.config.timestep_freq_shift == 0:  # type: ignore[attr-defined]
        notes.append("diffusers' DiT always uses its own timestep frequencies (10000^(-k/127)), not this model's "
                     "official ones, so its outputs there differ from ditlab's (README: diffusers)")
    classes = converted.model.config.num_classes  # type: ignore[attr-defined]
    if classes != 1000:
        notes.append(f"DiTPipeline's guidance uses class 1000 as the null label; this model has {classes} classes, "
                     "so sample it there with guidance_scale=1")
    return notes


def run_convert(config: ConvertConfig) -> tuple[Path, list[str]]:
    """Convert ``config.source`` into ``config.out``; returns (output, notes on what did not carry over)."""
    if not config.source or not config.out:
        raise ValueError("convert needs a source and an output (ditlab convert SOURCE OUT)")
    target, out = target_format(config.out, config.to), Path(config.out)
    if config.vae and target != "diffusers":
        raise ValueError("--vae applies to the diffusers format only (it is copied into the pipeline's vae/)")
    if target == "diffusers" and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output {out} already exists; give a new folder for the diffusers pipeline")
    converted = read_any(config.source, config.model, config.model_args, config.allow_download, config.timesteps)
    family = family_of(converted.model)
    if (family, target) in UNSUPPORTED:
        raise ValueError(f"cannot convert {family} to {target}: {UNSUPPORTED[(family, target)]}")
    if target == "official" and getattr(converted.model.config, "timestep_freq_shift", 0):
        converted.notes.append("an official .pt has no place for timestep_freq_shift=1 (diffusers' frequencies): "
                               "load it back with --model-args '{\"timestep_freq_shift\": 1}'")
    if target == "diffusers":
        converted.notes += write_diffusers(converted, out, config.vae, config.allow_download)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        (write_ditlab(converted, out, config.source) if target == "ditlab" else write_official(converted, out))
    return out, converted.notes
