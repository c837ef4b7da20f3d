"""Checks of ``ditlab sample`` before any work, and of its outputs: nothing is computed for a job that could not
be written, and nothing black (NaN) is saved as if it were a sample.

The checkpoint must be one (not an image, an ``.npz`` or a truncated file), the outputs writable, every option
one the model uses, the weights finite; a resumed job is pinned to the checkpoint's content (SHA-256).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .objectives import DiffusionConfig
from .objectives.flow import FlowConfig
from .utils.files import check_writable_folder
from .utils.integrity import first_non_finite

if TYPE_CHECKING:
    from .sample import SampleConfig



def checkpoint_format(path: Path) -> str:
    """"safetensors" or "torch" (a ``torch.save`` zip or legacy pickle), read off the first bytes; anything else
    (an image, an ``.npz``, text) is a one-line error instead of a traceback from deep inside a loader."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            if 1 < size <= os.path.getsize(path) - 8 and f.read(1) == b"{":  # safetensors: u64 size + JSON
                return "safetensors"  # damaged inside: load_weights names it
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except OSError as err:  # a folder, no permission, ...
        raise ValueError(f"checkpoint {path} cannot be read ({err.strerror or err})") from None
    if head.startswith(b"\x80"):  # the pickle protocol byte of torch's legacy format
        return "torch"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(name.endswith("data.pkl") for name in z.namelist()):
                return "torch"
        raise ValueError(f"checkpoint {path} is a zip file but not a torch.save checkpoint (an .npz?); "
                         f"expected a step_*.safetensors from `ditlab train` or an official DiT .pt")
    raise ValueError(f"checkpoint {path} is neither a safetensors file nor a torch.save checkpoint; "
                     f"expected a step_*.safetensors from `ditlab train` or an official DiT .pt")


def check_outputs(config: SampleConfig) -> None:
    """Refuse, before sampling, outputs that could not be written at the end: a folder where the .npz or grid
    goes, a file where the PNG folder goes, a grid name Pillow cannot save, a folder without write access."""
    from PIL import Image

    out = Path(config.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the .npz file to write")
    check_writable_folder(out.parent, "the folder of --out", create=False)
    if config.png_dir:
        check_writable_folder(Path(config.png_dir), "--png-dir", create=False)
    if config.grid:
        grid = Path(config.grid)
        if grid.is_dir():
            raise ValueError(f"--grid {grid} is a folder; give the image file to write (e.g. grid.png)")
        if grid.suffix.lower() not in Image.registered_extensions():
            raise ValueError(f"--grid {grid}: Pillow cannot write {grid.suffix or 'files without an extension'}; "
                             f"use .png or .jpg")
        check_writable_folder(grid.parent, "the folder of --grid", create=False)


def check_options_fit(model: nn.Module, objective: DiffusionConfig | FlowConfig, config: SampleConfig) -> None:
    """Refuse sampling options that this model or objective would silently ignore or misapply."""
    flow = isinstance(objective, FlowConfig)
    kind = "a flow-matching" if flow else "a diffusion"
    channels, classes = model.config.in_channels, model.config.num_classes
    if config.labels.isdigit() and int(config.labels) >= classes:
        raise ValueError(f"labels={config.labels} is not a class of this model (0..{classes - 1})")
    if config.guided_channels is not None and config.guided_channels > channels:
        raise ValueError(f"guided_channels={config.guided_channels} exceeds the model's {channels} channels")
    if not flow and config.cfg_interval is not None:
        raise ValueError(f"cfg_interval applies to flow-matching models; {config.checkpoint} is {kind} model")
    if flow and config.cfg_power is not None:
        raise ValueError(f"cfg_power applies to diffusion models; {config.checkpoint} is {kind} model")
    if config.eta != 0 and (flow or not config.sampler_steps.strip().lower().startswith("ddim")):
        raise ValueError(f"eta={config.eta} applies to DDIM only (sampler_steps='ddimN' on a diffusion model)")
    sharing = config.share is not None and config.share.strip().lower() not in ("", "none")
    if sharing and not (hasattr(model, "encode") and hasattr(model, "decode")):
        raise ValueError(f"share needs a model with an encoder/decoder split (DDT); {type(model).__name__} has none")


def check_finite_weights(model: nn.Module, checkpoint: str) -> None:
    """Weights with NaN or inf can only give NaN images (saved as black): refuse them by tensor name."""
    name = first_non_finite(model.state_dict())
    if name is not None:
        raise ValueError(f"checkpoint {checkpoint} has non-finite values (NaN/inf) in {name}; "
                         f"sample from an earlier checkpoint")


def check_codec_fits(codec: Any, model: nn.Module, config: SampleConfig) -> None:
    """The VAE must decode the latents this model makes (a pixel-space run needs --vae identity)."""
    channels = getattr(codec, "channels", model.config.in_channels)
    if channels != model.config.in_channels:
        raise ValueError(f"{config.checkpoint} makes {model.config.in_channels}-channel samples but VAE "
                         f"{config.vae} has {channels} latent channels; pass --vae identity for a pixel-space run")


def check_finite_images(images: torch.Tensor, config: SampleConfig, indices: range) -> None:
    """NaN would be written as black pixels and the job would report success: stop and name the chunk."""
    if not torch.isfinite(images).all():
        raise ValueError(f"checkpoint {config.checkpoint} gave non-finite images (NaN/inf) in chunk "
                         f"{indices.start // config.batch_size} (images {indices.start}..{indices.stop - 1}); "
                         f"nothing was written for it and no .npz is made")
