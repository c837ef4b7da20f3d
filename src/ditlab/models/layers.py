"""Layers shared by the backbones.

Module and parameter names follow the official code (which used timm's names: ``qkv``, ``proj``, ``fc1``,
``fc2``, ``proj`` inside ``PatchEmbed``), so state dicts load with ``strict=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------
# Modulation and positional tables.


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` with (N, D) shift/scale broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_1d(embed_dim: int, positions: Tensor) -> Tensor:
    """MAE's 1-D table: ``[sin(pos * w), cos(pos * w)]`` with ``w_k = 10000^(-k / (D/2))``, in float64."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None]  # (M, D/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(embed_dim: int, grid_size: int) -> Tensor:
    """The fixed 2-D table of the official code, (grid_size**2, embed_dim) float32.

    As in MAE/DiT, the first half of the channels encodes the *column* index (numpy ``meshgrid(w, h)`` puts
    the w coordinate first) and the second half the row index; tokens are in row-major order.
    """
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    return emb.float()


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, freq_shift: int = 0) -> Tensor:
    """Sinusoidal timestep features ``[cos(t w), sin(t w)]`` (cos first), ``w_k = max_period^(-k / (half - s))``.

    ``freq_shift`` s = 0 is the official DiT (and ADM); s = 1 is diffusers' DiT (``Timesteps(...,
    downscale_freq_shift=1)``), computed in the same operation order so the two agree bit for bit.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


# ----------------------------------------------------------------------------
# Embedders.


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> vectors: sinusoid (256 frequencies) then ``Linear -> SiLU -> Linear``."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, max_period: float = 10000.0,
                 freq_shift: int = 0):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size
        self.max_period = max_period
        self.freq_shift = freq_shift  # 0 official, 1 diffusers' DiT: see timestep_embedding

    def forward(self, t: Tensor) -> Tensor:
        t_freq = timestep_embedding(t, self.frequency_embedding_size, self.max_period, self.freq_shift)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> vectors, with label dropout for classifier-free guidance.

    The table has one extra row (id ``num_classes``) for the null class when ``dropout_prob > 0``.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: Tensor, force_drop_ids: Tensor | None = None) -> Tensor:
        """Replace labels by the null class: at random (prob ``dropout_prob``) or where ``force_drop_ids == 1``."""
        if force_drop_ids is None:
            # One torch.rand draw from the CPU generator, as official DiT and MDT (``torch.rand(N)``), then moved
            # to the labels' device: on a GPU, as there, t and noise come from the CUDA generator and the dropout
            # from the CPU one, so a seed drops the labels the official code drops. The copy is queued from
            # pinned memory, so the host does not wait for the GPU (the official blocking copy would).
            drop_ids = torch.rand(labels.shape[0]) < self.dropout_prob
            if labels.device.type == "cuda":
                drop_ids = drop_ids.pin_memory()
            drop_ids = drop_ids.to(labels.device, non_blocking=True)
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels: Tensor, train: bool, force_drop_ids: Tensor | None = None) -> Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


class PatchEmbed(nn.Module):
    """Image (N, C, H, W) -> tokens (N, H/p * W/p, D) with a stride-p convolution (timm's ``PatchEmbed``)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, D, h, w) -> (N, h*w, D)


# ----------------------------------------------------------------------------
# Transformer parts.


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, fused: bool = True) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v on (N, heads, L, head_dim) tensors.

    ``fused`` goes through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU); the
    explicit softmax is the official code's formula, kept to check equality and for flop-free debugging.
    """
    if bias is not None and bias.is_floating_point() and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)  # under autocast q is bf16 while a learned bias table stays fp32
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1) @ v


_ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]  # (score, b, h, q_idx, kv_idx) -> score

ATTENTION_BACKENDS = ("sdpa", "explicit", "flex")
FLEX_MIN_TORCH = "2.5"

# torch's flex_attention refuses a backward pass on these devices (its API check; CUDA has Triton kernels).
_FLEX_NO_BACKWARD_DEVICES = frozenset({"cpu", "mps"})
_flex_fn: Callable[..., Tensor] | None = None  # torch.nn.attention.flex_attention.flex_attention, imported lazily
_compiled_flex_fn: Callable[..., Tensor] | None = None  # its torch.compile'd version, built on first CUDA call


def _load_flex_attention() -> Callable[..., Tensor]:
    """``flex_attention``, imported on first use: the project supports torch 2.4, which does not have it."""
    global _flex_fn
    if _flex_fn is None:
        try:
            from torch.nn.attention.flex_attention import flex_attention
        except ImportError as e:
            raise ValueError(  # a value this torch cannot serve: the CLI reports it in one line
                f"the 'flex' attention backend needs torch.nn.attention.flex_attention (torch >= {FLEX_MIN_TORCH}); "
                f"this is torch {torch.__version__}: use the 'sdpa' backend or upgrade torch"
            ) from e
        _flex_fn = flex_attention
    return _flex_fn


def _flex_supported(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether FlexAttention can run these inputs: torch has no flex backward on CPU / MPS and raises there."""
    return q.device.type not in _FLEX_NO_BACKWARD_DEVICES or not (q.requires_grad or k.requires_grad
                                                                   or v.requires_grad)


def _flex_attention(q: Tensor, k: Tensor, v: Tensor, score_mod: _ScoreMod) -> Tensor:
    """softmax(score_mod(q k^T / sqrt(d))) v through FlexAttention: the score modification is read in the kernel.

    Eager ``flex_attention`` is a reference implementation that materialises the (N, heads, L, L) scores; only
    a compiled call generates the fused kernel. So on CUDA the call goes through one ``torch.compile``d
    ``flex_attention``, built once and shared by all layers (each forward's new ``score_mod`` closure has the
    same code; a new masked length recompiles, after which dynamo marks the length dynamic). Elsewhere it runs
    eagerly: compiling for CPU costs far more than it saves on test-sized inputs. Inside an outer
    ``torch.compile`` the plain function is called: the outer compile traces and fuses it with the block.
    """
    global _compiled_flex_fn
    fn = _load_flex_attention()
    if q.device.type == "cuda" and not torch.compiler.is_compiling():
        if _compiled_flex_fn is None:
            _compiled_flex_fn = torch.compile(fn)
        fn = _compiled_flex_fn
    return fn(q, k, v, score_mod=score_mod)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (q, k, v order) and output ``proj``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fused = True  # SDPA (True) or the explicit softmax (False); see set_attention_backend

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of the tokens ``x`` (N, L, D), each (N, heads, L, head_dim)."""
        n, length, _ = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return q, k, v

    def merge_heads(self, x: Tensor) -> Tensor:
        """The output projection of the attention result (N, heads, L, head_dim) -> (N, L, D)."""
        n, _, length, _ = x.shape
        return self.proj(x.transpose(1, 2).reshape(n, length, self.num_heads * self.head_dim))

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        q, k, v = self.qkv_heads(x)
        return self.merge_heads(attention(q, k, v, bias, self.fused))


class CrossAttention(nn.Module):
    """Multi-head attention from image tokens (queries) to a short context sequence (keys/values)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fused = True  # SDPA (True) or the explicit softmax (False); see set_attention_backend

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        n, length, dim = x.shape
        q = self.q(x).reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(context).reshape(n, context.shape[1], 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = attention(q, kv[0], kv[1], None, self.fused)
        return self.proj(x.transpose(1, 2).reshape(n, length, dim))


class RelativePositionBias(nn.Module):
    """BEiT-style learned relative position bias over a square token grid (MDT's ``RelativePositionBias``).

    ``relative_position_bias_table`` has ``(2g-1)^2 + 3`` rows (the 3 extra rows are BEiT's unused cls-token
    entries, kept for state-dict parity) and one column per head; the persistent int64 buffer
    ``relative_position_index`` (N, N) maps each token pair (row-major grid) to its table row.
    """

    def __init__(self, grid_size: int, num_heads: int):
        super().__init__()
        self.grid_size = grid_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * grid_size - 1) ** 2 + 3, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij"))
        coords = coords.flatten(1)  # (2, N): row, column of each token
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (grid_size - 1)  # (N, N, 2), >= 0
        index = rel[..., 0] * (2 * grid_size - 1) + rel[..., 1]
        self.register_buffer("relative_position_index", index)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, ids_keep: Tensor | None = None) -> Tensor:
        """The bias (heads, N, N); with ``ids_keep`` (B, L) the rows and columns of the kept tokens (B, heads, L, L).

        Gathering the index first equals the official gather of the full (B, heads, N, N) bias, without it.
        """
        index = self.relative_position_index
        if ids_keep is None:
            return self.relative_position_bias_table[index].permute(2, 0, 1)
        index = index[ids_keep[:, :, None], ids_keep[:, None, :]]  # (B, L, L)
        return self.relative_position_bias_table[index].permute(0, 3, 1, 2)

    def score_mod(self, ids_keep: Tensor | None = None) -> _ScoreMod:
        """The same bias as a FlexAttention ``score_mod``: one table entry read per score, nothing materialised.

        The table stays a captured tensor, so its gradient flows through the kernel's backward; the gathered
        value is cast to the score's dtype (fp32 table, scores in whatever precision the kernel accumulates).
        """
        table, index = self.relative_position_bias_table, self.relative_position_index
        if ids_keep is None:
            def rel_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                return score + table[index[q_idx, kv_idx], h].to(score.dtype)
        else:
            def rel_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                return score + table[index[ids_keep[b, q_idx], ids_keep[b, kv_idx]], h].to(score.dtype)
        return rel_bias


class RelPosAttention(Attention):
    """:class:`Attention` plus a per-layer :class:`RelativePositionBias` added to the logits (MDT's attention).

    By default the bias goes to SDPA as an additive ``attn_mask``, materialised as (B, heads, L, L) and keeping
    SDPA off its flash kernel on GPU. With ``flex`` (and ``fused``) it is a FlexAttention ``score_mod`` instead,
    read inside the fused kernel. ``ids_keep`` restricts it to the tokens kept by masking.
    """

    def __init__(self, dim: int, num_heads: int, grid_size: int, qkv_bias: bool = True):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias)
        self.rel_pos_bias = RelativePositionBias(grid_size, num_heads)
        self.flex = False  # FlexAttention when fused; see set_attention_backend

    def forward(self, x: Tensor, ids_keep: Tensor | None = None) -> Tensor:  # type: ignore[override]
        q, k, v = self.qkv_heads(x)
        # Where torch's flex has no backward (CPU / MPS training) the bias goes to SDPA: the same maths.
        if self.flex and self.fused and _flex_supported(q, k, v):
            x = _flex_attention(q, k, v, self.rel_pos_bias.score_mod(ids_keep))
        else:
            x = attention(q, k, v, self.rel_pos_bias(ids_keep), self.fused)
        return self.merge_heads(x)


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Pick how every attention module of ``model`` computes attention; returns ``model`` (changed in place).

    ``"sdpa"`` (the default of new models): ``F.scaled_dot_product_attention``. ``"explicit"``: softmax(QK^T)V
    with plain matmuls, the official code's formula (what FLOP counting uses). ``"flex"``: MDT's
    :class:`RelPosAttention` through FlexAttention with the relative bias as a ``score_mod``, so the bias is never
    materialised and no additive mask pushes SDPA off its fastest kernels; every other attention module keeps
    SDPA, which FlexAttention could not beat without a score modification. Parameters and state dicts are
    untouched. Every module with a ``fused`` attribute (the attention modules) is set.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")
    if backend == "flex":
        _load_flex_attention()  # fail here, with the torch version needed, rather than in the first forward
    for module in model.modules():
        if hasattr(module, "fused"):
            module.fused = backend != "explicit"
        if isinstance(module, RelPosAttention):
            module.flex = backend == "flex"
    return model


class Mlp(nn.Module):
    """``fc1 -> GELU(tanh) -> fc2`` (timm's ``Mlp`` as the official DiT configures it)."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FinalLayer(nn.Module):
    """adaLN final layer: ``LayerNorm -> modulate(shift, scale) -> Linear(D, p*p*out_channels)``."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def unpatchify(x: Tensor, patch_size: int, channels: int) -> Tensor:
    """Tokens (N, h*w, p*p*C) -> image (N, C, h*p, w*p); channel is the fastest index within a token."""
    n, length, _ = x.shape
    h = w = int(length**0.5)
    if h * w != length:
        raise ValueError(f"cannot unpatchify {length} tokens into a square grid")
    x = x.reshape(n, h, w, patch_size, patch_size, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, h * patch_size, w * patch_size)


def xavier_init_linears(module: nn.Module) -> None:
    """The official basic init: xavier-uniform weights and zero biases for every ``nn.Linear``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------
# Llama-style parts (DDT): RMSNorm, SwiGLU, 2-D rotary position embedding.


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last dim, normalised in float32 (Llama's RMSNorm).

    The input is cast back to its dtype before the weight multiplies it, as in DDT's ``RMSNorm``.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class SwiGLU(nn.Module):
    """Bias-free gated MLP ``w2(silu(w1 x) * w3 x)``; names ``w1, w2, w3`` as Llama's/DDT's ``FeedForward``.

    ``hidden_features`` is used as given (DDT passes ``int(2 * 4 * dim / 3)``).
    """

    def __init__(self, dim: int, hidden_features: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_features, bias=False)
        self.w3 = nn.Linear(dim, hidden_features, bias=False)
        self.w2 = nn.Linear(hidden_features, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def rope_2d_freqs(head_dim: int, height: int, width: int, theta: float = 10000.0, scale: float = 16.0) -> Tensor:
    """Complex rotations (height*width, head_dim/2) of DDT's ``precompute_freqs_cis_2d``.

    Token positions are ``linspace(0, scale, width)`` / ``linspace(0, scale, height)``: spread over [0, scale]
    whatever the grid size (not integer indices). head_dim/4 frequencies ``theta^(-4k/head_dim)``; each
    frequency gives an (x, y) pair of complex entries, interleaved, tokens row-major.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
    ys, xs = torch.meshgrid(torch.linspace(0, scale, height), torch.linspace(0, scale, width), indexing="ij")
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim)
    x_angles = torch.outer(xs.reshape(-1), freqs)  # (L, head_dim/4)
    y_angles = torch.outer(ys.reshape(-1), freqs)
    pairs = torch.stack([torch.polar(torch.ones_like(x_angles), x_angles),
                         torch.polar(torch.ones_like(y_angles), y_angles)], dim=-1)  # (L, head_dim/4, 2)
    return pairs.reshape(height * width, head_dim // 2)


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate (..., L, head_dim) features by (L, head_dim/2) complex ``freqs``; adjacent channels form a pair."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * freqs).flatten(-2).type_as(x)


# ----------------------------------------------------------------------------
# Shared by the backbones that take (x, t, y) on a square latent.


def validate_backbone_inputs(name: str, config, x: Tensor, t: Tensor, y: Tensor) -> None:
    """Raise a one-line ValueError naming the bad input and what is allowed.

    ``config`` needs ``in_channels``, ``input_size``, ``num_classes`` and ``class_dropout_prob`` (> 0 adds the
    null class ``num_classes``). The label range is read only outside ``torch.compile`` and off the meta device.
    """
    if x.ndim != 4 or x.shape[1] != config.in_channels:
        raise ValueError(
            f"x has shape {tuple(x.shape)}; {name} expects (N, {config.in_channels}, {config.input_size}, "
            f"{config.input_size}) with in_channels={config.in_channels}"
        )
    if tuple(x.shape[2:]) != (config.input_size, config.input_size):
        raise ValueError(
            f"x has spatial size {tuple(x.shape[2:])}; this model was built for input_size={config.input_size}"
        )
    if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
        raise ValueError(f"t {tuple(t.shape)} and y {tuple(y.shape)} must both have shape ({x.shape[0]},)")
    if torch.compiler.is_compiling() or not y.numel() or y.is_meta:
        return
    has_null = config.class_dropout_prob > 0
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi > config.num_classes - (0 if has_null else 1):
        null = f" and {config.num_classes} (the null class)" if has_null else ""
        raise ValueError(f"class id {lo if lo < 0 else hi} is out of range: allowed 0..{config.num_classes - 1}{null}")


def init_dit_embedders(x_embedder: PatchEmbed | None, t_embedder: TimestepEmbedder, y_embedder: LabelEmbedder) -> None:
    """DiT's embedder init: xavier patch projection (on its (D, -1) view), N(0, 0.02) label table and t-MLP."""
    if x_embedder is not None:
        w = x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.zeros_(x_embedder.proj.bias)
    nn.init.normal_(y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(t_embedder.mlp[2].weight, std=0.02)


def zero_adaln(*modules: nn.Module) -> None:
    """adaLN-Zero: zero the last linear of each module's ``adaLN_modulation``."""
    for module in modules:
        nn.init.zeros_(module.adaLN_modulation[-1].weight)
        nn.init.zeros_(module.adaLN_modulation[-1].bias)
