"""DDT: Decoupled Diffusion Transformer (Wang et al. 2025, arXiv 2504.05741).

Exact to ``MCG-NJU/DDT`` ``src/models/denoiser/decoupled_improved_dit.py`` (commit 1d1b4d2): one ``blocks`` list
whose first ``num_encoder_blocks`` blocks form the condition encoder and the rest the velocity decoder, the same
parameter names, the official init and outputs. ``forward(x, t, y, s=None) -> (v, s)``; passing ``s`` skips the
encoder (encoder sharing at inference). ``encode``/``decode`` expose the two halves for the samplers.

Conventions (all needed for weight compatibility): tokens are ``F.unfold`` patches with features ordered
(C, p, p); t in [0, 1] (t = 1 is data) goes through a sinusoid with max_period 10; RoPE positions are spread
over [0, 16] whatever the grid size; the label table always has a null row (id ``num_classes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .layers import LabelEmbedder, RMSNorm, SwiGLU, TimestepEmbedder, apply_rope, attention, rope_2d_freqs

TIME_MAX_PERIOD = 10.0  # DDT's TimestepEmbedder.timestep_embedding default, on t in [0, 1]
ROPE_SCALE = 16.0  # RoPE positions are linspace(0, 16, side)


@dataclass
class DDTConfig:
    """DDT hyper-parameters with the official constructor names (defaults: DDT-XL/2 22en6de on 256 px latents)."""

    in_channels: int = 4  # latent channels (also the output channels: DDT predicts the velocity only)
    num_groups: int = 16  # attention heads
    hidden_size: int = 1152  # D
    num_blocks: int = 28  # encoder + decoder blocks
    num_encoder_blocks: int = 22  # blocks[:num_encoder_blocks] are the condition encoder
    patch_size: int = 2  # p: tokens = (side / p) ** 2
    num_classes: int = 1000  # the label table has num_classes + 1 rows (the last is the null class)
    input_size: int = 32  # latent side the samplers draw (the network itself accepts any multiple of p)
    mlp_ratio: float = 4.0  # SwiGLU hidden = int(2 * mlp_ratio * D / 3)
    class_dropout_prob: float = 0.1  # label dropout in train mode (DDT's trainer null_condition_p; drawn by the
    #                                  flow objective before t and ε, as that trainer does)
    adaln_zero: bool = False  # paper's adaLN-Zero: also zero the blocks' modulation (the code zeroes only the output)

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_groups", "hidden_size", "num_blocks", "patch_size", "num_classes",
                     "input_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if not 0 <= self.num_encoder_blocks <= self.num_blocks:
            raise ValueError(f"num_encoder_blocks={self.num_encoder_blocks} must be in 0..num_blocks={self.num_blocks}")
        if self.hidden_size % self.num_groups or (self.hidden_size // self.num_groups) % 4:
            raise ValueError(
                f"hidden_size={self.hidden_size} / num_groups={self.num_groups} must give a head dimension "
                "divisible by 4 (2-D RoPE)"
            )
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size={self.input_size} is not divisible by patch_size={self.patch_size}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob={self.class_dropout_prob} must be in [0, 1)")

    @property
    def out_channels(self) -> int:
        return self.in_channels

    @property
    def num_decoder_blocks(self) -> int:
        return self.num_blocks - self.num_encoder_blocks

    @property
    def split(self) -> str:
        """The paper's name of the encoder/decoder split, e.g. "22en6de"."""
        return f"{self.num_encoder_blocks}en{self.num_decoder_blocks}de"


def modulate_tokens(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x * (1 + scale) + shift`` with (N, 1, D) or per-token (N, L, D) shift/scale."""
    return x * (1 + scale) + shift


# ----------------------------------------------------------------------------
# Parts.


class Embed(nn.Module):
    """Patch features (N, L, C*p*p) -> tokens (N, L, D): one ``Linear`` named ``proj`` (no norm)."""

    def __init__(self, in_features: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(in_features, hidden_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class RAttention(nn.Module):
    """Self-attention with RMSNorm on q and k (per head, with weight), then 2-D RoPE; bias-free ``qkv``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_norm = RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = RMSNorm(self.head_dim, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.fused = True

    def forward(self, x: Tensor, rope: Tensor) -> Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, L, head_dim)
        q = apply_rope(self.q_norm(q), rope)
        k = apply_rope(self.k_norm(k), rope)
        x = attention(q, k, v, None, self.fused)
        return self.proj(x.transpose(1, 2).reshape(n, length, dim))


class DDTBlock(nn.Module):
    """The block of both halves: RMSNorm, gated residuals, adaLN from a condition that is already SiLU'd.

    The condition is (N, 1, D) in the encoder and per-token (N, L, D) in the decoder.
    """

    def __init__(self, hidden_size: int, num_groups: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = RMSNorm(hidden_size, eps=1e-6)
        self.attn = RAttention(hidden_size, num_groups)
        self.norm2 = RMSNorm(hidden_size, eps=1e-6)
        self.mlp = SwiGLU(hidden_size, int(2 * int(hidden_size * mlp_ratio) / 3))
        self.adaLN_modulation = nn.Sequential(nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: Tensor, c: Tensor, rope: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate_tokens(self.norm1(x), shift_msa, scale_msa), rope)
        return x + gate_mlp * self.mlp(modulate_tokens(self.norm2(x), shift_mlp, scale_mlp))


class DDTFinalLayer(nn.Module):
    """``LayerNorm -> modulate(shift, scale from s per token) -> Linear(D, C*p*p)``; no SiLU inside."""

    def __init__(self, hidden_size: int, out_features: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_features, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(s).chunk(2, dim=-1)
        return self.linear(modulate_tokens(self.norm_final(x), shift, scale))


# ----------------------------------------------------------------------------
# The model.


class DDT(nn.Module):
    """Decoupled diffusion transformer: ``model(x_t, t, y, s=None) -> (velocity, s)``.

    Args:
        config: the hyper-parameters; build presets with ``ditlab.create_model("DDT-XL/2-22en6de", ...)``.
    """

    def __init__(self, config: DDTConfig):
        super().__init__()
        self.config = config
        d, p, c = config.hidden_size, config.patch_size, config.in_channels
        self.in_channels = self.out_channels = c
        self.patch_size = p
        self.num_encoder_blocks = config.num_encoder_blocks
        self.x_embedder = Embed(c * p * p, d)
        self.s_embedder = Embed(c * p * p, d)
        self.t_embedder = TimestepEmbedder(d, max_period=TIME_MAX_PERIOD)
        self.y_embedder = LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
        if config.class_dropout_prob == 0:  # the official table keeps the null row even without dropout
            self.y_embedder.embedding_table = nn.Embedding(config.num_classes + 1, d)
        self.final_layer = DDTFinalLayer(d, c * p * p)
        self.blocks = nn.ModuleList(DDTBlock(d, config.num_groups, config.mlp_ratio) for _ in range(config.num_blocks))
        self.grad_checkpointing = False  # activation checkpointing per block (training only)
        self.check_inputs = True  # validate the label range on every call (reads values; off for meta/graphs)
        self._rope_cache: dict[tuple[int, int, str], Tensor] = {}  # not in the state dict, as officially
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official init: PyTorch default Linears, xavier patch embedders, N(0, 0.02) embedders, zero output.

        With ``adaln_zero`` the blocks' modulation is zeroed too (the paper's description, not the code).
        """
        for embedder in (self.x_embedder, self.s_embedder):
            nn.init.xavier_uniform_(embedder.proj.weight)
            nn.init.zeros_(embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zeroed = [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        if self.config.adaln_zero:
            zeroed += [block.adaLN_modulation[-1] for block in self.blocks]
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---- pieces of the forward pass -------------------------------------------------------------------

    def rope(self, height: int, width: int, device: torch.device) -> Tensor:
        """The 2-D RoPE rotations of an (height x width) token grid, cached per grid and device."""
        key = (height, width, str(device))
        if key not in self._rope_cache:
            head_dim = self.config.hidden_size // self.config.num_groups
            with torch.inference_mode(False):  # a table first built while sampling must still serve training
                self._rope_cache[key] = rope_2d_freqs(head_dim, height, width, scale=ROPE_SCALE).to(device)
        return self._rope_cache[key]

    def patchify(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, H/p * W/p, C*p*p), features ordered (C, p, p) as ``F.unfold``."""
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; DDT expects (N, {self.in_channels}, H, W) with H, W multiples of "
                f"patch_size={p}"
            )
        return F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)

    def unpatchify(self, tokens: Tensor, height: int, width: int) -> Tensor:
        p = self.patch_size
        return F.fold(tokens.transpose(1, 2).contiguous(), (height, width), kernel_size=p, stride=p)

    def time_embedding(self, t: Tensor) -> Tensor:
        """(N,) t in [0, 1] -> (N, 1, D)."""
        return self.t_embedder(t.reshape(-1)).unsqueeze(1)

    def _run(self, blocks: nn.ModuleList | list[nn.Module], x: Tensor, c: Tensor, rope: Tensor) -> Tensor:
        for block in blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, c, rope, use_reentrant=False)
            else:
                x = block(x, c, rope)
        return x

    def encode(self, x: Tensor, t: Tensor, y: Tensor, force_drop_ids: Tensor | None = None) -> Tensor:
        """The condition encoder: self-condition s = silu(t_emb + encoder(x_t | silu(t_emb + y_emb))), (N, L, D).

        ``force_drop_ids`` (N,): 1 where the label becomes the null class; given, the model draws no dropout of
        its own (the flow objective draws it first, as DDT's trainer does).
        """
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(f"t {tuple(t.shape)} and y {tuple(y.shape)} must both have shape ({x.shape[0]},)")
        top = self.config.num_classes
        if self.check_inputs and not torch.compiler.is_compiling() and y.numel() \
                and not 0 <= int(y.min()) <= int(y.max()) <= top:
            raise ValueError(
                f"class ids span {int(y.min())}..{int(y.max())}; allowed 0..{self.config.num_classes - 1} and "
                f"{self.config.num_classes} (the null class)"
            )
        tokens = self.patchify(x)
        rope = self.rope(x.shape[2] // self.patch_size, x.shape[3] // self.patch_size, x.device)
        t_emb = self.time_embedding(t)
        y_emb = self.y_embedder(y, self.training, force_drop_ids).unsqueeze(1)
        c = F.silu(t_emb + y_emb)
        s = self._run(self.blocks[: self.num_encoder_blocks], self.s_embedder(tokens), c, rope)
        return F.silu(t_emb + s)

    def decode(self, x: Tensor, s: Tensor) -> Tensor:
        """The velocity decoder: v from x_t and the per-token self-condition s (t enters only through s)."""
        tokens = self.patchify(x)
        rope = self.rope(x.shape[2] // self.patch_size, x.shape[3] // self.patch_size, x.device)
        expected = (x.shape[0], tokens.shape[1], self.config.hidden_size)
        if s.shape != expected:
            raise ValueError(f"self-condition s has shape {tuple(s.shape)}; expected {expected}")
        h = self._run(self.blocks[self.num_encoder_blocks:], self.x_embedder(tokens), s, rope)
        return self.unpatchify(self.final_layer(h, s), x.shape[2], x.shape[3])

    def forward(self, x: Tensor, t: Tensor, y: Tensor, s: Tensor | None = None,
                force_drop_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (N, C, H, W) at time t (N,) in [0, 1], y: (N,) labels -> (velocity (N, C, H, W), s (N, L, D))."""
        if s is None:
            s = self.encode(x, t, y, force_drop_ids)
        return self.decode(x, s), s
