"""The training loop: exact resume, run folder, NaN stop, atomic checkpoints, bad resume folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from ditlab.cli import main as cli_main
from ditlab.data import StepBatchSampler
from ditlab.models import layers
from ditlab.objectives import GaussianDiffusion
from ditlab.train import NonFiniteLossError, TrainConfig, train
from ditlab.train import checkpoint as ckpt
from ditlab.train.ema import EMA

TINY = {"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 4}


def tiny_config(run_dir: Path, **kw) -> TrainConfig:
    base = dict(run_dir=str(run_dir), model="DiT", model_args=dict(TINY), steps=20, global_batch=8, lr=1e-3,
                ema_decay=0.9, log_every=5, ckpt_every=10, sample_every=-1, progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def final_state(run_dir: Path, step: int) -> tuple[dict, dict]:
    weights, state = ckpt.checkpoint_paths(run_dir / "checkpoints", step)
    return ckpt.load_weights(weights)[0], ckpt.load_train_state(state)


def test_exact_resume_equals_uninterrupted(tmp_path):
    train(tiny_config(tmp_path / "straight"))
    train(tiny_config(tmp_path / "split", steps=10))
    train(tiny_config(tmp_path / "split", steps=20), resume=True)
    ema_a, state_a = final_state(tmp_path / "straight", 20)
    ema_b, state_b = final_state(tmp_path / "split", 20)
    for key in ema_a:
        assert torch.equal(ema_a[key], ema_b[key]), key
    for key in state_a["model"]:
        assert torch.equal(state_a["model"][key], state_b["model"][key]), key
    opt_a, opt_b = state_a["optimizer"]["state"], state_b["optimizer"]["state"]
    for idx in opt_a:
        assert torch.equal(opt_a[idx]["exp_avg_sq"], opt_b[idx]["exp_avg_sq"])
    # The metrics of the resumed half equal those of the straight run.
    rows_a = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def test_run_folder_layout(tmp_path):
    run = tmp_path / "run"
    result = train(tiny_config(run, steps=10, ckpt_every=5, sample_every=10, sample_steps="ddim3"))
    assert json.loads((run / "config.json").read_text())["model_args"] == TINY
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10]
    assert {"loss", "mse", "vb", "grad_norm", "lr", "img_per_s"} <= set(rows[0])
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    assert ckpt.saved_steps(run / "checkpoints") == [5, 10]
    assert (run / "samples" / "step_0000010.png").is_file()
    assert result.last_checkpoint == run / "checkpoints" / "step_0000010.safetensors"
    _, meta = ckpt.load_weights(result.last_checkpoint)
    assert meta["family"] == "DiT" and meta["step"] == 10 and meta["config"]["in_channels"] == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = GaussianDiffusion.loss

    def loss_going_nan(self, model, x0, y=None, **kw):
        calls["n"] += 1
        terms = original(self, model, x0, y, **kw)
        if calls["n"] == 8:  # the 8th step
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(GaussianDiffusion, "loss", loss_going_nan)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 8; .*step_0000005.safetensors"):
        train(tiny_config(run, steps=20, ckpt_every=5))
    assert ckpt.saved_steps(run / "checkpoints") == [5]
    weights, _ = final_state(run, 5)
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_atomic_write_leaves_nothing_on_crash(tmp_path):
    target = tmp_path / "file.bin"

    def crash(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt.atomic_write(target, crash)
    assert list(tmp_path.iterdir()) == []
    ckpt.atomic_write(target, lambda tmp: tmp.write_bytes(b"whole"))
    assert target.read_bytes() == b"whole" and len(list(tmp_path.iterdir())) == 1


def test_incomplete_checkpoint_is_ignored(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, steps=10, ckpt_every=5))
    # A weights file without its train state (a crash between the two writes) is not a checkpoint.
    weights_10, state_10 = ckpt.checkpoint_paths(run / "checkpoints", 10)
    os.remove(state_10)
    assert ckpt.saved_steps(run / "checkpoints") == [5]
    assert weights_10.exists()


def test_fresh_run_refuses_folder_with_checkpoints(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, steps=5, ckpt_every=5))
    with pytest.raises(ValueError, match=r"already has checkpoints; resume it with --resume"):
        train(tiny_config(run, steps=5))


def test_ema_update_equation():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.75)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
    ema.update(model, step=0)
    torch.testing.assert_close(ema.module.weight, 0.75 * start + 0.25 * (start + 4.0))
    assert ema.decay_at(0) == 0.75
    assert EMA(model, 0.9999, warmup=True).decay_at(0) == pytest.approx(0.1)


def test_step_batch_sampler_ranks_tile_the_global_batch():
    single = StepBatchSampler(50, 8, seed=3)
    ranks = [StepBatchSampler(50, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for step in (0, 5, 6, 13):  # steps 6 and 13 cross epoch boundaries
        assert single.batch_at(step) == ranks[0].batch_at(step) + ranks[1].batch_at(step)
    resumed = iter(StepBatchSampler(50, 8, seed=3, start_step=6))
    assert next(resumed) == single.batch_at(6)
    with pytest.raises(ValueError, match=r"global batch size 9 is not divisible by the number of processes 2"):
        StepBatchSampler(50, 9, world_size=2)


# ---- resume failures through the CLI: one line, exit code 2 ----


@pytest.mark.parametrize("setup, message", [
    ("missing", "does not exist"),
    ("corrupt", "is not a valid ditlab config"),
    ("no_ckpt", "has no complete checkpoint"),
])
def test_unreadable_run_folder_on_resume(tmp_path, capsys, setup, message):
    run = tmp_path / "run"
    if setup != "missing":
        run.mkdir()
        if setup == "corrupt":
            (run / "config.json").write_text("{not json")
        else:
            tiny_config(run).save(run / "config.json")
    assert cli_main(["train", "--resume", str(run), "--progress", "false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ditlab: error: ") and message in err[0]


def test_resume_refuses_config_changes(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, steps=5, ckpt_every=5))
    assert cli_main(["train", "--resume", str(run), "--lr", "0.1"]) == 2
    assert "only --steps and logging flags may change (got lr)" in capsys.readouterr().err


def test_model_data_mismatch_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"model in_channels=4 does not match the data \(digits\): in_channels=1"):
        train(tiny_config(tmp_path / "run", model_args={**TINY, "in_channels": 4}))
    with pytest.raises(ValueError, match=r"model predicts 1 channels but the diffusion objective needs 2"):
        train(tiny_config(tmp_path / "run2", model_args={**TINY, "learn_sigma": False}))


def test_attention_backend_option_trains_the_same_model(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="attention='flash' is not one of sdpa, explicit, flex"):
        tiny_config(tmp_path / "bad", attention="flash")
    fused_flags: dict[str, set[bool]] = {}
    original = layers.attention

    def recording(q, k, v, bias=None, fused=True):
        fused_flags.setdefault(current, set()).add(fused)
        return original(q, k, v, bias, fused)

    monkeypatch.setattr(layers, "attention", recording)
    runs = {}
    for current in ("sdpa", "explicit"):
        runs[current] = train(tiny_config(tmp_path / current, steps=4, ckpt_every=4, attention=current))
    assert fused_flags == {"sdpa": {True}, "explicit": {False}}
    sdpa, explicit = (final_state(runs[name].run_dir, 4)[0] for name in ("sdpa", "explicit"))
    for key in sdpa:
        torch.testing.assert_close(explicit[key], sdpa[key], atol=1e-5, rtol=1e-4)
    assert TrainConfig.load(runs["explicit"].run_dir / "config.json").attention == "explicit"
