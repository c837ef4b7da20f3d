"""Encoder sharing: spec parsing, uniform and DP schedules (vs brute force and the official loops), the wrapper."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import ditlab
from ditlab.objectives import DiffusionConfig
from ditlab.objectives.flow import FlowConfig
from ditlab.sampling import DDIM, Euler, Guidance, Heun, generate_latents, sharing_schedule
from ditlab.sampling.sharing import (
    SharedEncoder,
    ShareSpec,
    dp_schedule,
    parse_share_spec,
    resolve_schedule,
    schedule_cost,
    segment_costs,
    similarity_matrix,
    uniform_schedule,
)

TINY_DDT = dict(in_channels=4, num_groups=2, hidden_size=32, num_blocks=3, num_encoder_blocks=2, patch_size=2,
                num_classes=10, input_size=8)


def random_similarity(n: int, seed: int) -> np.ndarray:
    """A symmetric matrix with unit diagonal and entries in (0, 1), like averaged cosine similarities."""
    rng = np.random.default_rng(seed)
    sim = rng.uniform(0.2, 1.0, (n, n))
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, 1.0)
    return sim


@pytest.fixture
def tiny_ddt():
    torch.manual_seed(0)
    model = ditlab.create_model("DDT", **TINY_DDT)
    for p in model.parameters():  # randomise the zero-initialised output so the velocity depends on s
        p.data.add_(0.05 * torch.randn_like(p))
    return model.eval()


# ----------------------------------------------------------------------------
# Specs and schedules.


def test_parse_share_spec():
    assert parse_share_spec("uniform:4") == ShareSpec("uniform", 4)
    assert parse_share_spec("DP:12") == ShareSpec("dp", 12)
    assert parse_share_spec(None) is None and parse_share_spec("none") is None
    for bad, match in (("uniform:0", "sharing ratio must be >= 1, got 0"),
                       ("dp:-2", "number of recompute steps K must be >= 1, got -2"),
                       ("every:3", "encoder sharing 'every' is not one of uniform, dp"),
                       ("uniform", "bad --share 'uniform'"), ("dp:x", "bad --share 'dp:x'")):
        with pytest.raises(ValueError, match=match) as err:
            parse_share_spec(bad)
        assert "\n" not in str(err.value)


def test_uniform_schedule_recomputes_every_r_steps_from_0():
    assert uniform_schedule(10, 3) == [0, 3, 6, 9]
    assert uniform_schedule(250, 5) == list(range(0, 250, 5))
    assert len(uniform_schedule(250, 4)) == math.ceil(250 / 4)
    assert uniform_schedule(5, 1) == [0, 1, 2, 3, 4]


def official_segment_costs(sim: np.ndarray) -> list[list[float]]:
    """sharing_sampling.py's in-place cumulative loop, written out as the notes give it."""
    error = (1 - sim).tolist()
    for i in range(1, len(sim)):
        for j in range(0, i):
            error[i][j] = error[i - 1][j] + error[i][j]
    return error


def test_segment_costs_equal_the_official_cumulative_loop():
    sim = random_similarity(7, 0)
    ours, official = segment_costs(sim), official_segment_costs(sim)
    for i in range(7):
        for j in range(i + 1):
            assert ours[i, j] == pytest.approx(official[i][j], abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_dp_schedule_equals_the_brute_force_optimum(seed):
    n = 8
    sim = random_similarity(n, seed)
    for k in range(1, n + 1):
        candidates = [(0, *rest) for rest in itertools.combinations(range(1, n), k - 1)]
        best = min(candidates, key=lambda s: schedule_cost(sim, s))
        schedule = dp_schedule(sim, k)
        assert schedule == list(best), (k, schedule, best)
        assert schedule[0] == 0 and len(schedule) == k and schedule == sorted(set(schedule))


def test_dp_with_k_equal_n_recomputes_every_step_and_k_above_n_is_refused():
    sim = random_similarity(6, 9)
    assert dp_schedule(sim, 6) == list(range(6))
    with pytest.raises(ValueError, match=r"K=7 recompute steps is not in 1..6"):
        dp_schedule(sim, 7)
    with pytest.raises(ValueError, match="K=11 recompute steps exceeds the 10 sampler steps"):
        resolve_schedule(ShareSpec("dp", 11), 10, calibrate=lambda: [])


def test_similarity_matrix_equals_the_official_per_token_bmm():
    states = [torch.randn(3, 5, 8) for _ in range(4)]
    stacked = torch.stack(states).view(4, 15, 8).permute(1, 0, 2)
    normed = torch.nn.functional.normalize(stacked, dim=-1)
    official = torch.bmm(normed, normed.transpose(1, 2)).mean(dim=0).double()
    torch.testing.assert_close(similarity_matrix(states), official, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.diagonal(similarity_matrix(states)), torch.ones(4, dtype=torch.float64))


# ----------------------------------------------------------------------------
# Sharing while sampling.


def count_calls(model, method: str) -> list[int]:
    """Record each call of ``model.<method>`` (the list grows by one per call) from now on."""
    calls, original = [], getattr(model, method)

    def counted(*args):
        calls.append(1)
        return original(*args)

    setattr(model, method, counted)
    return calls


def test_ratio_one_equals_no_sharing_exactly(tiny_ddt):
    labels = torch.tensor([1, 7])
    sampler, guidance = Euler(6, last_step=0.1), Guidance(2.0, interval=(0.3, 1.0))
    plain = generate_latents(tiny_ddt, FlowConfig(), labels, sampler, guidance=guidance)
    calls = count_calls(tiny_ddt, "encode")
    shared = generate_latents(tiny_ddt, FlowConfig(), labels, sampler, guidance=guidance,
                              share=ShareSpec("uniform", 1))
    assert torch.equal(plain, shared)
    assert len(calls) == 6


def test_uniform_sharing_calls_the_encoder_ceil_n_over_r_times_and_moves_samples(tiny_ddt):
    labels = torch.tensor([3])
    sampler = Euler(7)
    plain = generate_latents(tiny_ddt, FlowConfig(), labels, sampler)
    encodes, decodes = count_calls(tiny_ddt, "encode"), count_calls(tiny_ddt, "decode")
    shared = generate_latents(tiny_ddt, FlowConfig(), labels, sampler, share=ShareSpec("uniform", 3))
    assert len(encodes) == 3 and len(decodes) == 7
    assert not torch.equal(plain, shared)


def test_dp_sharing_end_to_end(tiny_ddt):
    sampler = Euler(8, last_step=0.1)
    labels = torch.tensor([2, 4])
    out = generate_latents(tiny_ddt, FlowConfig(), labels, sampler, share=ShareSpec("dp", 3))
    schedule = sharing_schedule(tiny_ddt, FlowConfig(), sampler, ShareSpec("dp", 3))
    assert schedule[0] == 0 and len(schedule) == 3 and schedule == sorted(set(schedule))
    # the solved schedule can be passed back (no calibration), as DDT caches it
    calls = count_calls(tiny_ddt, "encode")
    again = generate_latents(tiny_ddt, FlowConfig(), labels, sampler, share=schedule)
    assert torch.equal(out, again) and len(calls) == 3
    with pytest.raises(ValueError, match=r"recompute steps \[1, 3\] must start at 0 and stay below 8"):
        generate_latents(tiny_ddt, FlowConfig(), labels, sampler, share=[1, 3])
    with pytest.raises(ValueError, match="share='dp:3': pass ShareSpec"):
        generate_latents(tiny_ddt, FlowConfig(), labels, sampler, share="dp:3")


def test_sharing_counts_model_evaluations_of_any_sampler(tiny_ddt):
    # Heun (DDT's default): one evaluation per step, so dp:K over 5 steps chooses among 5 evaluations; exact
    # Heun makes 2N - 1; a DDT trained under Gaussian diffusion shares its encoder across DDIM steps alike.
    labels = torch.tensor([1])
    assert len(sharing_schedule(tiny_ddt, FlowConfig(), Heun(5), ShareSpec("uniform", 2))) == 3
    assert sharing_schedule(tiny_ddt, FlowConfig(), Heun(5, exact=True), ShareSpec("uniform", 2)) == [0, 2, 4, 6, 8]
    assert max(sharing_schedule(tiny_ddt, FlowConfig(), Heun(5), ShareSpec("dp", 4), calibration_samples=2)) < 5
    calls = count_calls(tiny_ddt, "encode")
    out = generate_latents(tiny_ddt, DiffusionConfig(learn_sigma=False), labels, DDIM(6), share=ShareSpec("uniform", 4))
    assert len(calls) == 2 and torch.isfinite(out).all()


def test_shared_encoder_reuses_the_state_through_forward_or_halves(tiny_ddt):
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2])

    class ForwardOnly:  # DDT's calling convention without encode/decode methods
        def __call__(self, *args):
            return tiny_ddt(*args)

    for model in (tiny_ddt, ForwardOnly()):
        wrapper = SharedEncoder(model, recompute=[0, 2], record=True)
        with torch.no_grad():
            outs = [wrapper(x + i, t, y) for i in range(3)]
            expected_second = tiny_ddt(x + 1, t, y, tiny_ddt.encode(x, t, y))[0]
        torch.testing.assert_close(outs[1], expected_second)
        assert wrapper.encoder_calls == 2 and len(wrapper.states) == 3
        assert wrapper.states[0] is wrapper.states[1] and wrapper.states[2] is not wrapper.states[1]


def test_sharing_needs_an_encoder_decoder_split():
    dit = ditlab.create_model("DiT", input_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=2,
                              num_classes=10, learn_sigma=False)
    with pytest.raises(ValueError, match="encoder sharing needs a model with an encoder/decoder split"):
        generate_latents(dit, FlowConfig(), torch.tensor([1]), Euler(2), share=ShareSpec("uniform", 2))
