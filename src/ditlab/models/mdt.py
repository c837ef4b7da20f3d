"""MDT and MDTv2: Masked Diffusion Transformers (Gao et al., ICCV 2023; MDTv2, arXiv 2303.14389v2).

Exact to ``sail-sg/MDT`` ``masked_diffusion/models.py`` (MDT v1: branch ``mdtv1``; MDTv2: ``main``): same module
tree and parameter names (``mask_token``, ``sideblocks``, the persisted ``relative_position_index`` buffers),
initialisation, outputs and random draws. A backbone maps ``(x_t, t, y) -> output`` like DiT; the masked
training forward (``enable_mask=True``) drops a random subset of tokens before the encoder and refills them
with the side-interpolater. Where we refuse what the official code silently accepts (a block dropped by an odd
v2 split, a mask ratio that keeps no token), the config says so in one line.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .layers import (
    FinalLayer,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    RelPosAttention,
    TimestepEmbedder,
    init_dit_embedders,
    modulate,
    sincos_2d,
    unpatchify,
    validate_backbone_inputs,
    xavier_init_linears,
    zero_adaln,
)

MASK_RATIO_SPREAD_V2 = 0.2  # MDTv2 draws one ratio per batch from [mask_ratio, mask_ratio + 0.2)


@dataclass
class MDTConfig:
    """MDT (v1) hyper-parameters, named as the official constructor (defaults: MDT-XL/2 on 256 px latents)."""

    input_size: int = 32  # latent side (image side / 8 for the SD VAE)
    patch_size: int = 2  # p: tokens = (input_size / p) ** 2
    in_channels: int = 4  # latent channels
    hidden_size: int = 1152  # D
    depth: int = 28  # blocks, encoder and decoder together (the side block is extra)
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1  # label dropout for classifier-free guidance; > 0 adds the null class row
    num_classes: int = 1000
    learn_sigma: bool = True  # predict the learned-range variance too: out_channels = 2 * in_channels
    mask_ratio: float | None = 0.3  # masked fraction in the masked pass (official scripts: 0.3); None = no masking
    decode_layer: int = 2  # N2: decoder blocks after the side-interpolater (official: v1 XL/2 2, v2 XL/2 4)

    def __post_init__(self) -> None:
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size={self.input_size} is not divisible by patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads} and by 4 "
                "(2-D sin-cos table)"
            )
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob={self.class_dropout_prob} must be in [0, 1)")
        if not 1 <= self.decode_layer < self.depth:
            raise ValueError(f"decode_layer={self.decode_layer} must be in [1, depth-1] = [1, {self.depth - 1}]")
        highest = 1.0 - self.mask_ratio_spread
        if self.mask_ratio is not None and not 0.0 <= self.mask_ratio < highest:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in [0, {highest:g}) (or None for no masking)")

    @property
    def mask_ratio_spread(self) -> float:
        """Width of the interval the per-batch mask ratio is drawn from (0: a fixed ratio, as in v1)."""
        return 0.0

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


@dataclass
class MDTv2Config(MDTConfig):
    """MDTv2: the encoder is split in two halves joined by long skips; every decoder block sees the input."""

    decode_layer: int = 4  # N2: decoder blocks (official XL/2: 4; run.sh S/2: 6); depth - decode_layer must be even

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.depth - self.decode_layer) % 2:
            raise ValueError(
                f"depth - decode_layer = {self.depth} - {self.decode_layer} is odd: MDTv2 splits the encoder into "
                "two equal halves (the official code would silently drop a block); choose an even difference"
            )

    @property
    def mask_ratio_spread(self) -> float:
        return MASK_RATIO_SPREAD_V2

    @property
    def half_depth(self) -> int:
        return (self.depth - self.decode_layer) // 2


# ----------------------------------------------------------------------------
# Masking.


@dataclass
class TokenMask:
    """Which tokens a masked pass keeps: MAE's per-sample random shuffle."""

    ids_keep: Tensor  # (N, L_keep) indices of the kept tokens, in shuffled order
    ids_restore: Tensor  # (N, L) inverse permutation: puts [kept, masked] back in grid order
    mask: Tensor  # (N, L) float, 1 = removed, 0 = kept, in grid order


def random_masking(x: Tensor, mask_ratio: float | Tensor, noise: Tensor | None = None) -> tuple[Tensor, TokenMask]:
    """Keep ``int(L * (1 - mask_ratio))`` random tokens of each sample (official ``random_masking``).

    ``noise`` (N, L) in [0, 1) orders the tokens (smallest kept); it is drawn with ``torch.rand`` when None. A
    tensor ``mask_ratio`` (MDTv2) is used in float32 arithmetic, as officially, so the kept count matches.
    """
    n, length, dim = x.shape
    len_keep = int(length * (1 - mask_ratio))
    if len_keep < 1:
        raise ValueError(f"mask_ratio={float(mask_ratio):.4f} keeps no token of {length}; use a smaller ratio")
    if noise is None:
        noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return kept, TokenMask(ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)


# ----------------------------------------------------------------------------
# Blocks.


class MDTBlock(nn.Module):
    """DiT's adaLN-Zero block with relative-position attention and, in MDTv2, an input ``skip_linear``.

    ``skip_linear`` (2D -> D) first fuses the tokens with a skip: ``x = skip_linear(cat([x, skip]))``.
    """

    def __init__(self, hidden_size: int, num_heads: int, grid_size: int, mlp_ratio: float = 4.0, skip: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = RelPosAttention(hidden_size, num_heads, grid_size, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))
        self.skip_linear = nn.Linear(2 * hidden_size, hidden_size) if skip else None

    def forward(self, x: Tensor, c: Tensor, skip: Tensor | None = None, ids_keep: Tensor | None = None) -> Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), ids_keep)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


# ----------------------------------------------------------------------------
# The models: a shared base (embedders, masking, side-interpolater, head) and the two block layouts.


class _MaskedDiffusionTransformer(nn.Module, abc.ABC):
    """What MDT and MDTv2 share; subclasses build their block lists and run them (``forward_blocks``)."""

    def __init__(self, config: MDTConfig):
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.patch_size = p
        self.num_heads = config.num_heads
        self.mask_ratio = config.mask_ratio
        self.decode_layer = config.decode_layer
        self.x_embedder = PatchEmbed(config.input_size, p, config.in_channels, d, bias=True)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, d))  # learnable, sin-cos initialised
        self.build_blocks()
        self.sideblocks = nn.ModuleList([self.make_block()])
        self.final_layer = FinalLayer(d, p, self.out_channels)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, d))
        # Kept (frozen, zero) without masking so that every official checkpoint has the same keys.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d), requires_grad=config.mask_ratio is not None)
        self.grad_checkpointing = False  # activation checkpointing per block (training only)
        self.check_inputs = True  # validate shapes and label range on every call
        self.initialize_weights()

    def make_block(self, skip: bool = False) -> MDTBlock:
        cfg = self.config
        return MDTBlock(cfg.hidden_size, cfg.num_heads, cfg.grid_size, cfg.mlp_ratio, skip=skip)

    @abc.abstractmethod
    def build_blocks(self) -> None:
        """Create the block lists (between ``pos_embed`` and ``sideblocks``, the official registration order)."""

    @abc.abstractmethod
    def forward_blocks(self, x: Tensor, c: Tensor, masking: TokenMask | None, input_tokens: Tensor) -> Tensor:
        """Run the blocks on the (kept) tokens ``x``; ``input_tokens`` are the full embedded input."""

    def initialize_weights(self) -> None:
        """Official init: xavier linears, sin-cos pos tables, N(0, .02) embedders/mask token, zero adaLN and head.

        The relative-bias tables keep their trunc-normal(.02) init from construction, as officially.
        """
        cfg = self.config
        xavier_init_linears(self)
        table = sincos_2d(cfg.hidden_size, cfg.grid_size).unsqueeze(0)
        self.pos_embed.data.copy_(table)
        self.decoder_pos_embed.data.copy_(table)
        init_dit_embedders(self.x_embedder, self.t_embedder, self.y_embedder)
        zero_adaln(*[m for m in self.modules() if isinstance(m, MDTBlock)], self.final_layer)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if cfg.mask_ratio is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    # ---- pieces of the forward pass ----------------------------------------------------------------------

    def run_block(self, block: MDTBlock, x: Tensor, c: Tensor, skip: Tensor | None = None,
                  ids_keep: Tensor | None = None) -> Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, c, skip, ids_keep, use_reentrant=False)
        return block(x, c, skip, ids_keep)

    def draw_mask_ratio(self) -> float | Tensor:
        """v1: the fixed ratio; v2: ``rand(1) * 0.2 + mask_ratio``, one draw per call (the official order).

        The v2 draw is a CPU tensor on every device: the kept-token count (a shape) is read from it on the host,
        which for a GPU tensor would stall the host every step. The official code draws on the model's device;
        on CPU both are the same draw, on a GPU the CUDA random stream differs (not its distribution).
        """
        spread = self.config.mask_ratio_spread
        if spread == 0.0:
            return float(self.mask_ratio)
        return torch.rand(1) * spread + self.mask_ratio

    def forward_side_interpolater(self, x: Tensor, c: Tensor, masking: TokenMask) -> Tensor:
        """Refill the masked positions: mask tokens + decoder_pos_embed -> side block, kept tokens pass through.

        Returns ``k̂·M + q·(1−M)`` with q = the unshuffled sequence + decoder_pos_embed and k̂ = the side block's
        output (the paper's masked shortcut).
        """
        n, kept, dim = x.shape
        length = masking.ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.expand(n, length - kept, dim)], dim=1)
        x = torch.gather(x, 1, masking.ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # grid order
        x = x + self.decoder_pos_embed
        x_before = x
        for block in self.sideblocks:
            x = self.run_block(block, x, c)
        mask = masking.mask.unsqueeze(-1)
        return x * mask + (1 - mask) * x_before

    def to_decoder(self, x: Tensor, c: Tensor, masking: TokenMask | None) -> Tensor:
        """The encoder -> decoder boundary: side-interpolater when masked, else ``+ decoder_pos_embed``."""
        if masking is not None:
            return self.forward_side_interpolater(x, c, masking)
        return x + self.decoder_pos_embed

    def validate_inputs(self, x: Tensor, t: Tensor, y: Tensor) -> None:
        """Raise a one-line ValueError naming the bad input and what is allowed."""
        validate_backbone_inputs(type(self).__name__, self.config, x, t, y)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, enable_mask: bool = False,
                force_drop_ids: Tensor | None = None) -> Tensor:
        """x (N, C, H, W), t (N,), y (N,) -> (N, out_channels, H, W).

        ``enable_mask=True`` is the masked training pass (official): random draws, in order, are the label
        dropout ``rand(N)`` (train mode), then (MDTv2) the ratio ``rand(1)``, then the token order ``rand(N, L)``.
        """
        if self.check_inputs:
            self.validate_inputs(x, t, y)
        x = self.x_embedder(x) + self.pos_embed  # (N, L, D)
        c = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop_ids)
        input_tokens, masking = x, None
        if enable_mask:
            if self.mask_ratio is None:
                raise ValueError("enable_mask=True needs a model built with mask_ratio (got None)")
            x, masking = random_masking(x, self.draw_mask_ratio())
        x = self.forward_blocks(x, c, masking, input_tokens)
        x = self.final_layer(x, c)
        return unpatchify(x, self.patch_size, self.out_channels)


class MDT(_MaskedDiffusionTransformer):
    """MDT v1: ``blocks`` × depth; the side-interpolater sits before block ``depth - decode_layer``."""

    config: MDTConfig

    def build_blocks(self) -> None:
        self.blocks = nn.ModuleList(self.make_block() for _ in range(self.config.depth))

    def forward_blocks(self, x: Tensor, c: Tensor, masking: TokenMask | None, input_tokens: Tensor) -> Tensor:
        first_decoder = self.config.depth - self.config.decode_layer
        ids_keep = None if masking is None else masking.ids_keep
        for i, block in enumerate(self.blocks):
            if i == first_decoder:
                x, ids_keep = self.to_decoder(x, c, masking), None
            x = self.run_block(block, x, c, ids_keep=ids_keep)
        return x


class MDTv2(_MaskedDiffusionTransformer):
    """MDTv2: ``en_inblocks`` → ``en_outblocks`` (U-ViT long skips) → side-interpolater → ``de_blocks``.

    Out-block j fuses the output of in-block ``half-1-j``; every decoder block fuses the full, unmasked input
    tokens ``x_embedder(x) + pos_embed`` (the dense input shortcut, unmasked even in the masked pass).
    """

    config: MDTv2Config

    def build_blocks(self) -> None:
        half = self.config.half_depth
        self.en_inblocks = nn.ModuleList(self.make_block() for _ in range(half))
        self.en_outblocks = nn.ModuleList(self.make_block(skip=True) for _ in range(half))
        self.de_blocks = nn.ModuleList(self.make_block(skip=True) for _ in range(self.config.decode_layer))

    @property
    def blocks(self) -> tuple[MDTBlock, ...]:
        """Every block (encoder halves, decoder, side), e.g. for per-block ``compile``."""
        return (*self.en_inblocks, *self.en_outblocks, *self.de_blocks, *self.sideblocks)

    def forward_blocks(self, x: Tensor, c: Tensor, masking: TokenMask | None, input_tokens: Tensor) -> Tensor:
        ids_keep = None if masking is None else masking.ids_keep
        skips = []
        for block in self.en_inblocks:
            x = self.run_block(block, x, c, ids_keep=ids_keep)
            skips.append(x)
        for block in self.en_outblocks:
            x = self.run_block(block, x, c, skip=skips.pop(), ids_keep=ids_keep)
        x = self.to_decoder(x, c, masking)
        for block in self.de_blocks:
            x = self.run_block(block, x, c, skip=input_tokens)
        return x
