"""DiffuSSM: Diffusion Models Without Attention (Yan, Gu & Rush, CVPR 2024).

No official code exists; this follows the paper's Sec. 3.2 equations as transcribed in
``shared/papers/diffussm.md`` and the derived reading there. The latent is flattened to L = H·W tokens (no
patchify); the residual stream stays at length L and every block

1. adaLN: ``h = modulate(LayerNorm(x), shift, scale)`` from ``c = t_emb + y_emb`` (DiT);
2. hourglass down: groups M consecutive tokens, ``I_j = W_pool [h_{jM}; ...; h_{jM+M-1}]`` (J = L/M, width D);
3. ``U_{jM+k} = σ(W↑_k σ(W⁰ I_j))`` (width D_m = 2D/M, length L);
4. ``Y = [S4D_fwd(U); S4D_bwd(U reversed) reversed]`` (width 2 D_m, length L);
5. ``I'_j = σ([W↓_0 Y_{jM}; ...; W↓_{M-1} Y_{jM+M-1}])`` (width M D_m = 2D, length J);
6. ``G_j = σ(W² I'_j) ⊙ σ(W¹ I_j)``, the multiplicative gated fusion;
7. hourglass up fused with W³: ``O_{jM+k} = W³_k G_j`` (one output matrix per offset, length L);
8. ``x = x + gate ⊙ O``.

Reading choices (the notes' ambiguities), chosen to match the paper's size and cost: W³ and the up-projection
are one per-offset map (a product of two linear maps is one linear map of the same rank), which gives 14·J·D²
multiply-accumulates and 17·D² parameters per block: DiffuSSM-XL has 669M parameters (paper: 673M) and costs
about 7·L·D² per block (paper's total 280.3 Gflops at L = 1024 is 7.1·L·D² per block). σ is GELU (BiGS).
There is no positional embedding: the SSM itself is order-aware.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .layers import (
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    init_dit_embedders,
    modulate,
    unpatchify,
    validate_backbone_inputs,
    xavier_init_linears,
    zero_adaln,
)
from .s4d import DISCRETIZATIONS, INITS, BidirectionalS4D, ssm_dynamics_parameters


@dataclass
class DiffuSSMConfig:
    """DiffuSSM hyper-parameters (defaults: DiffuSSM-XL on 256 px latents)."""

    input_size: int = 32  # latent side; the sequence has L = input_size**2 tokens
    in_channels: int = 4  # latent channels
    hidden_size: int = 1152  # D
    depth: int = 29  # number of gated bidirectional SSM blocks
    downsample_ratio: int = 2  # M: hourglass groups of M consecutive tokens (J = L / M)
    state_size: int = 64  # N of each S4D (N/2 complex modes); the paper does not state it (BiGS: 64)
    ssm_init: str = "legs"  # S4D init of A: "lin", "inv" or "legs" (diagonal HiPPO-LegS, BiGS's default)
    discretization: str = "zoh"  # S4D discretisation: "zoh" or "bilinear"
    shared_kernel: bool = False  # one SSM kernel for all channels (BiGS) instead of one per channel
    dt_min: float = 0.001  # log-uniform init range of the SSM step Δ (s4d.py)
    dt_max: float = 0.1  # upper end of the Δ init range
    ssm_lr_scale: float = 0.1  # learning-rate multiplier of A and Δ, which get no weight decay (BiGS: 0.1)
    class_dropout_prob: float = 0.1  # label dropout for classifier-free guidance; > 0 adds the null class row
    num_classes: int = 1000
    learn_sigma: bool = True  # predict the learned-range variance too: out_channels = 2 * in_channels

    def __post_init__(self) -> None:
        for name in ("input_size", "in_channels", "hidden_size", "depth", "downsample_ratio", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.num_patches % self.downsample_ratio:
            raise ValueError(
                f"input_size={self.input_size} gives {self.num_patches} tokens, not divisible by "
                f"downsample_ratio={self.downsample_ratio}"
            )
        if (2 * self.hidden_size) % self.downsample_ratio:
            raise ValueError(
                f"hidden_size={self.hidden_size}: 2 * hidden_size must be divisible by "
                f"downsample_ratio={self.downsample_ratio} (D_m = 2D / M)"
            )
        if self.ssm_init not in INITS:
            raise ValueError(f"ssm_init={self.ssm_init!r} is not one of {', '.join(INITS)}")
        if self.discretization not in DISCRETIZATIONS:
            raise ValueError(f"discretization={self.discretization!r} is not one of {', '.join(DISCRETIZATIONS)}")
        if self.state_size < 2 or self.state_size % 2:
            raise ValueError(f"state_size={self.state_size} must be an even integer >= 2")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob={self.class_dropout_prob} must be in [0, 1)")
        if self.ssm_lr_scale <= 0:
            raise ValueError(f"ssm_lr_scale={self.ssm_lr_scale} must be positive")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def num_patches(self) -> int:
        """Tokens of the flattened latent (no patchify): L = input_size**2."""
        return self.input_size**2

    @property
    def ssm_width(self) -> int:
        """D_m = 2D / M, the channels each SSM direction runs on."""
        return 2 * self.hidden_size // self.downsample_ratio


# ----------------------------------------------------------------------------
# The block.


class OffsetLinear(nn.Module):
    """One linear map per offset k of an M-token group: ``(N, J, M, in) -> (N, J, M, out)`` (W↓_k)."""

    def __init__(self, groups: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(groups, out_features))
        for w in self.weight:  # xavier per offset matrix, as the linears
            nn.init.xavier_uniform_(w)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("njmi,moi->njmo", x, self.weight) + self.bias


class DiffuSSMBlock(nn.Module):
    """Gated bidirectional SSM block with hourglass dense layers and an adaLN-Zero residual gate."""

    def __init__(self, config: DiffuSSMConfig):
        super().__init__()
        d, m, d_m = config.hidden_size, config.downsample_ratio, config.ssm_width
        self.downsample_ratio = m
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 3 * d, bias=True))
        self.pool = nn.Linear(m * d, d)  # hourglass down: one D x D matrix per offset, summed
        self.W0 = nn.Linear(d, d)
        self.W_up = nn.Linear(d, m * d_m)  # W↑_k stacked: token j -> tokens jM..jM+M-1
        self.ssm = BidirectionalS4D(
            d_m, state_size=config.state_size, init=config.ssm_init, discretization=config.discretization,
            shared_kernel=config.shared_kernel, dt_min=config.dt_min, dt_max=config.dt_max,
        )
        self.W_down = OffsetLinear(m, 2 * d_m, d_m)
        self.W1 = nn.Linear(d, d)
        self.W2 = nn.Linear(m * d_m, d)
        self.W3 = nn.Linear(d, m * d)  # W³_k stacked: the block output, upsampled back to length L
        self.act = nn.GELU()

    def mix(self, h: Tensor) -> Tensor:
        """The paper's Eq. (1) on modulated tokens: (N, L, D) -> (N, L, D)."""
        n, length, d = h.shape
        m = self.downsample_ratio
        inner = self.pool(h.reshape(n, length // m, m * d))  # I: (N, J, D)
        u = self.act(self.W_up(self.act(self.W0(inner))))  # (N, J, M * D_m)
        y = self.ssm(u.reshape(n, length, -1))  # U at full length -> Y: (N, L, 2 D_m)
        y = self.act(self.W_down(y.reshape(n, length // m, m, -1)))  # I': (N, J, M, D_m)
        fused = self.act(self.W2(y.flatten(2))) * self.act(self.W1(inner))  # (N, J, D)
        return self.W3(fused).reshape(n, length, d)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=1)
        return x + gate.unsqueeze(1) * self.mix(modulate(self.norm(x), shift, scale))


# ----------------------------------------------------------------------------
# The model.


class DiffuSSM(nn.Module):
    """Attention-free diffusion backbone: ``model(x_t, t, y) -> (N, out_channels, H, W)``.

    Args:
        config: the hyper-parameters; build presets with ``ditlab.create_model("DiffuSSM-XL", ...)``.
    """

    def __init__(self, config: DiffuSSMConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.x_embedder = PatchEmbed(config.input_size, 1, config.in_channels, d, bias=True)  # per-token linear
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
        self.blocks = nn.ModuleList(DiffuSSMBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(d, 1, self.out_channels)  # the linear decoder to noise and σ
        self.grad_checkpointing = False  # activation checkpointing per block (training only)
        self.check_inputs = True  # validate shapes and label range on every call (cheap; off for graphs)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier linears, N(0, 0.02) embedders, zeroed adaLN and output (adaLN-Zero)."""
        xavier_init_linears(self)
        init_dit_embedders(self.x_embedder, self.t_embedder, self.y_embedder)
        zero_adaln(*self.blocks, self.final_layer)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def optimizer_param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: SSM A and Δ without weight decay and with ``lr_scale = ssm_lr_scale``; the rest decayed.

        ``lr_scale`` multiplies the group's learning rate where the training loop applies it (S4/BiGS give the
        SSM dynamics a smaller learning rate).
        """
        dynamics = [p for p in ssm_dynamics_parameters(self) if p.requires_grad]
        ids = {id(p) for p in dynamics}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [
            {"params": rest, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": dynamics, "weight_decay": 0.0, "lr_scale": self.config.ssm_lr_scale},
        ]

    def validate_inputs(self, x: Tensor, t: Tensor, y: Tensor) -> None:
        """Raise a one-line ValueError naming the bad input and what is allowed."""
        validate_backbone_inputs("DiffuSSM", self.config, x, t, y)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, force_drop_ids: Tensor | None = None) -> Tensor:
        """x: (N, C, H, W) noisy latents, t: (N,) timesteps, y: (N,) class ids -> (N, out_channels, H, W)."""
        if self.check_inputs:
            self.validate_inputs(x, t, y)
        x = self.x_embedder(x)  # (N, L, D), raster order
        c = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop_ids)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, c, use_reentrant=False)
            else:
                x = block(x, c)
        return unpatchify(self.final_layer(x, c), 1, self.out_channels)
