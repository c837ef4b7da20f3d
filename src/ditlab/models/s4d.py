"""S4D: diagonal state-space layers as long FFT convolutions (Gu et al., "On the Parameterization and
Initialization of Diagonal State Space Models", 2022), in plain torch.

A channel's SSM ``x'(t) = A x(t) + B u(t), y(t) = C x(t) + D u(t)`` with diagonal complex ``A`` (N/2 modes
kept, the other half are their conjugates) is discretised with step Δ and unrolled into the kernel
``K_l = 2 Re sum_n C_n B̄_n Ā_n^l`` (a Vandermonde product), so the whole sequence is ``y = K * u + D u``: one
FFT convolution, zero-padded to 2L so it does not wrap around. ``B`` is folded into ``C`` at initialisation
(as state-spaces/s4 ``s4d.py``), so the only parameters are ``log_dt``, ``log_A_real``, ``A_imag``, ``C``, ``D``.

Everything complex runs in float32 (complex64) even under autocast: bf16 has no complex type and the
Vandermonde powers lose all precision in half precision.
"""

from __future__ import annotations

import functools
import math
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

INITS = ("lin", "inv", "legs")
DISCRETIZATIONS = ("zoh", "bilinear")
# Parameters that get no weight decay and a smaller learning rate (s4 ``register(..., lr=...)``; BiGS lr x0.1).
SSM_DYNAMICS_PARAMS = ("log_dt", "log_A_real", "A_imag")

# ----------------------------------------------------------------------------
# Initialisation of A (and B) for the N/2 kept modes.


@functools.lru_cache(maxsize=8)  # an eigendecomposition per kernel would dominate building XL (58 kernels)
def legs_diagonal(state_size: int) -> tuple[Tensor, Tensor]:
    """S4D-LegS: eigenvalues and projected B of the normal part of HiPPO-LegS, modes with Im > 0.

    HiPPO-LegS ``A = -(sqrt(2n+1) sqrt(2k+1) [n > k] + (n+1) [n = k])`` plus ``P P^T`` (``P_n = sqrt(n + 1/2)``)
    is ``-I/2`` plus a skew-symmetric matrix S; ``-iS`` is Hermitian, so ``eigh`` gives ``A = -1/2 + i w`` and the
    eigenvectors V give ``B = V^* B_hippo`` with ``B_hippo,n = sqrt(2n+1)``.
    """
    n = torch.arange(state_size, dtype=torch.float64)
    root = torch.sqrt(2 * n + 1)
    hippo = -torch.tril(root[:, None] * root[None, :], diagonal=-1) - torch.diag(n + 1)
    p = torch.sqrt(n + 0.5)
    skew = hippo + p[:, None] * p[None, :] + 0.5 * torch.eye(state_size, dtype=torch.float64)
    w, v = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    b = v.conj().T @ root.to(torch.complex128)
    keep = w > 0  # the other half are complex conjugates; the kernel takes 2 Re(.)
    order = torch.argsort(w[keep])
    return (-0.5 + 1j * w[keep][order]).to(torch.complex64), b[keep][order].to(torch.complex64)


def init_A_B(init: str, state_size: int) -> tuple[Tensor, Tensor]:
    """(A, B) of the N/2 kept modes, complex64 on the CPU: S4D-Lin, S4D-Inv or S4D-LegS (the S4D paper's names).

    Lin: ``A_n = -1/2 + i pi n``; Inv: ``A_n = -1/2 + i (N/pi) (N/(2n+1) - 1)``; both with ``B_n = 1``.
    """
    if init not in INITS:
        raise ValueError(f"ssm init {init!r} is not one of {', '.join(INITS)}")
    if state_size < 2 or state_size % 2:
        raise ValueError(f"state_size={state_size} must be an even integer >= 2 (N/2 complex-conjugate pairs)")
    with torch.device("cpu"):  # also when the model is being built on the meta device
        if init == "legs":
            return legs_diagonal(state_size)
        n = torch.arange(state_size // 2, dtype=torch.float32)
        imag = math.pi * n if init == "lin" else state_size / math.pi * (state_size / (2 * n + 1) - 1)
        return torch.complex(torch.full_like(n, -0.5), imag), torch.ones(state_size // 2, dtype=torch.complex64)


# ----------------------------------------------------------------------------
# Discretisation and the convolution kernel.


def without_autocast(device: torch.device) -> AbstractContextManager:
    """A float32 region: autocast off on ``device`` (meta tensors, used to count flops, have no autocast)."""
    return nullcontext() if device.type == "meta" else torch.autocast(device.type, enabled=False)


def discretize(A: Tensor, dt: Tensor, method: str = "zoh") -> tuple[Tensor, Tensor]:
    """(Ā, B̄ / B) of ``x' = A x + B u`` for step ``dt`` (broadcast against A).

    ZOH: ``Ā = exp(Δ A)``, ``B̄ = (exp(Δ A) - 1) / A · B``. Bilinear: ``Ā = (1 + Δ A / 2) / (1 - Δ A / 2)``,
    ``B̄ = Δ / (1 - Δ A / 2) · B``.
    """
    dtA = A * dt
    if method == "zoh":
        return torch.exp(dtA), (torch.exp(dtA) - 1) / A
    if method == "bilinear":
        return (1 + dtA / 2) / (1 - dtA / 2), dt / (1 - dtA / 2)
    raise ValueError(f"discretization {method!r} is not one of {', '.join(DISCRETIZATIONS)}")


def vandermonde_kernel(C: Tensor, A_bar: Tensor, B_bar: Tensor, length: int) -> Tensor:
    """``K_l = 2 Re sum_n C_n B̄_n Ā_n^l`` for l < length: (H, N/2) complex -> (H, L) float32.

    With a block size b ~ sqrt(L), ``Ā^(q b + r) = Ā^r · Ā^(q b)``: only O(sqrt L) powers per mode are evaluated
    (elementwise complex exp/trig is slow, unvectorised on CPU) and the sum over modes becomes one batched
    matrix product (H, b, N/2) x (H, N/2, L/b) instead of an (H, N/2, L) elementwise product.
    """
    block = math.isqrt(max(length - 1, 0)) + 1  # ceil(sqrt(L))
    blocks = -(-length // block)
    log_a = torch.log(A_bar)  # log|Ā| + i arg Ā; exp(e Log Ā) = Ā^e for integer e

    def powers(exponents: Tensor) -> Tensor:  # (H, N/2, E)
        return torch.polar(torch.exp(log_a.real.unsqueeze(-1) * exponents), log_a.imag.unsqueeze(-1) * exponents)

    steps = torch.arange(block, device=A_bar.device, dtype=torch.float32)
    inner = (C * B_bar).unsqueeze(-1) * powers(steps)  # (H, N/2, b): C B̄ Ā^r
    outer = powers(steps[:blocks] * block)  # (H, N/2, L/b): Ā^(q b); blocks <= block always
    kernel = torch.einsum("hnr,hnq->hqr", inner, outer)  # (H, L/b, b)
    return 2 * kernel.reshape(kernel.shape[0], -1)[:, :length].real


def fft_conv(u: Tensor, kernel: Tensor) -> Tensor:
    """Causal convolution ``y_l = sum_{j <= l} K_j u_{l-j}`` of (B, H, L) inputs with (H or 1, L) kernels.

    Done with real FFTs of length 2L (zero padding: no circular wrap-around), in float32.
    """
    length = u.shape[-1]
    spectrum = torch.fft.rfft(u.float(), n=2 * length) * torch.fft.rfft(kernel.float(), n=2 * length)
    return torch.fft.irfft(spectrum, n=2 * length)[..., :length]


class S4DKernel(nn.Module):
    """The parameters of H diagonal SSMs (or one shared, as BiGS) and their length-L convolution kernels.

    Args:
        channels: H, the number of kernels (1 for a kernel shared by all channels).
        state_size: N; N/2 complex modes are stored (the conjugate half is implicit).
        init: "lin" (S4D-Lin), "inv" (S4D-Inv) or "legs" (S4D-LegS, diagonal HiPPO).
        discretization: "zoh" or "bilinear".
        dt_min, dt_max: log Δ starts uniform in [log dt_min, log dt_max] per kernel (s4d.py: 1e-3, 1e-1).
    """

    def __init__(self, channels: int, state_size: int = 64, init: str = "legs", discretization: str = "zoh",
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        if discretization not in DISCRETIZATIONS:
            raise ValueError(f"discretization {discretization!r} is not one of {', '.join(DISCRETIZATIONS)}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.channels, self.state_size, self.init = channels, state_size, init
        self.discretization, self.dt_min, self.dt_max = discretization, dt_min, dt_max
        if init not in INITS:
            raise ValueError(f"ssm init {init!r} is not one of {', '.join(INITS)}")
        if state_size < 2 or state_size % 2:
            raise ValueError(f"state_size={state_size} must be an even integer >= 2 (N/2 complex-conjugate pairs)")
        modes = state_size // 2
        self.log_dt = nn.Parameter(torch.empty(channels))
        self.log_A_real = nn.Parameter(torch.empty(channels, modes))
        self.A_imag = nn.Parameter(torch.empty(channels, modes))
        self.C = nn.Parameter(torch.empty(channels, modes, 2))  # complex C * B as (real, imag)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A from the chosen init, log Δ uniform, C ~ complex N(0, 1) times B (B folded into C)."""
        A, B = init_A_B(self.init, self.state_size)
        h = self.channels
        with torch.device("cpu"):
            log_dt = torch.rand(h) * math.log(self.dt_max / self.dt_min) + math.log(self.dt_min)
            C = torch.randn(h, self.state_size // 2, dtype=torch.complex64) * B
        # copy_ (rather than new tensors) so a model built on the meta device stays there.
        self.log_dt.copy_(log_dt)
        self.log_A_real.copy_(torch.log(-A.real).expand(h, -1))
        self.A_imag.copy_(A.imag.expand(h, -1))
        self.C.copy_(torch.view_as_real(C))

    def A(self) -> Tensor:
        """Complex (H, N/2) state matrix diagonal, ``Re A = -exp(log_A_real) < 0`` (stable by construction)."""
        return torch.complex(-torch.exp(self.log_A_real.float()), self.A_imag.float())

    def discretized(self) -> tuple[Tensor, Tensor, Tensor]:
        """(C, Ā, B̄) as complex (H, N/2) tensors, for the kernel and for a step-by-step recurrence."""
        dt = torch.exp(self.log_dt.float()).unsqueeze(-1)
        A_bar, B_bar = discretize(self.A(), dt, self.discretization)
        return torch.view_as_complex(self.C.float().contiguous()), A_bar, B_bar

    def forward(self, length: int) -> Tensor:
        """(H, L) float32 kernel."""
        with without_autocast(self.C.device):
            return vandermonde_kernel(*self.discretized(), length)


class S4D(nn.Module):
    """One direction of S4D on token sequences: ``(B, L, H) -> (B, L, H)``, ``y = K * u + D u`` per channel.

    Args:
        channels: H, the width of the sequence.
        shared_kernel: one SSM (and one D) for all channels, as BiGS, instead of one per channel (s4d.py).
        Other arguments: see :class:`S4DKernel`.
    """

    def __init__(self, channels: int, state_size: int = 64, init: str = "legs", discretization: str = "zoh",
                 shared_kernel: bool = False, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        kernels = 1 if shared_kernel else channels
        self.kernel = S4DKernel(kernels, state_size, init, discretization, dt_min, dt_max)
        self.D = nn.Parameter(torch.empty(kernels))  # skip term
        nn.init.normal_(self.D)  # s4d.py: D ~ N(0, 1)

    def forward(self, u: Tensor) -> Tensor:
        length = u.shape[1]
        with without_autocast(u.device):
            u32 = u.float().transpose(1, 2)  # (B, H, L): the FFT runs along the last axis
            y = fft_conv(u32, self.kernel(length)) + self.D.float().unsqueeze(-1) * u32
        return y.transpose(1, 2).to(u.dtype)


class BidirectionalS4D(nn.Module):
    """Forward and backward S4D at full length, outputs concatenated on channels: ``(B, L, H) -> (B, L, 2H)``.

    The backward direction is an independent S4D run on the reversed sequence and reversed back (BiGS), so
    position l sees the future tokens l..L-1; the two outputs stay separate for the multiplicative gate.
    """

    def __init__(self, channels: int, **s4d_kwargs):
        super().__init__()
        self.forward_ssm = S4D(channels, **s4d_kwargs)
        self.backward_ssm = S4D(channels, **s4d_kwargs)

    def forward(self, u: Tensor) -> Tensor:
        backward = self.backward_ssm(u.flip(1)).flip(1)
        return torch.cat([self.forward_ssm(u), backward], dim=-1)


def ssm_dynamics_parameters(module: nn.Module) -> list[nn.Parameter]:
    """A and Δ of every S4D kernel inside ``module``: the parameters optimised without weight decay."""
    return [
        getattr(m, name) for m in module.modules() if isinstance(m, S4DKernel) for name in SSM_DYNAMICS_PARAMS
    ]
