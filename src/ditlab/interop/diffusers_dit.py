"""diffusers DiT folders <-> ditlab: the transformer, the scheduler's settings and the VAE.

A ``DiTPipeline`` folder (``facebook/DiT-XL-2-256`` on the Hub) holds ``model_index.json``, ``transformer/``
(``DiTTransformer2DModel``; older copies say ``Transformer2DModel``), ``scheduler/`` and ``vae/``
(``AutoencoderKL``). :func:`load_diffusers_dit` reads one (or a bare transformer folder) into ditlab's exact
:class:`~ditlab.models.dit.DiT` plus a :class:`~ditlab.objectives.DiffusionConfig` taken from the scheduler;
:func:`export_diffusers_dit` writes a ditlab DiT as such a folder, which ``DiTPipeline.from_pretrained`` loads.

Files are read and written directly (JSON + safetensors), so reading needs no diffusers install; the key and
config maps are :mod:`ditlab.models.diffusers_keys`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..models.diffusers_keys import diffusers_config_for, diffusers_to_dit, dit_config_from_diffusers, dit_to_diffusers
from ..models.dit import DiT
from ..models.layers import sincos_2d
from ..models.official import load_into
from ..objectives import DiffusionConfig
from ..objectives.schedules import linear_betas
from ..utils.hub import resolve_weights

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                "diffusion_pytorch_model.bin")
# diffusers prediction_type <-> ditlab DiffusionConfig.prediction
_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


@dataclass
class DiffusersDiT:
    """What a diffusers DiT folder holds, in ditlab's terms."""

    model: DiT  # eval mode, official computation
    diffusion: DiffusionConfig  # the scheduler's process (betas, T, prediction, learned sigma)
    vae: Path | None  # the pipeline's vae/ folder, when it has one
    transformer_dir: Path


# ----------------------------------------------------------------------------
# Reading.


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err


def transformer_dir(folder: Path) -> Path:
    """The transformer folder of a pipeline folder (``transformer/``) or the folder itself."""
    for candidate in (folder / "transformer", folder):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{folder} is not a diffusers DiT folder: no transformer/config.json or config.json")


def read_diffusers_weights(folder: Path) -> dict[str, Tensor]:
    """The state dict in a diffusers model folder: safetensors (single or sharded) or a ``.bin`` pickle."""
    single, index, pickle_file = (folder / name for name in WEIGHT_NAMES)
    if single.is_file():
        return _read_weights_file(single)
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        return {k: v for shard in shards for k, v in _read_weights_file(folder / shard).items()}
    if pickle_file.is_file():
        return _read_weights_file(pickle_file)
    raise FileNotFoundError(f"{folder} has none of {', '.join(WEIGHT_NAMES)}")


def _read_weights_file(path: Path) -> dict[str, Tensor]:
    """One weights file (safetensors, or a pickle under ``weights_only=True``); a broken one is one line."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # SafetensorError, UnpicklingError, EOFError, RuntimeError, OSError
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path} is not a readable weights file ({type(err).__name__}: {first})") from None


def _schedule_name(config: Mapping[str, Any], steps: int) -> str:
    """ditlab's schedule name for a diffusers beta schedule, or a one-line error."""
    kind = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None or config.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler has trained_betas or rescale_betas_zero_snr; ditlab has DiT's linear and cosine")
    if kind == "squaredcos_cap_v2":
        return "cosine"
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    official = linear_betas(steps)
    if kind == "linear" and abs(start - official[0]) < 1e-12 and abs(end - official[-1]) < 1e-12:
        return "linear"
    raise ValueError(
        f"scheduler beta_schedule={kind!r} from {start} to {end} over {steps} steps is not one of ditlab's schedules: "
        f"linear from {official[0]:g} to {official[-1]:g} (DiT's, scaled by 1000/T) or squaredcos_cap_v2"
    )


def diffusion_from_scheduler(config: Mapping[str, Any], learn_sigma: bool) -> DiffusionConfig:
    """The DiffusionConfig of a diffusers scheduler config; ``learn_sigma`` from the transformer's outputs.

    The sampler itself (DDIM vs DDPM, step count) is not part of the process: ``ditlab sample`` chooses it.
    """
    steps = int(config.get("num_train_timesteps", 1000))
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in _PREDICTIONS:
        raise ValueError(f"scheduler prediction_type={prediction!r}; allowed: {', '.join(_PREDICTIONS)}")
    variance = config.get("variance_type")
    if variance not in (None, "fixed_small", "fixed_large", "learned_range"):
        raise ValueError(f"scheduler variance_type={variance!r}; ditlab has fixed_small, fixed_large, learned_range")
    if variance == "learned_range" and not learn_sigma:
        raise ValueError("scheduler variance_type='learned_range' but the transformer has no variance outputs")
    return DiffusionConfig(schedule=_schedule_name(config, steps), num_timesteps=steps,
                           prediction=_PREDICTIONS[prediction], learn_sigma=learn_sigma,
                           sigma_small=variance == "fixed_small")


def _build_dit(transformer: Path, timesteps: str | None) -> DiT:
    config = dit_config_from_diffusers(_read_json(transformer / "config.json"), timesteps)
    state_dict = diffusers_to_dit(read_diffusers_weights(transformer))
    # diffusers does not store the fixed sin-cos table; the official one is computed here (ditlab's init).
    state_dict["pos_embed"] = sincos_2d(config.hidden_size, config.input_size // config.patch_size).unsqueeze(0)
    with torch.device("meta"):  # no random init of weights that the folder replaces anyway
        model = DiT(config)
    return load_into(model, state_dict, "DiT (diffusers)").eval()


def load_diffusers_dit(source: str | Path, allow_download: bool = False, timesteps: str | None = None) -> DiffusersDiT:
    """ditlab's DiT, the scheduler's DiffusionConfig and the VAE folder from a diffusers folder or Hub id.

    ``source`` is a ``DiTPipeline`` folder, its ``transformer/`` folder, or a Hub id of either
    (``facebook/DiT-XL-2-256``), resolved through the Hugging Face cache. ``timesteps`` is the convention the
    weights were trained with: "official" (the official DiT code, as the Hub's facebook/DiT-*: the official
    frequencies) or "diffusers" (trained in diffusers: its frequencies, so ditlab computes what diffusers does);
    None = what ditlab's export recorded in the folder, else "official".
    """
    folder = resolve_weights(source, "diffusers DiT folder", allow_download)
    if not folder.is_dir():
        raise FileNotFoundError(f"diffusers DiT {str(source)!r} is a file; give the pipeline or transformer folder")
    transformer = transformer_dir(folder)
    model = _build_dit(transformer, timesteps)
    root = transformer.parent if transformer != folder else folder
    scheduler_file = root / "scheduler" / "scheduler_config.json"
    scheduler = _read_json(scheduler_file) if scheduler_file.is_file() else {}
    diffusion = diffusion_from_scheduler(scheduler, model.config.learn_sigma)
    vae = root / "vae" if (root / "vae" / "config.json").is_file() else None
    return DiffusersDiT(model, diffusion, vae, transformer)


# ----------------------------------------------------------------------------
# Writing.


def scheduler_config_for(diffusion: DiffusionConfig) -> dict[str, Any]:
    """A ``DDIMScheduler`` config with ditlab's process, as the Hub DiT pipelines ship.

    DDIM because ``DiTPipeline`` hands the scheduler only the ε half of a learned-sigma output.
    """
    if diffusion.schedule == "linear":
        betas = linear_betas(diffusion.num_timesteps)
        schedule = {"beta_schedule": "linear", "beta_start": float(betas[0]), "beta_end": float(betas[-1])}
    else:
        schedule = {"beta_schedule": "squaredcos_cap_v2"}
    prediction = {v: k for k, v in _PREDICTIONS.items()}[diffusion.prediction]
    # DDIM ignores variance_type, but diffusion_from_scheduler reads it back (fixed_small sets sigma_small).
    variance = "learned_range" if diffusion.learn_sigma else "fixed_small" if diffusion.sigma_small else "fixed_large"
    return {"_class_name": "DDIMScheduler", "num_train_timesteps": diffusion.num_timesteps, **schedule,
            "trained_betas": None, "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0,
            "prediction_type": prediction, "variance_type": variance}


def _diffusers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "0.30.0"


def _dump_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**data, "_diffusers_version": _diffusers_version()}, indent=2) + "\n")


def _vae_folder(source: str, allow_download: bool) -> Path:
    """The AutoencoderKL folder of ``source``: a VAE folder, a pipeline folder's vae/, or a Hub id of either."""
    folder = resolve_weights(source, "VAE", allow_download)
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    config = folder / "config.json"
    if not config.is_file() or _read_json(config).get("_class_name") != "AutoencoderKL":
        raise ValueError(f"VAE {source!r} is not a diffusers AutoencoderKL folder (config.json with AutoencoderKL)")
    return folder


def _null_row_padded(state_dict: dict[str, Tensor], model: DiT) -> dict[str, Tensor]:
    """diffusers' label table always has the CFG null row; a model trained without label dropout gets a zero one."""
    key = "y_embedder.embedding_table.weight"
    table = state_dict[key]
    if table.shape[0] == model.config.num_classes:
        state_dict = {**state_dict, key: torch.cat([table, table.new_zeros(1, table.shape[1])])}
    return state_dict


def export_diffusers_dit(model: DiT, diffusion: DiffusionConfig, out: str | Path, vae: str | None = None,
                         allow_download: bool = False) -> Path:
    """Write ``model`` as a ``DiTPipeline`` folder (transformer/, scheduler/, and vae/ copied from ``vae``).

    Without ``vae`` the folder holds no VAE and ``DiTPipeline.from_pretrained(out, vae=...)`` must be given one.
    diffusers always uses its own timestep frequencies: a model with ``timestep_freq_shift=1`` runs there exactly
    as in ditlab, one with the official 0 runs with diffusers' frequencies (README "diffusers"). The folder is
    assembled beside ``out`` and renamed into place, so a failure leaves no half folder.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output {out} already exists; give a new folder for the diffusers pipeline")
    transformer_config = diffusers_config_for(model.config)  # refuses what diffusers cannot hold
    vae_folder = _vae_folder(vae, allow_download) if vae else None
    from safetensors.torch import save_file

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _dump_json(tmp / "transformer" / "config.json", transformer_config)
        save_file(dit_to_diffusers(_null_row_padded(state, model)),
                  str(tmp / "transformer" / WEIGHT_NAMES[0]), metadata={"format": "pt"})
        _dump_json(tmp / "scheduler" / "scheduler_config.json", scheduler_config_for(diffusion))
        index = {"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
                 "scheduler": ["diffusers", "DDIMScheduler"]}
        if vae_folder is not None:
            shutil.copytree(vae_folder, tmp / "vae")  # follows the Hub cache's symlinks: real files
            index["vae"] = ["diffusers", "AutoencoderKL"]
        _dump_json(tmp / "model_index.json", index)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
