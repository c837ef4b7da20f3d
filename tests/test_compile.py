"""torch.compile readiness of every backbone, checked on the CPU with the graph-capturing "aot_eager" backend.

Two GPU levers need whole graphs: CUDA graphs while sampling (``torch.compile(model, mode="reduce-overhead")``
captures the whole eval forward, so any graph break splits it) and compile per block while training. Here
``fullgraph=True`` turns any graph break (a host read, data-dependent Python control flow) into an error, and
the compiled results must equal the eager ones. Inductor code generation itself is not exercised (minutes on a
CPU); the GPU run of benchmarks/levers.py does that.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ditlab
from helpers import SMALL_MODELS, small_objective


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def inputs(family: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    size = SMALL_MODELS[family]["input_size"]
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0.3, 0.9]) if family == "DDT" else torch.tensor([3, 500])
    return torch.randn(2, 4, size, size, generator=g), t, torch.tensor([1, 10])  # 10: the null class (CFG)


def first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("family", list(SMALL_MODELS))
def test_eval_forward_is_one_graph(family):
    torch.manual_seed(0)
    model = ditlab.create_model(family, **SMALL_MODELS[family]).eval()
    model.check_inputs = False  # as inside inputs_checked_once after the first call
    x, t, y = inputs(family)
    with torch.no_grad():
        expected = first(model(x, t, y))
        compiled = first(torch.compile(model, backend="aot_eager", fullgraph=True)(x, t, y))
    torch.testing.assert_close(compiled, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", list(SMALL_MODELS))
def test_training_with_every_block_compiled_matches_eager(family):
    x0, _, y = inputs(family)
    grads = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = ditlab.create_model(family, **SMALL_MODELS[family]).train()
        model.check_inputs = False
        if compiled:
            for block in model.blocks:
                block.compile(backend="aot_eager", fullgraph=True)
        torch.manual_seed(1)  # the same t, noise, label dropout and mask in both runs
        np.random.seed(1)  # (MDT draws t with numpy)
        small_objective(family).loss(model, x0, y)["loss"].mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)
