"""The params / Gflops ledger: what each preset costs, in the papers' units.

"Gflops" in the DiT, MDT, DDT and DiffuSSM papers are multiply-accumulates (MACs) of one forward pass for
one image. ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-accumulate, so every
number here is its count halved. Only matrix products and convolutions are counted (as in the papers): norms,
softmax, activations and element-wise ops are not. FFTs (DiffuSSM's SSM convolution), which FlopCounterMode
does not know, are counted with the textbook radix-2 cost (see ``fft_flops``).

Models are built on the ``meta`` device and run on meta inputs, so counting XL/2 allocates no weights and
takes a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models.registry import list_models, model_config

DEFAULT_IMAGE_SIZES: tuple[int, ...] = (256, 512)
FLOPS_PER_MAC = 2  # FlopCounterMode counts a multiply and an add
TRAIN_TO_FORWARD = 3  # forward + backward ~ 3x forward (backward = grads w.r.t. inputs and weights)


@dataclass(frozen=True)
class LedgerRow:
    """Cost of one model at one image size, per image and per forward pass.

    ``gmacs`` is the papers' "Gflops" (multiply-accumulates / 1e9); ``params`` counts ``model.parameters()``,
    frozen ones included (DiT's fixed ``pos_embed``), as the papers and the official code do.
    """

    name: str  # preset or family name
    image_size: int  # pixels on a side
    input_size: int | None  # latent side the backbone sees (image_size / latent_downsample)
    tokens: int | None  # image tokens per sample (None if the config has no notion of it)
    params: int  # all parameters
    trainable_params: int  # parameters with requires_grad
    gmacs: float  # multiply-accumulates of one forward pass for one image, / 1e9
    # Config overrides besides input_size, e.g. (("block", "adaLN"),).
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """Model name with its overrides, e.g. ``DiT-XL/2 block=adaLN``."""
        extra = " ".join(f"{k}={v}" for k, v in self.overrides)
        return f"{self.name} {extra}" if extra else self.name

    @property
    def params_m(self) -> float:
        """Parameters in millions."""
        return self.params / 1e6

    @property
    def forward_gflops(self) -> float:
        """FLOPs (2 per multiply-accumulate) of one forward pass per image, / 1e9."""
        return self.gmacs * FLOPS_PER_MAC

    @property
    def train_tflops(self) -> float:
        """FLOPs of one training step (forward + backward ~ 3x forward) per image, / 1e12."""
        return TRAIN_TO_FORWARD * self.forward_gflops / 1e3


def _default_inputs(config: Any, batch: int) -> tuple[torch.Tensor, ...]:
    """``(x, t, y)`` for a class-conditional latent backbone: zeros of the config's latent shape.

    ``t`` is float so it suits both integer-step (DDPM) and continuous-time (flow) backbones; its value does
    not change the count.
    """
    x = torch.zeros(batch, config.in_channels, config.input_size, config.input_size)
    t = torch.zeros(batch)
    y = torch.zeros(batch, dtype=torch.long)
    return x, t, y


def _forward_inputs(model: nn.Module, config: Any, batch: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments of one forward pass, made on the current default device.

    A backbone whose call is not ``(x, t, y)`` defines ``flops_inputs(batch)`` returning a tuple of positional
    arguments or a mapping of keyword arguments.
    """
    make = getattr(model, "flops_inputs", None)
    inputs = make(batch) if callable(make) else _default_inputs(config, batch)
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    return tuple(inputs), {}


def _prepare_for_counting(model: nn.Module) -> None:
    """Switch off what cannot run on meta tensors and pick the attention path every torch version counts."""
    model.eval()  # no label dropout, no masking: the sampling-time forward the papers count
    if hasattr(model, "check_inputs"):
        model.check_inputs = False  # the label-range check reads values, which meta tensors do not have
    for module in model.modules():
        # The explicit softmax path is plain matmuls, which FlopCounterMode always counts; how SDPA is counted
        # depends on the kernel the dispatcher picks for the device (tests check both agree here).
        if hasattr(module, "fused"):
            module.fused = False


def fft_flops(signal_shape: Sequence[int], dims: Sequence[int]) -> int:
    """FLOPs of a real FFT (forward or inverse) over ``dims`` of a real signal of ``signal_shape``.

    A complex radix-2 FFT of n points costs ``5 n log2 n`` real flops ((n/2) log2 n butterflies of one complex
    multiply and two complex adds); a real-input/real-output FFT about half: ``2.5 n log2 n`` per signal.
    """
    n = math.prod(signal_shape[d] for d in dims)
    signals = math.prod(signal_shape) // max(n, 1)
    return int(2.5 * n * math.log2(n) * signals) if n > 1 else 0


def _fft_r2c_flops(x_shape, dim, normalization, onesided, out_shape=None) -> int:
    return fft_flops(x_shape, dim)


def _fft_c2r_flops(x_shape, dim, normalization, last_dim_size, out_shape=None) -> int:
    return fft_flops(out_shape, dim)


# Not registered globally (torch's registry refuses duplicates): passed to each FlopCounterMode we open.
FFT_FLOP_FORMULAS = {torch.ops.aten._fft_r2c: _fft_r2c_flops, torch.ops.aten._fft_c2r: _fft_c2r_flops}


def count_forward_macs(model: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None) -> int:
    """Multiply-accumulates of ``model(*args, **kwargs)``: FlopCounterMode's total divided by 2."""
    with FlopCounterMode(display=False, custom_mapping=FFT_FLOP_FORMULAS) as counter, torch.no_grad():
        model(*args, **(kwargs or {}))
    return counter.get_total_flops() // FLOPS_PER_MAC


def _tokens(config: Any) -> int | None:
    """Image tokens per sample: ``num_patches``, else ``(input_size / patch_size)**2``, else None."""
    if hasattr(config, "num_patches"):
        return int(config.num_patches)
    if hasattr(config, "input_size") and hasattr(config, "patch_size"):
        return (config.input_size // config.patch_size) ** 2
    return None


def _meta_model(model_name: str, image_size: int, latent_downsample: int, overrides: dict[str, Any],
                ) -> tuple[nn.Module, Any, tuple[Any, ...], dict[str, Any]]:
    """(model on the meta device ready for counting, its config, forward args, forward kwargs)."""
    if image_size < 1 or latent_downsample < 1 or image_size % latent_downsample:
        raise ValueError(
            f"image_size={image_size} must be a positive multiple of latent_downsample={latent_downsample}"
        )
    family, config = model_config(model_name, **overrides)
    fields = {f.name for f in dataclasses.fields(config)}
    if "input_size" in fields and "input_size" not in overrides:
        config = dataclasses.replace(config, input_size=image_size // latent_downsample)
    with torch.device("meta"):
        model = family.model_cls(config)
        _prepare_for_counting(model)
        args, kwargs = _forward_inputs(model, config, batch=1)
    return model, config, args, kwargs


def count(model_name: str, image_size: int = 256, latent_downsample: int = 8, **overrides: Any) -> LedgerRow:
    """Params and Gflops (MACs) of one forward pass for one image of ``model_name`` at ``image_size`` pixels.

    The latent side is ``image_size // latent_downsample`` (8 for the SD VAE) unless ``input_size`` is given
    in ``overrides``; other overrides use the config's field names (e.g. ``block="adaLN"`` for DiT).
    Nothing is allocated: the model lives on the meta device.
    """
    model, config, args, kwargs = _meta_model(model_name, image_size, latent_downsample, overrides)
    macs = count_forward_macs(model, args, kwargs)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shown = tuple((k, v) for k, v in overrides.items() if k != "input_size")
    return LedgerRow(
        name=model_name,
        image_size=image_size,
        input_size=getattr(config, "input_size", None),
        tokens=_tokens(config),
        params=params,
        trainable_params=trainable,
        gmacs=macs / 1e9,
        overrides=shown,
    )


def count_masked_forward(model_name: str, image_size: int = 256, latent_downsample: int = 8, points: int = 16,
                         **overrides: Any) -> float:
    """GMACs of MDT's masked training forward (``enable_mask=True``) for one image, averaged over the mask ratio.

    MDTv2 draws r = mask_ratio + 0.2 U(0, 1) per call (v1: r fixed); the encoder then runs on int(L (1 - r))
    tokens and the side-interpolater on all of them. The mean over r uses the midpoint rule with ``points``
    nodes (exact up to the integer rounding of the kept-token count).
    """
    model, config, args, kwargs = _meta_model(model_name, image_size, latent_downsample, overrides)
    if getattr(config, "mask_ratio", None) is None:
        raise ValueError(f"{model_name} has no masked pass (mask_ratio is None or not a field of its config)")
    spread = config.mask_ratio_spread
    nodes = [config.mask_ratio + spread * (i + 0.5) / points for i in range(points)] if spread else [config.mask_ratio]
    model.train()  # the masked pass exists only in training; label dropout adds no multiply-accumulate
    total = 0
    for ratio in nodes:
        model.draw_mask_ratio = lambda ratio=ratio: ratio  # one fixed ratio per count (meta tensors hold no value)
        total += count_forward_macs(model, args, {**kwargs, "enable_mask": True})
    return total / len(nodes) / 1e9


def training_gmacs(model_name: str, objective: str, image_size: int = 256, latent_downsample: int = 8,
                   mask_points: int = 16, **overrides: Any) -> tuple[float, float]:
    """(forward GMACs, training GMACs) per image under ``objective``.

    Training is forward + backward ~ 3x forward (``TRAIN_TO_FORWARD``). MDT's objective ("mdt") runs two
    passes per image, the full one and the masked one (see :func:`count_masked_forward`), each with its
    backward; "diffusion" and "flow" run one. ``mask_points``: nodes of the mask-ratio mean.
    """
    forward = count(model_name, image_size, latent_downsample, **overrides).gmacs
    if objective == "mdt":
        masked = count_masked_forward(model_name, image_size, latent_downsample, mask_points, **overrides)
        return forward, TRAIN_TO_FORWARD * (forward + masked)
    return forward, TRAIN_TO_FORWARD * forward


def ledger(
    names: list[str] | None = None, image_sizes: Iterable[int] = DEFAULT_IMAGE_SIZES, **overrides: Any
) -> list[LedgerRow]:
    """One row per model and image size (all registered presets if ``names`` is None), models outermost."""
    sizes = list(image_sizes)
    return [count(name, size, **overrides) for name in (names or list_models()) for size in sizes]


LEDGER_HEADER = "\n".join(
    [
        "Gflops = multiply-accumulates (MACs) of one forward pass for one image, the papers' convention",
        "  (torch FlopCounterMode FLOPs / 2; matmuls and convolutions only).",
        "train TFLOPs/img = forward + backward ~ 3 x forward FLOPs (2 FLOPs per MAC), per image.",
        "params = model.parameters(), frozen pos_embed included.",
    ]
)


def format_ledger(rows: Sequence[LedgerRow]) -> str:
    """An aligned text table of ledger rows, under a header that states the units."""
    columns = ["model", "image", "latent", "tokens", "params (M)", "params", "Gflops (MACs)"]
    columns.append("train TFLOPs/img")
    cells = [
        [
            row.label,
            str(row.image_size),
            f"{row.input_size}x{row.input_size}" if row.input_size else "-",
            str(row.tokens) if row.tokens is not None else "-",
            f"{row.params_m:.2f}",
            f"{row.params:,}",
            f"{row.gmacs:.2f}",
            f"{row.train_tflops:.3f}",
        ]
        for row in rows
    ]
    widths = [max(len(c[i]) for c in [columns, *cells]) for i in range(len(columns))]

    def line(values: list[str]) -> str:
        # Model names left-aligned, numbers right-aligned.
        numbers = [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)]
        return "  ".join([values[0].ljust(widths[0]), *numbers]).rstrip()

    table = [line(columns), line(["-" * w for w in widths])] + [line(c) for c in cells]
    return LEDGER_HEADER + "\n\n" + "\n".join(table)


def run_flops_command(models: list[str] | None, image_sizes: list[int], block: str | None = None) -> str:
    """What ``ditlab flops`` prints: the ledger of ``models`` (all presets if None/empty) at ``image_sizes``.

    ``block`` selects a DiT conditioning block of the paper's Table 4 (e.g. ``"cross-attention"``).
    """
    overrides = {"block": block} if block else {}
    return format_ledger(ledger(models or None, image_sizes or DEFAULT_IMAGE_SIZES, **overrides))
