"""Encoder sharing: spec parsing, uniform and DP schedules (vs brute force and the official loops), the wrapper."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import ditlab
from ditlab.objectives.flow import FlowConfig
from ditlab.sampling.generate import generate_flow_latents
from ditlab.sampling.ode import FlowSamplerConfig
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


def test_ratio_one_equals_no_sharing_exactly(tiny_ddt):
    labels = torch.tensor([1, 7])
    sampler = FlowSamplerConfig("euler", 6, last_step=0.1)
    kwargs = dict(sampler=sampler, cfg_scale=2.0, cfg_interval=(0.3, 1.0))
    plain, none = generate_flow_latents(tiny_ddt, FlowConfig(), labels, **kwargs)
    shared, wrapper = generate_flow_latents(tiny_ddt, FlowConfig(), labels, share="uniform:1", **kwargs)
    assert none is None and torch.equal(plain, shared)
    assert wrapper.encoder_calls == 6


def test_uniform_sharing_calls_the_encoder_ceil_n_over_r_times_and_moves_samples(tiny_ddt):
    labels = torch.tensor([3])
    sampler = FlowSamplerConfig("euler", 7)
    plain, _ = generate_flow_latents(tiny_ddt, FlowConfig(), labels, sampler=sampler)
    shared, wrapper = generate_flow_latents(tiny_ddt, FlowConfig(), labels, sampler=sampler, share="uniform:3")
    assert wrapper.encoder_calls == 3 and wrapper.evaluation == 7
    assert not torch.equal(plain, shared)


def test_dp_sharing_end_to_end(tiny_ddt):
    sampler = FlowSamplerConfig("euler", 8, last_step=0.1)
    labels = torch.tensor([2, 4])
    out, wrapper = generate_flow_latents(tiny_ddt, FlowConfig(), labels, sampler=sampler, share="dp:3",
                                         calibration_samples=2)
    assert wrapper.encoder_calls == 3
    assert 0 in wrapper.recompute and len(wrapper.recompute) == 3
    # the solved schedule can be passed back (no calibration), as DDT caches it
    again, _ = generate_flow_latents(tiny_ddt, FlowConfig(), labels, sampler=sampler, share=list(wrapper.recompute))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match=r"recompute steps \[1, 3\] must start at 0 and stay below 8"):
        generate_flow_latents(tiny_ddt, FlowConfig(), labels, sampler=sampler, share=[1, 3])


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
        generate_flow_latents(dit, FlowConfig(), torch.tensor([1]), sampler=FlowSamplerConfig(num_steps=2),
                              share="uniform:2")
