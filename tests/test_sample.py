"""ditlab sample: per-index seeds, chunked resume, 1 vs 2 processes identical, ADM npz + PNGs + grid."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ditlab.sample as sample_mod
from ditlab.imageio import to_uint8
from ditlab.models.registry import create_model
from ditlab.objectives import DiffusionConfig
from ditlab.sample import SampleConfig, labels_for, load_sampling_model, run_sample
from ditlab.sampling import DDIM, Euler, Guidance, ShareSpec, generate_latents
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

    def crash_on_third(model, diffusion, codec, config, indices, schedule=None):
        calls.append(indices.start)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(model, diffusion, codec, config, indices, schedule)

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


# ----------------------------------------------------------------------------
# Issue 14: refusals before any work, non-finite outputs, content-pinned resume, 1-channel checkpoints.


def _save_scaled(tmp_path, name, scale):
    """The tiny checkpoint with every weight of the final layer multiplied by ``scale`` (NaN or an overflow)."""
    torch.manual_seed(0)
    model = create_model("DiT", **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.final_layer.linear.weight.mul_(scale)
    path = tmp_path / name
    save_weights(path, model.state_dict(), {"family": "DiT", "config": dataclasses.asdict(model.config),
                                            "diffusion": dataclasses.asdict(DiffusionConfig()), "step": 10})
    return path


@pytest.mark.parametrize("setting", [dict(cfg_scale=float("nan")), dict(cfg_scale=float("inf")),
                                     dict(eta=float("nan")), dict(cfg_power=float("nan")),
                                     dict(cfg_interval=(float("nan"), 1.0)), dict(seed=-1)])
def test_non_finite_or_overflowing_settings_are_refused(tmp_path, setting):
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"^{name}="):
        cfg("unused.safetensors", tmp_path / "x.npz", **setting)


def test_non_finite_weights_or_outputs_fail_naming_checkpoint_and_chunk(tmp_path):
    nan = _save_scaled(tmp_path, "nan.safetensors", float("nan"))
    with pytest.raises(ValueError, match=r"nan\.safetensors has non-finite values \(NaN/inf\) in final_layer"):
        run_sample(cfg(nan, tmp_path / "a.npz"))
    assert not (tmp_path / "a.npz").exists() and not (tmp_path / "a.npz.parts").exists()
    huge = _save_scaled(tmp_path, "huge.safetensors", 1e38)  # finite weights whose outputs overflow to inf/NaN
    with pytest.raises(ValueError, match=r"huge\.safetensors gave non-finite images \(NaN/inf\) in chunk 0 "
                                         r"\(images 0\.\.1\)"):
        run_sample(cfg(huge, tmp_path / "b.npz"))
    assert not (tmp_path / "b.npz").exists()


def test_bad_output_paths_are_refused_before_any_work(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(sample_mod, "sample_chunk", lambda *a: pytest.fail("sampled before checking the outputs"))
    (tmp_path / "folder.npz").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [(dict(out=tmp_path / "folder.npz"), "folder.npz is a folder"),
             (dict(out=tmp_path / "afile" / "s.npz"), "afile is a file, not a folder"),
             (dict(png_dir=str(tmp_path / "afile")), "--png-dir .*afile is a file, not a folder"),
             (dict(grid=str(tmp_path / "folder.npz")), "--grid .*folder.npz is a folder"),
             (dict(grid=str(tmp_path / "grid.npz")), "Pillow cannot write .npz")]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            run_sample(cfg(checkpoint, **{"out": tmp_path / "s.npz", **change}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder.npz", checkpoint.name]  # no leftovers


def test_read_only_output_folder_is_refused_before_any_work(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(sample_mod, "sample_chunk", lambda *a: pytest.fail("sampled before checking the outputs"))
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    elif os.path.isdir("/proc/self"):  # root ignores permission bits; /proc refuses new files even to root
        folder = Path("/proc/self")
    else:
        pytest.skip("running as root without /proc: no folder here refuses writes")
    with pytest.raises(ValueError, match="folder of --out .* is not writable"):
        run_sample(cfg(checkpoint, folder / "s.npz"))
    with pytest.raises(ValueError, match="--png-dir .* is not writable"):
        run_sample(cfg(checkpoint, tmp_path / "s.npz", png_dir=str(folder / "png")))


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "neither a safetensors file nor a torch.save checkpoint"),
    (b"", "neither a safetensors file nor a torch.save checkpoint"),
    (None, "a zip file but not a torch.save checkpoint"),
    ("truncated", r"weights.pt is not a readable safetensors file"),
    ("bad header", r"weights.pt is not a readable safetensors file"),
])
def test_a_file_that_is_no_checkpoint_is_one_line(tmp_path, checkpoint, content, message):
    path = tmp_path / "weights.pt"
    if content is None:
        np.savez(path.open("wb"), arr_0=np.zeros(3))
    elif content == "truncated":
        path.write_bytes(checkpoint.read_bytes()[:-10])
    elif content == "bad header":
        data = bytearray(checkpoint.read_bytes())
        data[8:12] = b"{xx!"
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        run_sample(cfg(path, tmp_path / "s.npz"))


def test_resume_pins_the_checkpoint_by_content_not_path(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(sample_mod, "pack_outputs", lambda *a: None)  # leave the parts behind
    run_sample(cfg(checkpoint, tmp_path / "c.npz", num_images=2))
    monkeypatch.undo()
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes(checkpoint.read_bytes())
    assert read(run_sample(cfg(moved, tmp_path / "c.npz", num_images=2)))[0].shape[0] == 2  # same bytes: resumes
    monkeypatch.setattr(sample_mod, "pack_outputs", lambda *a: None)
    run_sample(cfg(checkpoint, tmp_path / "d.npz", num_images=2))
    monkeypatch.undo()
    other = _save_scaled(tmp_path, checkpoint.name + ".other", 2.0)
    other.replace(checkpoint)  # the same path now holds other weights
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        run_sample(cfg(checkpoint, tmp_path / "d.npz", num_images=2))


def test_options_that_do_not_apply_to_the_model_are_refused(checkpoint, tmp_path):
    cases = [(dict(guided_channels=4), "guided_channels=4 exceeds the model's 3 channels"),
             (dict(share="uniform:2"), "share needs a model with an encoder/decoder split \\(DDT\\); DiT has none"),
             (dict(cfg_interval=(0.3, 1.0)), "cfg_interval applies to flow-matching models"),
             (dict(eta=0.5, sampler_steps="4"), "eta=0.5 applies to DDIM only")]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            run_sample(cfg(checkpoint, tmp_path / "s.npz", **change))
    assert not (tmp_path / "s.npz.parts").exists()  # a refused option pins nothing: the fixed command runs
    assert read(run_sample(cfg(checkpoint, tmp_path / "s.npz", guided_channels=3)))[0].shape == (5, 8, 8, 3)


def test_flow_model_without_encoder_split_refuses_share_and_power(tmp_path):
    from ditlab.objectives.flow import FlowConfig

    model = create_model("DiT", **TINY, learn_sigma=False)
    path = tmp_path / "flow.safetensors"
    save_weights(path, model.state_dict(), {"family": "DiT", "config": dataclasses.asdict(model.config),
                                            "objective": "flow", "flow": dataclasses.asdict(FlowConfig())})
    with pytest.raises(ValueError, match="share needs a model with an encoder/decoder split"):
        run_sample(cfg(path, tmp_path / "a.npz", sampler_steps="euler2", share="uniform:2"))
    with pytest.raises(ValueError, match="cfg_power applies to diffusion models"):
        run_sample(cfg(path, tmp_path / "a.npz", sampler_steps="euler2", cfg_power=4.0))


def test_one_channel_checkpoint_samples_as_gray_rgb(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    model = create_model("DiT", **{**TINY, "in_channels": 1})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "digits.safetensors"
    save_weights(path, model.state_dict(), {"family": "DiT", "config": dataclasses.asdict(model.config),
                                            "diffusion": dataclasses.asdict(DiffusionConfig())})
    images, _ = read(run_sample(cfg(path, tmp_path / "g.npz", num_images=2, png_dir=str(tmp_path / "png"))))
    assert images.shape == (2, 8, 8, 3) and images.std() > 0
    assert np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / "000001.png")), images[1])


def test_a_job_that_failed_before_its_first_chunk_can_be_rerun_with_other_settings(checkpoint, tmp_path):
    with pytest.raises(ValueError):
        run_sample(cfg(checkpoint, tmp_path / "s.npz", sampler_steps="ddimx"))  # refused only by the sampler
    assert (tmp_path / "s.npz.parts" / "sample.json").is_file()
    assert read(run_sample(cfg(checkpoint, tmp_path / "s.npz")))[0].shape == (5, 8, 8, 3)
    with pytest.raises(ValueError, match="labels=7 is not a class of this model"):
        run_sample(cfg(checkpoint, tmp_path / "t.npz", labels="7"))


def test_a_checkpoint_folder_is_pinned_by_the_bytes_and_names_of_its_files(tmp_path):
    from ditlab.utils.integrity import path_sha256 as weights_sha256

    for name in ("a", "b"):
        (tmp_path / name / "transformer").mkdir(parents=True)
        (tmp_path / name / "transformer" / "config.json").write_text("{}")
        (tmp_path / name / "transformer" / "model.safetensors").write_bytes(b"weights")
    assert weights_sha256(tmp_path / "a") == weights_sha256(tmp_path / "b")  # moved or copied: the same job
    (tmp_path / "b" / "transformer" / "model.safetensors").write_bytes(b"weightz")
    assert weights_sha256(tmp_path / "a") != weights_sha256(tmp_path / "b")
    (tmp_path / "b" / "transformer" / "model.safetensors").rename(tmp_path / "b" / "transformer" / "other")
    (tmp_path / "b" / "transformer" / "other").write_bytes(b"weights")
    assert weights_sha256(tmp_path / "a") != weights_sha256(tmp_path / "b")  # same bytes under another name


def test_a_trained_digits_checkpoint_samples_without_naming_its_codec(tmp_path):
    from ditlab.sample import DEFAULT_VAE, recorded_vae
    from ditlab.train import TrainConfig, train

    run = train(TrainConfig(run_dir=str(tmp_path / "run"), model="DiT", steps=2, global_batch=4, ckpt_every=2,
                            sample_every=-1, progress=False, device="cpu",
                            model_args=dict(depth=1, hidden_size=32, num_heads=2, patch_size=4)))
    assert recorded_vae(run.last_checkpoint) == "identity"  # pixel-space digits: the run recorded its codec
    images, _ = read(run_sample(cfg(run.last_checkpoint, tmp_path / "s.npz", vae=None, num_images=2)))
    assert images.shape == (2, 16, 16, 3)  # one grey channel repeated to RGB
    assert recorded_vae(tmp_path) == DEFAULT_VAE  # a folder without vae/ is no pipeline with its own VAE


def test_dp_sharing_is_solved_once_per_job_and_gives_the_per_chunk_images(tmp_path, monkeypatch):
    from ditlab.objectives.flow import FlowConfig
    from ditlab.sampling import sharing_schedule

    torch.manual_seed(0)
    model = create_model("DDT", input_size=8, patch_size=2, hidden_size=32, num_blocks=3, num_encoder_blocks=2,
                         num_groups=2, in_channels=3, num_classes=3)
    with torch.no_grad():  # the zero-initialised output layers would make the encoder state irrelevant
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "ddt.safetensors"
    save_weights(path, model.state_dict(), {"family": "DDT", "config": dataclasses.asdict(model.config),
                                            "objective": "flow", "flow": dataclasses.asdict(FlowConfig())})
    solves = []
    monkeypatch.setattr(sample_mod, "sharing_schedule", lambda *a, **k: solves.append(1) or sharing_schedule(*a, **k))
    images, _ = read(run_sample(cfg(path, tmp_path / "a.npz", sampler_steps="euler6", share="dp:3")))
    assert len(solves) == 1  # 3 chunks, one DP calibration
    schedule = sharing_schedule(model.eval(), FlowConfig(), Euler(6), ShareSpec("dp", 3), Guidance(1.5))
    direct = generate_latents(model, FlowConfig(), torch.tensor([0, 1]), Euler(6), guidance=Guidance(1.5),
                              share=ShareSpec("dp", 3), seeds=[0, 1])
    assert np.array_equal(images[:2], to_uint8(direct)) and len(schedule) == 3
