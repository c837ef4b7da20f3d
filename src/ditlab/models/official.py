"""Loading the official checkpoints: unpickle safely, find the weights, check every key, then load strictly.

The released DiT files (``DiT-XL-2-256x256.pt``, ``DiT-XL-2-512x512.pt``) are raw EMA state dicts;
checkpoints written by the official ``train.py`` are ``{"model", "ema", "opt", "args"}`` dicts, whose EMA
weights are the ones to sample with. Our module tree has the official names, so no key is renamed: the only
changes are the documented ones per family (a :class:`CheckpointLayout`) and wrapper prefixes (``module.``,
``_orig_mod.``).

Every file goes through ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary
code from a pickle.

What the weights can and cannot tell. Read off the keys and shapes: the family (:func:`checkpoint_family`),
width, depth, patch size (DiT, MDT; DDT's embedder shows only C·p·p, so its patch size is given), input size,
channels, classes, learned σ, MDT's heads (its relative-bias table) and MDTv2's ``decode_layer`` (its
``de_blocks``). Not in the weights, so taken from the preset or the caller and **not checkable**: DiT's and
DDT's head count within a width (a preset of that width and depth supplies it); MDT v1's ``decode_layer``
(``blocks.0..depth-1`` have the same keys on both sides of the decoder boundary); DDT's encoder/decoder split
(encoder and decoder blocks are identical in keys and shapes). A wrong total depth, width or size is refused
with what would fit; a wrong MDT v1 ``decode_layer`` or DDT split that keeps the total block count loads
without error and computes something else.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import pickle
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .dit import DiT, DiTConfig
from .registry import FAMILIES, create_model

# ----------------------------------------------------------------------------
# Reading a file into a flat state dict.


@dataclass(frozen=True)
class CheckpointLayout:
    """Where one family's official checkpoints keep the weights the model loads.

    ``containers`` are dict keys tried in order on a checkpoint that is not itself a state dict (DiT
    train.py: ``"ema"``; a Lightning ``.ckpt``: ``"state_dict"``). ``prefix``, when set, selects the keys
    that start with it and strips it (DDT: ``"ema_denoiser."`` inside the Lightning ``state_dict``, which
    also holds the raw ``denoiser.`` weights).
    """

    containers: tuple[str, ...] = ()
    prefix: str = ""


# The official DiT train.py saves {"model", "ema", "opt", "args"}; sample.py's find_model takes "ema".
LAYOUTS: dict[str, CheckpointLayout] = {
    "DiT": CheckpointLayout(containers=("ema",)),
    # MDT's released files and train_util.py's model/ema_*.pt are flat state dicts (no wrapper, no prefix).
    "MDT": CheckpointLayout(),
    "MDTv2": CheckpointLayout(),
    # DDT: a Lightning .ckpt; the EMA weights sit under "ema_denoiser." inside its "state_dict".
    "DDT": CheckpointLayout(containers=("state_dict",), prefix="ema_denoiser."),
}

# Prefixes added by wrappers rather than by the model: DDP/DataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@contextlib.contextmanager
def _allow_train_script_args() -> Iterator[None]:
    """Let ``weights_only`` unpickle ``argparse.Namespace``, kept in "args" by official train.py.

    A Namespace is a plain attribute bag and its values there are strings and numbers, so allowing it keeps
    the guarantee (no code runs) while train.py files load without asking the user to trust them. Scoped to
    this load where torch has ``safe_globals`` (2.5+); on 2.4 the allow-list entry is global, equally benign.
    """
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is None:
        torch.serialization.add_safe_globals([argparse.Namespace])
        yield
        return
    with scoped([argparse.Namespace]):
        yield


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A pickle ``weights_only=True`` refuses; a ValueError too, so the CLI prints it as one line."""


def _torch_load(path: Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, refusing unsafe pickles readably."""
    try:
        with _allow_train_script_args():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        culprit = f" ({found.group(1)})" if found else ""
        raise UnsafeCheckpointError(
            f"{path} holds a Python object{culprit} that torch.load(weights_only=True) refuses to unpickle: "
            "ditlab loads only tensors and plain containers, never code from a checkpoint. If you trust the "
            "file, re-save just its tensors: torch.save(torch.load(path, weights_only=False)['ema'], out)."
        ) from err


def read_checkpoint(path: Path) -> Any:
    """The object stored in a ``.safetensors`` file (a flat dict) or a torch pickle (anything tensor-like)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return _torch_load(path)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def extract_state_dict(checkpoint: Any, layout: CheckpointLayout, source: str = "file") -> dict[str, Tensor]:
    """The flat ``{key: tensor}`` weights inside a loaded checkpoint, following ``layout``.

    A raw state dict is taken as is; otherwise the first of ``layout.containers`` present is used.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source} holds a {type(checkpoint).__name__}, not a state dict or checkpoint dict")
    if not _is_state_dict(checkpoint):
        container = next((k for k in layout.containers if k in checkpoint), None)
        if container is None or not _is_state_dict(checkpoint[container]):
            found = ", ".join(map(repr, list(checkpoint)[:10]))
            wanted = " or ".join(map(repr, layout.containers)) or "nothing else"
            raise ValueError(
                f"{source} is neither a state dict (all values tensors) nor a checkpoint dict with weights "
                f"under {wanted}; its top-level keys are {found}"
            )
        checkpoint = checkpoint[container]
    state_dict = dict(checkpoint)
    if layout.prefix:
        cut = len(layout.prefix)
        state_dict = {k[cut:]: v for k, v in state_dict.items() if k.startswith(layout.prefix)}
        if not state_dict:
            raise ValueError(f"{source} has no key starting with {layout.prefix!r}")
    return strip_wrapper_prefixes(state_dict)


def strip_wrapper_prefixes(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``module.`` / ``_orig_mod.`` (repeatedly, in any order) where *every* key carries it.

    A prefix on only some keys is left alone: it is then part of the names, and the key check reports it.
    """
    while state_dict:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            break
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def load_official_state_dict(path: str | Path, family: str = "DiT") -> dict[str, Tensor]:
    """Read an official checkpoint (``.pt``/``.pth``/``.ckpt`` or ``.safetensors``) into a flat state dict.

    Accepts a raw state dict (the released DiT files) or a train.py checkpoint (its ``"ema"`` weights are
    taken), unpickled with ``weights_only=True``. ``family`` picks the :data:`LAYOUTS` entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if family not in LAYOUTS:
        raise ValueError(f"no checkpoint layout for family {family!r}; known: {', '.join(LAYOUTS)}")
    return extract_state_dict(read_checkpoint(path), LAYOUTS[family], source=str(path))


# ----------------------------------------------------------------------------
# Which family a state dict belongs to, from its keys alone.

# How to load each family's files, for error messages.
_LOADERS = {"DiT": "load_official_dit", "MDT": "load_official_mdt(path, 'MDT-XL/2', decode_layer=...)",
            "MDTv2": "load_official_mdt(path, 'MDTv2-XL/2')", "DDT": "load_official_ddt"}


def checkpoint_family(state_dict: Mapping[str, Tensor]) -> str | None:
    """"DiT", "MDT" (v1), "MDTv2", "DDT" or "DiffuSSM" from the keys' names; None when none fits.

    MDTv2 splits its blocks into ``en_inblocks``/``en_outblocks``/``de_blocks``; MDT v1 keeps one ``blocks``
    list but has the ``mask_token`` and ``decoder_pos_embed`` of the masked pass; DDT has a second patch
    embedder ``s_embedder``; DiffuSSM's blocks hold S4D kernels; DiT is the plain ``blocks`` + ``pos_embed``.
    """
    keys = set(state_dict)
    if any(k.startswith(("en_inblocks.", "en_outblocks.", "de_blocks.")) for k in keys):
        return "MDTv2"
    if "s_embedder.proj.weight" in keys:
        return "DDT"
    if "mask_token" in keys and "decoder_pos_embed" in keys:
        return "MDT"
    if any(".ssm." in k or ".s4d." in k or "log_dt" in k for k in keys):
        return "DiffuSSM"
    if "pos_embed" in keys and "x_embedder.proj.weight" in keys and any(k.startswith("blocks.") for k in keys):
        return "DiT"
    return None


def official_file_family(checkpoint: Any) -> str | None:
    """The family of a loaded official checkpoint (a raw state dict, a DiT train.py dict or DDT's Lightning
    ``.ckpt``), read off its keys through each family's :data:`LAYOUTS`; None when none fits."""
    if not isinstance(checkpoint, Mapping):
        return None
    if _is_state_dict(checkpoint):
        return checkpoint_family(checkpoint)
    for layout in LAYOUTS.values():
        try:
            family = checkpoint_family(extract_state_dict(checkpoint, layout))
        except ValueError:  # this layout's container or prefix is not in the file
            continue
        if family is not None:
            return family
    return None


def _require_family(state_dict: Mapping[str, Tensor], family: str, source: str) -> None:
    """One line naming the family the file looks like, when its keys are another family's."""
    seen = checkpoint_family(state_dict)
    if seen is not None and seen != family:
        label = {"MDT": "MDT v1"}.get(seen, seen)
        raise ValueError(f"{source} does not hold {family} weights: its keys are those of {label}; load it with "
                         f"{_LOADERS.get(seen, 'the ' + seen + ' model')}")


# ----------------------------------------------------------------------------
# What a DiT state dict says about its configuration.

_DIT_REQUIRED_KEYS = (
    "pos_embed",
    "x_embedder.proj.weight",
    "y_embedder.embedding_table.weight",
    "final_layer.linear.weight",
    "blocks.0.mlp.fc1.weight",
)
_LATENT_DOWNSAMPLE = 8  # SD VAE: image side = 8 x latent side


def _dit_depth(state_dict: Mapping[str, Tensor]) -> int:
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if indices != set(range(len(indices))):
        raise ValueError(f"block indices are not contiguous from 0: {sorted(indices)}")
    return len(indices)


def _dit_block_type(state_dict: Mapping[str, Tensor], hidden_size: int) -> str:
    """Which Table 4 block the keys belong to (only adaLN-Zero exists in official checkpoints)."""
    if "blocks.0.cross_attn.q.weight" in state_dict:
        return "cross-attention"
    modulation = state_dict.get("blocks.0.adaLN_modulation.1.weight")
    if modulation is None:
        return "in-context"
    return "adaLN" if modulation.shape[0] == 4 * hidden_size else "adaLN-Zero"


def _heads_of_preset(hidden_size: int, depth: int) -> int | None:
    """Heads are not in the weights: take them from a DiT preset of the same width and depth."""
    for preset in FAMILIES["DiT"].presets.values():
        if (preset["hidden_size"], preset["depth"]) == (hidden_size, depth):
            return int(preset["num_heads"])
    return None


def infer_dit_config(state_dict: Mapping[str, Tensor], num_classes: int | None = None) -> dict[str, Any]:
    """DiT constructor kwargs (official names, plus ditlab's ``block``) read off a state dict's shapes.

    ``num_heads`` is None unless a preset has the same width and depth. The label table has
    ``num_classes + 1`` rows when trained with label dropout (the CFG null class) and ``num_classes`` without;
    the shapes cannot tell which, so the official case (null row present, ``class_dropout_prob=0.1``) is
    assumed unless ``num_classes`` is given.
    """
    missing = [k for k in _DIT_REQUIRED_KEYS if k not in state_dict]
    if missing:
        raise ValueError(f"not a DiT state dict: missing {', '.join(missing)}")
    _, num_patches, hidden_size = state_dict["pos_embed"].shape
    patch_weight = state_dict["x_embedder.proj.weight"]  # (D, C, p, p)
    patch_size, in_channels = patch_weight.shape[-1], patch_weight.shape[1]
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"pos_embed has {num_patches} tokens, not a square grid")
    out_channels, rest = divmod(state_dict["final_layer.linear.weight"].shape[0], patch_size**2)
    if rest or out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(
            f"final_layer.linear has {state_dict['final_layer.linear.weight'].shape[0]} outputs; expected "
            f"p*p*C or p*p*2C with p={patch_size}, C={in_channels}"
        )
    depth = _dit_depth(state_dict)
    rows = state_dict["y_embedder.embedding_table.weight"].shape[0]
    if num_classes is None:
        num_classes = rows - 1
    if rows not in (num_classes, num_classes + 1):
        raise ValueError(f"the label table has {rows} rows, which does not fit num_classes={num_classes}")
    return {
        "input_size": grid * patch_size,
        "patch_size": patch_size,
        "in_channels": in_channels,
        "hidden_size": hidden_size,
        "depth": depth,
        "num_heads": _heads_of_preset(hidden_size, depth),
        "mlp_ratio": state_dict["blocks.0.mlp.fc1.weight"].shape[0] / hidden_size,
        "class_dropout_prob": DiTConfig.class_dropout_prob if rows == num_classes + 1 else 0.0,
        "num_classes": num_classes,
        "learn_sigma": out_channels == 2 * in_channels,
        "block": _dit_block_type(state_dict, hidden_size),
    }


def _presets_with_architecture(config: Mapping[str, Any]) -> list[str]:
    """DiT presets with the same depth, width and patch size (the preset-defining sizes)."""
    arch = (config["depth"], config["hidden_size"], config["patch_size"])
    return [
        name
        for name, preset in FAMILIES["DiT"].presets.items()
        if (preset["depth"], preset["hidden_size"], preset["patch_size"]) == arch
    ]


def _describe_extras(config: Mapping[str, Any]) -> str:
    """The data-dependent settings that differ from the official defaults, e.g. ", num_classes=10"."""
    defaults = DiTConfig()
    names = ("in_channels", "num_classes", "learn_sigma", "class_dropout_prob", "mlp_ratio", "block")
    return "".join(f", {k}={config[k]}" for k in names if config[k] != getattr(defaults, k))


def matching_presets(state_dict: Mapping[str, Tensor], num_classes: int | None = None) -> list[str]:
    """The DiT presets the weights fit, with data size: e.g. ``["DiT-XL/2 at input_size=64 (512 px)"]``."""
    config = infer_dit_config(state_dict, num_classes)
    size, extras = config["input_size"], _describe_extras(config)
    return [
        f"{name} at input_size={size} ({size * _LATENT_DOWNSAMPLE} px){extras}"
        for name in _presets_with_architecture(config)
    ]


def _what_fits(state_dict: Mapping[str, Tensor]) -> str:
    """One line saying which configuration the weights fit, for error messages."""
    family = checkpoint_family(state_dict)
    if family not in (None, "DiT"):
        return f"its keys are those of {'MDT v1' if family == 'MDT' else family}"
    try:
        presets = matching_presets(state_dict)
        if presets:
            return "it fits " + " or ".join(presets)
        config = infer_dit_config(state_dict)
    except ValueError as err:
        return f"its configuration could not be inferred ({err})"
    sizes = ", ".join(f"{k}={v}" for k, v in config.items() if v is not None)
    return f"it fits no preset; it fits DiT with {sizes}"


# ----------------------------------------------------------------------------
# Checking keys and shapes, then loading.


def _shorten(items: list[str], keep: int = 5) -> str:
    """``a, b, c, ... (+12 more)``: long key lists cut to their first few."""
    shown = ", ".join(items[:keep])
    return shown + (f", ... (+{len(items) - keep} more)" if len(items) > keep else "")


def _model_label(model: nn.Module, name: str) -> str:
    size = getattr(getattr(model, "config", None), "input_size", None)
    return f"{name} at input_size={size}" if size is not None else name


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], name: str) -> None:
    """Raise one readable ValueError if the keys or shapes of ``state_dict`` differ from ``model``'s.

    The first line summarises; the next ones list missing keys, unexpected keys and shape mismatches (first
    few of each), and the last says which preset and size the checkpoint would fit.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    counts = ", ".join(
        f"{len(items)} {what}"
        for items, what in (
            (mismatched, "shape mismatch(es)"),
            (missing, "missing key(s)"),
            (unexpected, "unexpected key(s)"),
        )
        if items
    )
    first = f"checkpoint does not fit {_model_label(model, name)}: {counts}"
    if mismatched:
        first += f" ({mismatched[0]})"
    lines = [first]
    if mismatched:
        lines.append(f"  shapes (checkpoint vs model): {_shorten(mismatched)}")
    if missing:
        lines.append(f"  missing from the checkpoint: {_shorten(missing)}")
    if unexpected:
        lines.append(f"  unexpected in the checkpoint: {_shorten(unexpected)}")
    lines.append(f"  {_what_fits(state_dict)}")
    raise ValueError("\n".join(lines))


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor], name: str) -> nn.Module:
    """Check keys and shapes, then ``model.load_state_dict(state_dict, strict=True)``; returns ``model``.

    ``name`` labels the model in the error message (e.g. ``"DiT-XL/2"``). A model on the meta device takes
    the checkpoint's tensors as its own (``assign=True``, cast to the model's dtypes): nothing is allocated
    twice.
    """
    check_state_dict(model, state_dict, name)
    expected = model.state_dict()
    on_meta = any(t.is_meta for t in expected.values())
    if on_meta:
        state_dict = {k: v.to(expected[k].dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=on_meta)
    return model


def _dit_preset_of(name: str) -> dict[str, Any] | None:
    """The architecture kwargs of a DiT preset name, None for the family name; ValueError otherwise."""
    presets = FAMILIES["DiT"].presets
    if name in presets:
        return dict(presets[name])
    if name == "DiT":
        return None
    raise ValueError(f"unknown DiT model {name!r}; allowed: DiT, {', '.join(presets)}")


def _has_meta_tensors(model: nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def load_official_dit(path: str | Path, name: str | None = None, **overrides: Any) -> DiT:
    """Build the DiT an official checkpoint was trained as and load its (EMA) weights strictly; eval mode.

    Without ``name`` the whole config is read off the weights (a preset's heads when one fits; otherwise pass
    ``num_heads``). With a preset ``name`` (``"DiT-XL/2"``) its architecture is used and only the data sizes
    (input size, channels, classes, sigma) come from the weights, so a wrong preset is reported, not guessed
    around. ``overrides`` (official argument names) win over both, e.g. ``input_size=32`` to insist on 256 px.
    """
    state_dict = load_official_state_dict(path, family="DiT")
    _require_family(state_dict, "DiT", str(path))
    inferred = infer_dit_config(state_dict, num_classes=overrides.get("num_classes"))
    if name is None:
        name = next(iter(_presets_with_architecture(inferred)), "DiT")
    preset = _dit_preset_of(name)
    # A preset fixes the architecture; the weights give the rest (everything for the bare family "DiT").
    kwargs = {k: v for k, v in inferred.items() if preset is None or k not in preset}
    kwargs.update(overrides)
    if kwargs.get("num_heads", 0) is None:
        raise ValueError(
            f"{path}: num_heads cannot be read off the weights and no DiT preset has hidden_size="
            f"{inferred['hidden_size']} and depth={inferred['depth']}; pass num_heads=..."
        )
    with torch.device("meta"):  # no random init of weights that the checkpoint replaces anyway
        model = create_model(name, **kwargs)
    load_into(model, state_dict, name)
    if _has_meta_tensors(model):  # something the state dict does not hold (a non-persistent buffer)
        model = load_into(create_model(name, **kwargs), state_dict, name)
    return model.eval()


# ----------------------------------------------------------------------------
# MDT / MDTv2 (``mdt_xl2_v1_ckpt.pt``: MDT-XL/2, decode_layer 2; ``mdt_xl2_v2_ckpt.pt``: MDTv2-XL/2, 4).


def _count_indexed(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    """How many ``prefix.<i>.`` modules the keys hold."""
    return len({m.group(1) for k in state_dict if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))})


def mdt_sizes_from_weights(state_dict: Mapping[str, Tensor], family: str) -> dict[str, Any]:
    """The data sizes (input_size, num_classes) and, for MDTv2, the decode_layer that the weights fix.

    MDT v1's keys (``blocks.0..depth-1``) do not say where the decoder starts, so its decode_layer is not here.
    """
    for key in ("pos_embed", "x_embedder.proj.weight", "y_embedder.embedding_table.weight"):
        if key not in state_dict:
            raise ValueError(f"not an {family} state dict: missing {key}")
    tokens, patch = state_dict["pos_embed"].shape[1], state_dict["x_embedder.proj.weight"].shape[-1]
    sizes = {"input_size": math.isqrt(tokens) * patch,
             "num_classes": state_dict["y_embedder.embedding_table.weight"].shape[0] - 1}
    if family == "MDTv2":
        sizes["decode_layer"] = _count_indexed(state_dict, "de_blocks")
    return sizes


def load_official_mdt(path: str | Path, name: str = "MDTv2-XL/2", **overrides: Any) -> nn.Module:
    """Build the MDT/MDTv2 preset ``name`` for an official checkpoint and load it strictly; eval mode.

    Input size, classes and (MDTv2) decode_layer come from the weights; an explicit ``decode_layer`` that
    disagrees with the checkpoint's ``de_blocks`` is refused naming the one it needs (issue #26 of the official
    repository), and a file of another family (a DiT, an MDT v1 file given as MDTv2) is refused naming the
    family its keys belong to. MDT v1 weights do not encode decode_layer: pass it if it is not the preset's
    (XL/2: 2); a wrong one loads without error (the blocks' keys are the same on both sides) and computes
    another network.
    """
    family = "MDTv2" if name.startswith("MDTv2") else "MDT"
    if family == "MDT" and not name.startswith("MDT"):
        raise ValueError(f"{name!r} is not an MDT model; allowed: MDT, MDTv2 or one of their presets")
    state_dict = load_official_state_dict(path, family=family)
    _require_family(state_dict, family, str(path))
    sizes = mdt_sizes_from_weights(state_dict, family)
    wanted = overrides.get("decode_layer")
    if family == "MDTv2" and wanted is not None and wanted != sizes["decode_layer"]:
        raise ValueError(
            f"{path} has {sizes['decode_layer']} de_blocks: it needs decode_layer={sizes['decode_layer']}, "
            f"not decode_layer={wanted}"
        )
    kwargs = {**sizes, **overrides}
    with torch.device("meta"):  # no random init of weights that the checkpoint replaces anyway
        model = create_model(name, **kwargs)
    return load_into(model, state_dict, name).eval()


# ----------------------------------------------------------------------------
# DDT (Lightning ``.ckpt``: ``state_dict`` with ``denoiser.``, ``ema_denoiser.`` and ``diffusion_trainer.proj.``).

REPA_PROJECTOR_PREFIX = "diffusion_trainer.proj."


def _ddt_weights(checkpoint: Any, source: str) -> dict[str, Tensor]:
    """The EMA denoiser of a DDT Lightning checkpoint, or a bare DDT state dict (ours) as it is."""
    if _is_state_dict(checkpoint) and not any(k.startswith("ema_denoiser.") for k in checkpoint):
        return strip_wrapper_prefixes(dict(checkpoint))
    return extract_state_dict(checkpoint, LAYOUTS["DDT"], source)


def _repa_projector(checkpoint: Any) -> nn.Module | None:
    """REPA's projector MLP from ``diffusion_trainer.proj.*`` when the checkpoint holds it, else None."""
    weights = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else {}
    proj = {k[len(REPA_PROJECTOR_PREFIX):]: v for k, v in weights.items() if k.startswith(REPA_PROJECTOR_PREFIX)}
    if not proj:
        return None
    from .repa import build_projector

    (hidden, width), out_dim = proj["0.0.weight"].shape, proj["0.4.weight"].shape[0]
    projector = build_projector(width, hidden, out_dim)
    projector.load_state_dict(proj, strict=True)
    return projector


def infer_ddt_sizes(state_dict: Mapping[str, Tensor], patch_size: int = 2) -> dict[str, Any]:
    """DDT constructor kwargs the weights fix, given the patch size (C*p*p is all the embedder shows).

    The encoder/decoder split is not among them: the blocks of both halves have the same keys and shapes.
    """
    for key in ("x_embedder.proj.weight", "y_embedder.embedding_table.weight", "blocks.0.attn.q_norm.weight"):
        if key not in state_dict:
            raise ValueError(f"not a DDT state dict: missing {key}")
    hidden, features = state_dict["x_embedder.proj.weight"].shape  # features = C * p * p, (C, p, p) order
    if features % (patch_size * patch_size):
        raise ValueError(f"patch features {features} are not C * p * p for patch_size={patch_size}")
    return {
        "in_channels": features // (patch_size * patch_size),
        "patch_size": patch_size,
        "hidden_size": hidden,
        "num_groups": hidden // state_dict["blocks.0.attn.q_norm.weight"].shape[0],
        "num_blocks": _dit_depth(state_dict),
        "num_classes": state_dict["y_embedder.embedding_table.weight"].shape[0] - 1,
    }


def _ddt_splits_for(hidden_size: int, num_blocks: int) -> list[str]:
    """DDT presets of this width and depth, e.g. ["DDT-XL/2-22en6de"]."""
    return [name for name, preset in FAMILIES["DDT"].presets.items()
            if (preset["hidden_size"], preset["num_blocks"]) == (hidden_size, num_blocks)]


def _check_ddt_split(sizes: Mapping[str, Any], requested: Mapping[str, Any], source: str) -> int:
    """The encoder block count to build; a one-line error when the requested split cannot fit the weights."""
    blocks, fits = sizes["num_blocks"], _ddt_splits_for(sizes["hidden_size"], sizes["num_blocks"])
    fitting = " or ".join(fits) or f"a split NenMde with N + M = {blocks} (pass num_encoder_blocks)"
    enc, total = requested.get("num_encoder_blocks"), requested.get("num_blocks", blocks)
    for key in ("hidden_size", "num_groups"):
        if key in requested and requested[key] != sizes[key]:
            raise ValueError(f"{source} has {key}={sizes[key]}, not {requested[key]}; it fits {fitting}")
    if total != blocks or (enc is not None and not 0 <= enc <= blocks):
        split = f"{enc}en{total - enc}de" if enc is not None else f"{total} blocks"
        raise ValueError(f"{source} has {blocks} blocks, so the split {split} does not fit; it fits {fitting}")
    if enc is None:
        if not fits:
            raise ValueError(f"{source}: no DDT preset has {blocks} blocks of width {sizes['hidden_size']}; "
                             "pass num_encoder_blocks=N (the split is not stored in the weights)")
        enc = FAMILIES["DDT"].presets[fits[0]]["num_encoder_blocks"]
    return int(enc)


def load_official_ddt(path: str | Path, name: str = "DDT", **overrides: Any) -> tuple[nn.Module, nn.Module | None]:
    """(DDT in eval mode, REPA projector or None) from an official Lightning ``.ckpt`` (or a bare state dict).

    The EMA weights (``ema_denoiser.``) load strictly; the REPA projector (``diffusion_trainer.proj.``) is
    returned when present. ``name`` is "DDT" (everything from the weights; the split from the preset of the
    same size unless ``num_encoder_blocks`` is given) or a preset, whose total depth must fit the weights'.
    The split itself cannot be checked: encoder and decoder blocks have the same keys and shapes, so a wrong
    ``num_encoder_blocks`` with the right total loads without error and computes another network.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    presets = FAMILIES["DDT"].presets
    if name != "DDT" and name not in presets:
        raise ValueError(f"unknown DDT model {name!r}; allowed: DDT, {', '.join(presets)}")
    requested = {**presets.get(name, {}), **overrides}
    checkpoint = read_checkpoint(path)
    state_dict = _ddt_weights(checkpoint, str(path))
    _require_family(state_dict, "DDT", str(path))
    sizes = infer_ddt_sizes(state_dict, requested.get("patch_size", 2))
    kwargs = {**sizes, **overrides, "num_encoder_blocks": _check_ddt_split(sizes, requested, str(path))}
    with torch.device("meta"):  # no random init of weights that the checkpoint replaces anyway
        model = create_model("DDT", **kwargs)
    return load_into(model, state_dict, name).eval(), _repa_projector(checkpoint)
