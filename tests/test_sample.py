"""ditlab sample: per-index seeds, chunked resume, 1 vs 2 processes identical, ADM npz + PNGs + grid."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ditlab.sample as sample_mod
from ditlab.imageio import to_uint8
from ditlab.models.registry import create_model
from ditlab.objectives import DiffusionConfig
from ditlab.sample import SampleConfig, labels_for, load_sampling_model, run_sample
from ditlab.sampling import DDIM, Euler, Guidance, generate_latents
from ditlab.train.checkpoint import save_weights

TINY = dict(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=3)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("DiT", **TINY)
    with torch.no_grad():  # the zero-initialised output layers would make every image the same
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "step_0000010.safetensors"
    save_weights(path, model.state_dict(), {"family": "DiT", "config": dataclasses.asdict(model.config),
                                            "diffusion": dataclasses.asdict(DiffusionConfig()), "step": 10})
    return path


def cfg(checkpoint, out, **kw) -> SampleConfig:
    base = dict(checkpoint=str(checkpoint), out=str(out), num_images=5, batch_size=2, sampler_steps="ddim2",
                cfg_scale=1.5, vae="identity", progress=False, device="cpu")
    return SampleConfig(**{**base, **kw})


def read(path):
    with np.load(path) as f:
        return f["arr_0"], f["arr_1"]


def test_npz_holds_per_index_seeded_images_pngs_and_grid(checkpoint, tmp_path):
    out = run_sample(cfg(checkpoint, tmp_path / "s.npz", png_dir=str(tmp_path / "png"), grid=str(tmp_path / "g.png")))
    images, labels = read(out)
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8 and labels.tolist() == [0, 1, 2, 0, 1]
    model, diffusion = load_sampling_model(checkpoint)
    # Images 2 and 3 alone, in a batch of their own, with seeds 2 and 3: the same pixels.
    direct = generate_latents(model, diffusion, torch.tensor([2, 0]), DDIM(2), guidance=Guidance(1.5),
                              seeds=[2, 3])
    assert np.array_equal(images[2:4], to_uint8(direct))
    assert len(set(images.reshape(5, -1).sum(1).tolist())) > 1  # distinct images
    assert sorted(p.name for p in (tmp_path / "png").iterdir())[-1] == "000004.png"
    assert (tmp_path / "g.png").is_file() and not (tmp_path / "s.npz.parts").exists()
    with pytest.raises(ValueError, match="already exists"):
        run_sample(cfg(checkpoint, tmp_path / "s.npz"))


def test_crashed_run_resumes_without_redoing_chunks(checkpoint, tmp_path, monkeypatch):
    straight, _ = read(run_sample(cfg(checkpoint, tmp_path / "a.npz")))
    real = sample_mod.sample_chunk
    calls: list[int] = []

    def crash_on_third(model, diffusion, codec, config, indices):
        calls.append(indices.start)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(model, diffusion, codec, config, indices)

    monkeypatch.setattr(sample_mod, "sample_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_sample(cfg(checkpoint, tmp_path / "b.npz"))
    assert not (tmp_path / "b.npz").exists()
    calls.clear()
    resumed, _ = read(run_sample(cfg(checkpoint, tmp_path / "b.npz")))
    assert calls == [4]  # only the chunk that had not been written
    assert np.array_equal(straight, resumed)


def test_resume_with_different_settings_is_refused(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(sample_mod, "pack_outputs", lambda *a: None)  # leave the parts behind
    run_sample(cfg(checkpoint, tmp_path / "c.npz"))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="cfg_scale: 1.5 -> 4.0"):
        run_sample(cfg(checkpoint, tmp_path / "c.npz", cfg_scale=4.0))


def test_label_modes():
    assert labels_for(range(4), "balanced", 3, 0).tolist() == [0, 1, 2, 0]
    rand = labels_for(range(50), "random", 7, 0)
    assert torch.equal(rand[10:20], labels_for(range(10, 20), "random", 7, 0)) and 0 <= rand.min() <= rand.max() < 7
    assert labels_for(range(3), "2", 3, 0).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="not a class"):
        labels_for(range(3), "5", 3, 0)
    with pytest.raises(ValueError, match="labels='odd'"):
        SampleConfig(labels="odd")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_give_the_same_npz_as_one(checkpoint, tmp_path):
    one, labels_one = read(run_sample(cfg(checkpoint, tmp_path / "one.npz")))
    args = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "two.npz"), "--num-images", "5",
            "--batch-size", "2", "--sampler-steps", "ddim2", "--cfg-scale", "1.5", "--vae", "identity",
            "--progress", "false", "--device", "cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ditlab",
           "sample", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    two, labels_two = read(tmp_path / "two.npz")
    assert np.array_equal(one, two) and np.array_equal(labels_one, labels_two)


def test_flow_checkpoint_samples_with_the_flow_sampler(tmp_path):
    from ditlab.objectives.flow import FlowConfig

    torch.manual_seed(0)
    model = create_model("DiT", **TINY, learn_sigma=False)
    path = tmp_path / "flow.safetensors"
    save_weights(path, model.state_dict(), {"family": "DiT", "config": dataclasses.asdict(model.config),
                                            "objective": "flow", "flow": dataclasses.asdict(FlowConfig())})
    loaded, objective = load_sampling_model(path)
    assert isinstance(objective, FlowConfig)
    images, _ = read(run_sample(cfg(path, tmp_path / "f.npz", num_images=2, sampler_steps="euler2")))
    direct = generate_latents(loaded, objective, torch.tensor([0, 1]), Euler(2), guidance=Guidance(1.5),
                              seeds=[0, 1])
    assert np.array_equal(images, to_uint8(direct))


def test_attention_backend_is_a_speed_option_not_part_of_the_identity(checkpoint, tmp_path):
    sdpa = read(run_sample(cfg(checkpoint, tmp_path / "a.npz")))[0]
    explicit_config = cfg(checkpoint, tmp_path / "b.npz", attention="explicit")
    assert explicit_config.identity() == cfg(checkpoint, tmp_path / "b.npz").identity()
    explicit = read(run_sample(explicit_config))[0]
    assert np.abs(sdpa.astype(int) - explicit.astype(int)).max() <= 1  # the same images up to rounding
    with pytest.raises(ValueError, match="attention='flash' is not one of sdpa, explicit, flex"):
        cfg(checkpoint, tmp_path / "c.npz", attention="flash")
