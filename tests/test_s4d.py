"""S4D: initialisations and discretisations vs hand values, FFT convolution vs the recurrence, bidirection."""

from __future__ import annotations

import cmath
import math

import pytest
import torch

from ditlab.flops import count_forward_macs
from ditlab.models.s4d import (
    S4D,
    BidirectionalS4D,
    S4DKernel,
    discretize,
    fft_conv,
    init_A_B,
    ssm_dynamics_parameters,
    vandermonde_kernel,
)


def naive_recurrence(layer: S4D, u: torch.Tensor) -> torch.Tensor:
    """``x_l = Ā x_{l-1} + B̄ u_l`` (x_{-1} = 0), ``y_l = 2 Re(C x_l) + D u_l``, one step at a time: (B, L, H)."""
    C, A_bar, B_bar = (v.to(torch.complex128) for v in layer.kernel.discretized())  # (H or 1, N/2)
    u = u.double()
    state = torch.zeros(u.shape[0], u.shape[2], C.shape[1], dtype=torch.complex128)
    outputs = []
    for step in range(u.shape[1]):
        state = A_bar * state + B_bar * u[:, step, :, None]
        outputs.append(2 * (C * state).sum(-1).real + layer.D.double() * u[:, step])
    return torch.stack(outputs, dim=1)


def test_lin_and_inv_init_hand_values():
    A, B = init_A_B("lin", 6)
    torch.testing.assert_close(A, torch.tensor([-0.5 + 0j, -0.5 + 1j * math.pi, -0.5 + 2j * math.pi]))
    torch.testing.assert_close(B, torch.ones(3, dtype=torch.complex64))
    A, _ = init_A_B("inv", 4)  # imag = (N / pi) (N / (2n + 1) - 1) = (4/pi) * 3, (4/pi) * (1/3)
    torch.testing.assert_close(A.imag, torch.tensor([12 / math.pi, 4 / (3 * math.pi)]))
    assert torch.all(A.real == -0.5)


def test_legs_init_hand_values():
    # N = 2: normal part of HiPPO-LegS is [[-1/2, sqrt(3)/2], [-sqrt(3)/2, -1/2]], eigenvalues -1/2 +- i sqrt(3)/2,
    # B_hippo = (1, sqrt(3)) projected on the unit eigenvector (1, i)/sqrt(2): |B|^2 = (1 + 3) / 2.
    A, B = init_A_B("legs", 2)
    torch.testing.assert_close(A, torch.tensor([complex(-0.5, math.sqrt(3) / 2)]))
    torch.testing.assert_close(B.abs() ** 2, torch.tensor([2.0]))
    A, _ = init_A_B("legs", 64)
    assert A.shape == (32,) and torch.all(A.real == -0.5) and torch.all(A.imag > 0)
    assert torch.all(A.imag[1:] > A.imag[:-1])  # sorted, no duplicates


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_discretizations_hand_values(method):
    a, dt = complex(-0.5, math.pi), 0.1
    if method == "zoh":
        a_bar, b_bar = cmath.exp(dt * a), (cmath.exp(dt * a) - 1) / a
    else:
        a_bar, b_bar = (1 + dt * a / 2) / (1 - dt * a / 2), dt / (1 - dt * a / 2)
    A_bar, B_bar = discretize(torch.tensor([a], dtype=torch.complex128), torch.tensor([dt], dtype=torch.float64),
                              method)
    torch.testing.assert_close(A_bar, torch.tensor([a_bar], dtype=torch.complex128))
    torch.testing.assert_close(B_bar, torch.tensor([b_bar], dtype=torch.complex128))


@pytest.mark.parametrize("init", ["lin", "inv", "legs"])
@pytest.mark.parametrize("method", ["zoh", "bilinear"])
@pytest.mark.parametrize("shared", [False, True])
def test_fft_convolution_equals_recurrence(init, method, shared):
    torch.manual_seed(0)
    layer = S4D(3, state_size=8, init=init, discretization=method, shared_kernel=shared, dt_min=0.05, dt_max=0.5)
    u = torch.randn(2, 13, 3)
    with torch.no_grad():
        torch.testing.assert_close(layer(u).double(), naive_recurrence(layer, u), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("length", [1, 2, 50, 1024, 1030])
def test_blocked_vandermonde_equals_direct_powers(length):
    torch.manual_seed(3)
    kernel = S4DKernel(3, state_size=16, init="legs", dt_min=1e-3, dt_max=0.1)
    C, A_bar, B_bar = (v.to(torch.complex128) for v in kernel.discretized())
    direct = 2 * torch.einsum("hn,hnl->hl", C * B_bar, A_bar.unsqueeze(-1) ** torch.arange(length)).real
    with torch.no_grad():
        torch.testing.assert_close(kernel(length).double(), direct, atol=1e-4, rtol=1e-4)
    assert vandermonde_kernel(*kernel.discretized(), length).shape == (3, length)


def test_fft_conv_has_no_wraparound():
    # A kernel that is 1 only at the last lag: y_l = u_{l - (L-1)} is zero except at the last position.
    length = 7
    kernel = torch.zeros(1, length)
    kernel[0, -1] = 1.0
    u = torch.randn(1, 1, length)
    y = fft_conv(u, kernel)
    torch.testing.assert_close(y[..., :-1], torch.zeros(1, 1, length - 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(y[..., -1], u[..., 0], atol=1e-6, rtol=1e-5)


def test_backward_direction_is_forward_ssm_on_flipped_input():
    torch.manual_seed(1)
    layer = BidirectionalS4D(4, state_size=8, init="lin")
    u = torch.randn(2, 11, 4)
    with torch.no_grad():
        y = layer(u)
        expected_bwd = naive_recurrence(layer.backward_ssm, u.flip(1)).flip(1)
        torch.testing.assert_close(y[..., 4:].double(), expected_bwd, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(y[..., :4].double(), naive_recurrence(layer.forward_ssm, u), atol=2e-5, rtol=1e-4)
        # Forward outputs see only the past, backward outputs only the future of a perturbed position.
        bumped = u.clone()
        bumped[:, 5] += 1.0
        fwd_delta = (layer(bumped)[..., :4] - y[..., :4]).abs().amax(dim=(0, 2))
        bwd_delta = (layer(bumped)[..., 4:] - y[..., 4:]).abs().amax(dim=(0, 2))
    # (FFT round-off is ~1e-7; a real dependence is ~1e-1.)
    assert torch.all(fwd_delta[:5] < 1e-5) and torch.all(fwd_delta[5:] > 1e-3)
    assert torch.all(bwd_delta[6:] < 1e-5) and torch.all(bwd_delta[:6] > 1e-3)


def test_float32_under_bf16_autocast():
    torch.manual_seed(2)
    layer = S4D(4, state_size=8)
    u = torch.randn(2, 16, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.kernel(16).dtype == torch.float32
        y = layer(u)
    assert y.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(y.float(), layer(u.float()).bfloat16().float(), atol=0, rtol=0)


def test_gradients_reach_every_ssm_parameter():
    layer = S4D(3, state_size=4)
    layer(torch.randn(1, 9, 3)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_parameter_names_and_dynamics_group():
    layer = BidirectionalS4D(5, state_size=6, shared_kernel=True)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes["forward_ssm.kernel.C"] == (1, 3, 2) and shapes["backward_ssm.D"] == (1,)
    names = {id(p): n for n, p in layer.named_parameters()}
    got = sorted(names[id(p)] for p in ssm_dynamics_parameters(layer))
    assert got == sorted(f"{d}_ssm.kernel.{p}" for d in ("forward", "backward") for p in ("A_imag", "log_A_real",
                                                                                             "log_dt"))


def test_dt_init_range():
    torch.manual_seed(0)
    kernel = S4DKernel(500, state_size=4, dt_min=0.01, dt_max=0.2)
    dt = kernel.log_dt.exp()
    assert dt.min() >= 0.01 and dt.max() <= 0.2 and dt.max() / dt.min() > 10


def test_fft_flops_are_counted():
    # Three length-2L real FFTs (input, kernel, inverse) at 2.5 n log2 n flops each, plus the Vandermonde
    # product H * N/2 * (L rounded up to 3 blocks of 3); the ledger reports halved flops (MACs).
    channels, length, batch = 4, 8, 2
    layer = S4D(channels, state_size=6)
    n = 2 * length
    fft = 2.5 * n * math.log2(n)
    expected_flops = fft * channels * batch * 2 + fft * channels + 2 * channels * 3 * (3 * 3)
    assert count_forward_macs(layer, (torch.zeros(batch, length, channels),)) == int(expected_flops) // 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init": "hippo"}, "ssm init 'hippo' is not one of lin, inv, legs"),
        ({"discretization": "euler"}, "discretization 'euler' is not one of zoh, bilinear"),
        ({"state_size": 5}, "state_size=5 must be an even integer"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "need 0 < dt_min <= dt_max"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        S4D(2, **kwargs)
