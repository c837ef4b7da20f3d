"""The shared optimisation step: no host reads from ditlab code, NaN detection at read time, inputs checked once."""

from __future__ import annotations

import contextlib
import math
import os
import sys

import pytest
import torch

import ditlab
from ditlab.models.checks import inputs_checked_once
from ditlab.objectives import DiffusionConfig
from ditlab.sampling import DDPM, Guidance, generate_latents
from ditlab.train.ema import EMA
from ditlab.train.step import NonFiniteLoss, StepParts, StepStats, optimisation_step, read_window
from helpers import SMALL_MODELS, small_objective

HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")
# ditlab's own code is what lives in the imported package's folder; a path test like "/ditlab/" in a file name would
# also match torch inside a clone named ditlab (ditlab/.venv/lib/.../torch/...).
PACKAGE_DIR = os.path.dirname(os.path.abspath(ditlab.__file__)) + os.sep
# Reads of tensors that live on the CPU by design, on every device: MDTv2's mask ratio (MDT.draw_mask_ratio).
CPU_BY_DESIGN = {("mdt.py", "random_masking")}


@contextlib.contextmanager
def no_host_reads_from_ditlab(monkeypatch: pytest.MonkeyPatch):
    """Make every tensor -> Python read whose caller is ditlab code fail (on a GPU each one is a host sync).

    torch's own CPU-side reads (e.g. AdamW's step counter, a CPU tensor even on CUDA) are not ours to judge.
    """
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _original=original, _name=name, **kwargs):
            frame = sys._getframe(1)
            caller = frame.f_code.co_filename
            exempt = (caller.rsplit("/", 1)[-1], frame.f_code.co_name) in CPU_BY_DESIGN
            if is_package_code(caller) and not exempt:
                raise AssertionError(f"Tensor.{_name} called from {caller}:{frame.f_lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)
    yield
    monkeypatch.undo()


def is_package_code(filename: str) -> bool:
    return os.path.abspath(filename).startswith(PACKAGE_DIR)


def test_package_code_is_told_by_the_package_folder(tmp_path):
    assert is_package_code(ditlab.__file__) and is_package_code(sys.modules["ditlab.train.step"].__file__)
    assert not is_package_code(__file__)
    # A clone named ditlab with its virtual environment inside: torch there is not ditlab's code.
    assert not is_package_code(str(tmp_path / "ditlab" / ".venv" / "lib" / "torch" / "_tensor.py"))
    assert not is_package_code(torch.__file__)


def step_parts(family: str, max_grad_norm: float | None = None) -> StepParts:
    torch.manual_seed(0)
    model = ditlab.create_model(family, **SMALL_MODELS[family])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return StepParts(model, model, small_objective(family), opt, EMA(model), torch.autocast("cpu", enabled=False),
                     max_grad_norm=max_grad_norm)


@pytest.mark.parametrize("family", list(SMALL_MODELS))
@pytest.mark.parametrize("max_grad_norm", [None, 1.0])
def test_training_step_reads_nothing_back(family, max_grad_norm, monkeypatch):
    parts = step_parts(family, max_grad_norm)
    size = SMALL_MODELS[family]["input_size"]
    x0, y = torch.randn(4, 4, size, size), torch.tensor([0, 3, 7, 9])
    with inputs_checked_once(parts.model):
        window = [optimisation_step(parts, x0, y, 0, 1e-3)]  # the first call validates the labels
        with no_host_reads_from_ditlab(monkeypatch):
            window += [optimisation_step(parts, x0, y, s, 1e-3) for s in (1, 2)]
    rows = read_window(window)
    assert [type(r["loss"]) for r in rows] == [float] * 3 and all(math.isfinite(r["grad_norm"]) for r in rows)
    assert rows[0]["loss"] != rows[1]["loss"]  # the optimizer did change the weights
    if max_grad_norm is None:
        assert "vb" in rows[0] or family == "DDT"


@pytest.mark.parametrize("family", ["DiT", "DiffuSSM"])
def test_guided_ddpm_sampling_reads_nothing_back_after_the_first_step(family, monkeypatch):
    torch.manual_seed(0)
    model = ditlab.create_model(family, **SMALL_MODELS[family]).eval()
    calls = {"n": 0}

    def guard_after_first_call(module, args, output):
        calls["n"] += 1
        if calls["n"] == 1:
            stack.enter_context(no_host_reads_from_ditlab(monkeypatch))

    with contextlib.ExitStack() as stack:
        model.register_forward_hook(guard_after_first_call)
        out = generate_latents(model, DiffusionConfig(), torch.tensor([1, 2]), DDPM("5"), guidance=Guidance(4.0))
    assert calls["n"] == 5 and torch.isfinite(out).all()
    assert model.check_inputs  # restored after sampling


def test_read_window_names_the_first_non_finite_step():
    def stats(step: int, loss: float) -> StepStats:
        return StepStats(step, ["loss", "mse"], torch.tensor([loss, 0.5]), torch.tensor(2.0))

    rows = read_window([stats(3, 1.25), stats(4, 0.75)])
    assert rows == [{"loss": 1.25, "mse": 0.5, "grad_norm": 2.0}, {"loss": 0.75, "mse": 0.5, "grad_norm": 2.0}]
    with pytest.raises(NonFiniteLoss, match="loss became inf at step 6") as err:  # counted from 1
        read_window([stats(4, 1.0), stats(5, math.inf), stats(6, math.nan)])
    assert err.value.step == 6
    assert read_window([]) == []


def test_inputs_checked_once_validates_the_first_call_only():
    torch.manual_seed(0)
    model = ditlab.create_model("DiT", **SMALL_MODELS["DiT"]).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    with inputs_checked_once(model), pytest.raises(ValueError, match="class id 11 is out of range"):
        model(x, t, torch.tensor([0, 11]))  # 10 is the null class
    assert model.check_inputs
    with inputs_checked_once(model):
        model(x, t, torch.tensor([0, 10]))
        assert not model.check_inputs  # later calls skip the y.min()/y.max() read
    assert model.check_inputs


def test_mdtv2_mask_ratio_is_drawn_on_the_cpu():
    model = ditlab.create_model("MDTv2", **SMALL_MODELS["MDTv2"])
    ratios = torch.cat([model.draw_mask_ratio() for _ in range(50)])
    assert ratios.device.type == "cpu" and ratios.dtype == torch.float32  # float32: the official kept count
    assert 0.3 <= float(ratios.min()) and float(ratios.max()) <= 0.5  # MDTv2: 0.3 + U[0, 0.2)


def test_ddt_trains_after_sampling_in_inference_mode():
    """DDT caches its RoPE table; one first built under inference_mode must not break a later backward."""
    parts = step_parts("DDT")
    x0, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    with torch.inference_mode():
        parts.model(x0, torch.rand(2), y)
    rows = read_window([optimisation_step(parts, x0, y, 0, 1e-3)])
    assert math.isfinite(rows[0]["loss"])
