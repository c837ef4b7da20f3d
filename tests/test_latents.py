"""extract-latents: shards with mean/std of each image and its flip, crash-safe resume, training reads them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ditlab.data.images import BadImageError, ImageFolder, to_model_tensor
from ditlab.data.latents import ExtractConfig, LatentShards, extract_latents, run_extract, shard_path
from ditlab.train.data_source import build_data_source
from ditlab.utils.distributed import DistInfo
from ditlab.vae import load_codec

diffusers = pytest.importorskip("diffusers")

from test_images import make_folder  # noqa: E402
from test_vae import tiny_vae  # noqa: E402


@pytest.fixture
def setup(tmp_path):
    tiny_vae().save_pretrained(tmp_path / "vae")
    images = make_folder(tmp_path / "images", per_class=5, size=(24, 16))
    return tmp_path, images, str(tmp_path / "vae")


def config(images, vae, out, **kw) -> ExtractConfig:
    return ExtractConfig(data=str(images), out=str(out), vae=vae, image_size=16, shard_size=3, batch_size=2,
                         dtype="float32", device="cpu", progress=False, **kw)


def shards(folder, n=4):
    return [load_file(str(shard_path(folder, k))) for k in range(n)]


def test_shards_hold_posterior_of_image_and_flip(setup):
    tmp, images, vae = setup
    index = json.loads(run_extract(config(images, vae, tmp / "lat")).read_text())
    assert index["num_images"] == 10 and index["latent_shape"] == [4, 8, 8] and len(index["shards"]) == 4
    assert index["classes"] == ["ant", "cat"] and index["scaling_factor"] == 0.5
    first = load_file(str(shard_path(tmp / "lat", 0)))
    assert first["mean"].shape == (3, 2, 4, 8, 8) and first["labels"].tolist() == [0, 0, 0]
    image, _ = ImageFolder(images, 16).load(1)
    x = to_model_tensor(image[None])
    mean, std = load_codec(vae).encode_posterior(torch.cat([x, x.flip(-1)]))
    torch.testing.assert_close(first["mean"][1], mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(first["std"][1], std, atol=1e-5, rtol=1e-4)


def test_crash_then_rerun_equals_uninterrupted_run(setup):
    tmp, images, vae = setup
    run_extract(config(images, vae, tmp / "straight"))

    def crash_after_shard_1(k: int) -> None:
        if k == 1:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        run_extract(config(images, vae, tmp / "crashed"), on_shard=crash_after_shard_1)
    assert not (tmp / "crashed" / "index.json").exists()
    assert sorted(p.name for p in (tmp / "crashed").iterdir()) == ["extract.json", "shard_000000.safetensors",
                                                                   "shard_000001.safetensors"]  # no temp files
    redone: list[int] = []
    run_extract(config(images, vae, tmp / "crashed"), on_shard=redone.append)
    assert redone == [2, 3]  # finished shards are not redone
    for a, b in zip(shards(tmp / "straight"), shards(tmp / "crashed"), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ranks_split_shards_and_rerun_with_other_settings_is_refused(setup):
    tmp, images, vae = setup
    cfg = config(images, vae, tmp / "lat")
    assert extract_latents(cfg, rank=0, world_size=2)["written"] == [0, 2]
    assert extract_latents(cfg, rank=1, world_size=2)["written"] == [1, 3]
    assert extract_latents(cfg, rank=0, world_size=1)["written"] == []
    with pytest.raises(ValueError, match="image_size: 16 -> 8"):
        extract_latents(ExtractConfig(**{**cfg.__dict__, "image_size": 8}))


def test_bad_image_stops_or_is_skipped(setup):
    tmp, images, vae = setup
    (images / "cat" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(BadImageError, match="broken.png"):
        run_extract(config(images, vae, tmp / "strict"))
    index = json.loads(run_extract(config(images, vae, tmp / "lenient", skip_bad=True)).read_text())
    assert index["num_images"] == 10 and index["num_skipped"] == 1 and index["skipped"][0].endswith("broken.png")


def test_training_source_draws_fresh_reproducible_latents(setup):
    tmp, images, vae = setup
    run_extract(config(images, vae, tmp / "lat"))
    info = DistInfo(0, 0, 1, torch.device("cpu"))
    source = build_data_source(SimpleNamespace(data=f"latents:{tmp / 'lat'}", seed=0, image_size=16), info)
    assert (source.size, source.channels, source.input_size, source.num_classes) == (10, 4, 8, 2)
    x3, y3 = source.batch([4, 0, 9], step=3)
    again, _ = source.batch([4, 0, 9], step=3)
    x4, _ = source.batch([4, 0, 9], step=4)
    assert torch.equal(x3, again) and not torch.equal(x3, x4) and y3.tolist() == [0, 0, 1]
    # By hand for example 0: flip bit then ε from the (seed, step, index) generator.
    ds = LatentShards(tmp / "lat")
    mean, std, _ = ds.read(0)
    from ditlab.data.latents import draw_seed

    g = torch.Generator().manual_seed(draw_seed(0, 3, 0))
    flip = int(torch.randint(0, 2, (), generator=g))
    torch.testing.assert_close(x3[1], mean[flip] + std[flip] * torch.randn((4, 8, 8), generator=g))


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="extract-latents"):
        LatentShards(tmp_path)


TINY_BACKBONES = {  # (model, model_args, objective): every family trains on latent shards
    "DiT": ("DiT", {"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 4}, "diffusion"),
    "MDTv2": ("MDTv2", {"depth": 3, "hidden_size": 32, "num_heads": 2, "patch_size": 4, "decode_layer": 1}, "mdt"),
    "DDT": ("DDT", {"hidden_size": 32, "num_groups": 2, "num_blocks": 2, "num_encoder_blocks": 1, "patch_size": 4},
            "flow"),
    "DiffuSSM": ("DiffuSSM", {"depth": 1, "hidden_size": 32}, "diffusion"),
}


@pytest.mark.parametrize("family", list(TINY_BACKBONES))
def test_ditlab_train_reads_the_shards(setup, family):
    from ditlab.train import TrainConfig, train

    tmp, images, vae = setup
    run_extract(config(images, vae, tmp / "lat"))
    model, model_args, objective = TINY_BACKBONES[family]
    cfg = TrainConfig(run_dir=str(tmp / "run"), model=model, data=f"latents:{tmp / 'lat'}", steps=2, global_batch=4,
                      model_args=model_args, objective=objective, sample_every=0, sample_steps="ddim2",
                      progress=False, device="cpu", log_every=1)
    result = train(cfg)
    assert result.step == 2 and torch.isfinite(torch.tensor(result.final_loss))
    assert (tmp / "run" / "samples" / "step_0000002.png").is_file()  # the grid is decoded by the lazy VAE


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_torchrun_two_ranks_write_the_same_shards(setup):
    import os
    import subprocess
    import sys

    tmp, images, vae = setup
    run_extract(config(images, vae, tmp / "one"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ditlab",
           "extract-latents", "--data", str(images), "--out", str(tmp / "two"), "--vae", vae, "--image-size", "16",
           "--shard-size", "3", "--batch-size", "2", "--dtype", "float32", "--device", "cpu", "--progress", "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp / "two" / "index.json").read_text())["num_images"] == 10
    for a, b in zip(shards(tmp / "one"), shards(tmp / "two"), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_fid_on_latent_data_uses_the_decoded_image_size(setup, monkeypatch):
    """The FID reference is computed at the extraction's image size (16), not the latent side (8), and the
    decoded samples scored against it have that size."""
    import ditlab.eval.score as score_mod
    from ditlab.train import TrainConfig, train

    tmp, images, vae = setup
    run_extract(config(images, vae, tmp / "lat"))
    asked, scored = [], []
    monkeypatch.setattr(score_mod, "reference_statistics", lambda name, **kw: asked.append(kw) or {
        "mu": np.zeros(8), "sigma": np.eye(8)})
    monkeypatch.setattr(score_mod, "score_images", lambda images, ref, **kw: scored.append(images.shape) or {
        "fid": 1.0})
    cfg = TrainConfig(run_dir=str(tmp / "run"), model="DiT", data=f"latents:{tmp / 'lat'}", steps=1, global_batch=2,
                      model_args=dict(TINY_BACKBONES["DiT"][1]), sample_every=-1, sample_steps="ddim2",
                      progress=False, device="cpu", log_every=1, fid_every=1, fid_samples=2,
                      fid_reference=str(tmp / "ref.npz"))
    train(cfg)
    assert [a["image_size"] for a in asked] == [16] and scored == [(2, 16, 16, 3)]
