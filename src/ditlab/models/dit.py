"""DiT: Scalable Diffusion Models with Transformers (Peebles & Xie, ICCV 2023).

Exact to ``facebookresearch/DiT`` ``models.py``: same module tree, parameter names, persisted ``pos_embed``,
initialisation and outputs. The three other conditioning blocks of the paper's Table 4 (adaLN without the zero
gate, cross-attention, in-context) are options; the official code only ships adaLN-Zero, so their names are ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .layers import (
    Attention,
    CrossAttention,
    FinalLayer,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    init_dit_embedders,
    modulate,
    sincos_2d,
    unpatchify,
    validate_backbone_inputs,
    xavier_init_linears,
    zero_adaln,
)

BLOCK_TYPES = ("adaLN-Zero", "adaLN", "cross-attention", "in-context")


@dataclass
class DiTConfig:
    """DiT hyper-parameters, named as the official constructor (defaults: DiT-XL/2 on 256 px latents)."""

    input_size: int = 32  # latent side (image side / 8 for the SD VAE)
    patch_size: int = 2  # p: tokens = (input_size / p) ** 2
    in_channels: int = 4  # latent channels
    hidden_size: int = 1152  # D
    depth: int = 28  # number of blocks
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1  # label dropout for classifier-free guidance; > 0 adds the null class row
    num_classes: int = 1000
    learn_sigma: bool = True  # predict the learned-range variance too: out_channels = 2 * in_channels
    block: str = "adaLN-Zero"  # conditioning block of the paper's Table 4: one of BLOCK_TYPES
    # Timestep frequencies 10000^(-k/(128 - s)): 0 = the official DiT; 1 = diffusers' DiTTransformer2DModel
    # (downscale_freq_shift=1), for weights trained inside diffusers. No weights depend on it.
    timestep_freq_shift: int = 0

    def __post_init__(self) -> None:
        if self.block not in BLOCK_TYPES:
            raise ValueError(f"block={self.block!r} is not one of {', '.join(BLOCK_TYPES)}")
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.input_size % self.patch_size:
            raise ValueError(
                f"input_size={self.input_size} is not divisible by patch_size={self.patch_size}; "
                f"allowed input sizes are multiples of {self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by 4 for the 2-D sin-cos table")
        if self.timestep_freq_shift not in (0, 1):
            raise ValueError(f"timestep_freq_shift={self.timestep_freq_shift!r}; allowed: 0 (official DiT) or 1 "
                             "(diffusers' DiT)")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob={self.class_dropout_prob} must be in [0, 1)")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2


# ----------------------------------------------------------------------------
# Blocks. Each takes the tokens and the conditioning in the form its design uses.


class DiTBlock(nn.Module):
    """adaLN-Zero block: gated residual branches, modulation regressed from c and zero-initialised."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class AdaLNBlock(nn.Module):
    """adaLN block (Table 4 "adaLN"): scale and shift regressed from c, no residual gate."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 4 * hidden_size, bias=True))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, shift_mlp, scale_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
        x = x + self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class CrossAttentionBlock(nn.Module):
    """Cross-attention block (Table 4): self-attention, then attention to the (t, y) pair, then the MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.norm_cross = nn.LayerNorm(hidden_size, eps=1e-6)
        self.cross_attn = CrossAttention(hidden_size, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm_cross(x), context)
        return x + self.mlp(self.norm2(x))


class InContextBlock(nn.Module):
    """In-context block (Table 4): a plain ViT block; t and y travel as two extra tokens."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PlainFinalLayer(nn.Module):
    """Final layer for the designs without adaLN: ``LayerNorm -> Linear(D, p*p*out_channels)``."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.norm_final(x))


_BLOCK_CLASSES = {
    "adaLN-Zero": DiTBlock,
    "adaLN": AdaLNBlock,
    "cross-attention": CrossAttentionBlock,
    "in-context": InContextBlock,
}


# ----------------------------------------------------------------------------
# The model.


class DiT(nn.Module):
    """Diffusion transformer: ``model(x_t, t, y) -> (N, out_channels, H, W)``.

    Args:
        config: the hyper-parameters; build presets with ``ditlab.create_model("DiT-XL/2", ...)``.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.patch_size = p
        self.num_heads = config.num_heads
        self.x_embedder = PatchEmbed(config.input_size, p, config.in_channels, d, bias=True)
        self.t_embedder = TimestepEmbedder(d, freq_shift=config.timestep_freq_shift)
        self.y_embedder = LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
        # Fixed sin-cos table, a frozen Parameter (not a buffer) so it sits in the state dict as officially.
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, d), requires_grad=False)
        block_cls = _BLOCK_CLASSES[config.block]
        self.blocks = nn.ModuleList(block_cls(d, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        if config.block in ("adaLN-Zero", "adaLN"):
            self.final_layer = FinalLayer(d, p, self.out_channels)
        else:
            self.final_layer = PlainFinalLayer(d, p, self.out_channels)
        self.grad_checkpointing = False  # activation checkpointing per block (training only)
        self.check_inputs = True  # validate shapes and label range on every call (cheap; off for graphs)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official init: xavier linears, sin-cos pos_embed, N(0, 0.02) embedders, zeroed adaLN and output."""
        xavier_init_linears(self)
        grid = self.config.input_size // self.patch_size
        self.pos_embed.data.copy_(sincos_2d(self.config.hidden_size, grid).unsqueeze(0))
        init_dit_embedders(self.x_embedder, self.t_embedder, self.y_embedder)
        if self.config.block == "adaLN-Zero":
            zero_adaln(*self.blocks)
        if isinstance(self.final_layer, FinalLayer):
            zero_adaln(self.final_layer)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def validate_inputs(self, x: Tensor, t: Tensor, y: Tensor) -> None:
        """Raise a one-line ValueError naming the bad input and what is allowed."""
        validate_backbone_inputs("DiT", self.config, x, t, y)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, force_drop_ids: Tensor | None = None) -> Tensor:
        """x: (N, C, H, W) noisy latents, t: (N,) timesteps, y: (N,) class ids -> (N, out_channels, H, W)."""
        if self.check_inputs:
            self.validate_inputs(x, t, y)
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        t_emb = self.t_embedder(t)
        y_emb = self.y_embedder(y, self.training, force_drop_ids)
        block = self.config.block
        if block in ("adaLN-Zero", "adaLN"):
            c = t_emb + y_emb
            x = self._run_blocks(x, c)
            x = self.final_layer(x, c)
        elif block == "cross-attention":
            x = self._run_blocks(x, torch.stack([t_emb, y_emb], dim=1))
            x = self.final_layer(x)
        else:  # in-context: two conditioning tokens in front, removed after the last block
            x = torch.cat([t_emb.unsqueeze(1), y_emb.unsqueeze(1), x], dim=1)
            x = self._run_blocks(x)[:, 2:]
            x = self.final_layer(x)
        return unpatchify(x, self.patch_size, self.out_channels)

    def _run_blocks(self, x: Tensor, *cond: Tensor) -> Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, *cond, use_reentrant=False)
            else:
                x = block(x, *cond)
        return x
