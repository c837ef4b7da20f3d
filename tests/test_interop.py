"""diffusers interop, ``ditlab convert`` and Hub ids: tiny random models, folders made here, no network."""

from __future__ import annotations

import json
import math

import diffusers
import numpy as np
import pytest
import torch

import ditlab
from ditlab import cli
from ditlab.interop.convert import ConvertConfig, run_convert
from ditlab.interop.diffusers_dit import diffusion_from_scheduler, export_diffusers_dit, load_diffusers_dit
from ditlab.models.diffusers_keys import diffusers_config_for, diffusers_to_dit, dit_to_diffusers
from ditlab.models.layers import timestep_embedding
from ditlab.models.official import load_official_ddt, load_official_dit
from ditlab.objectives import DiffusionConfig
from ditlab.sample import load_sampling_model
from ditlab.sampling import DDIM, Guidance, generate_latents
from ditlab.train.checkpoint import load_weights, save_weights
from ditlab.utils.hub import HubId, parse_hub_id, resolve_weights
from helpers import SMALL_MODELS, golden, golden_state_dict

# Measured on this tiny model (see README "diffusers"): with diffusers' timestep frequencies set to the
# official ones, its transformer equals ditlab's DiT to 0 (SDPA) / 1e-6 (explicit softmax, norm_eps 1e-5).
PARITY_ATOL = 1e-5
TINY = dict(input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2)


def random_dit(num_classes: int = 10, seed: int = 0, **kw) -> ditlab.DiT:
    """A DiT with every weight random (the official init zeroes adaLN and the output, hiding most errors)."""
    model = ditlab.create_model("DiT", **{**TINY, "num_classes": num_classes, **kw}).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1] if p.ndim > 1 else 32))
    return model


def tiny_vae() -> diffusers.AutoencoderKL:
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        block_out_channels=[2, 4], down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2, sample_size=16,
    ).eval()


def diffusers_transformer(model: ditlab.DiT, norm_eps: float = 1e-6) -> diffusers.DiTTransformer2DModel:
    config = {k: v for k, v in diffusers_config_for(model.config).items() if not k.startswith("_")}
    net = diffusers.DiTTransformer2DModel(**{**config, "norm_eps": norm_eps}).eval()
    net.load_state_dict(dit_to_diffusers(model.state_dict()), strict=True)  # pos_embed: a non-persistent buffer
    return net


def official_time_frequencies(net: diffusers.DiTTransformer2DModel) -> None:
    """Make diffusers' Timesteps divide by half (the official code) instead of half - 1."""
    for block in net.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0


def inputs(n: int = 6, classes: int = 10):
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(n, 4, 8, 8, generator=gen), torch.tensor([0, 1, 10, 250, 500, 999])[:n],
            torch.randint(0, classes, (n,), generator=gen))


# ---- key map ----


def test_key_map_round_trips_and_fills_every_diffusers_key():
    model = random_dit()
    mapped = dit_to_diffusers(model.state_dict())
    assert set(mapped) == set(diffusers_transformer(model).state_dict())
    back = diffusers_to_dit(mapped)
    assert set(back) == set(model.state_dict()) - {"pos_embed"}
    for key, value in back.items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_unequal_per_block_embedders_are_refused_in_one_line():
    mapped = dit_to_diffusers(random_dit().state_dict())
    key = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.weight"
    mapped[key] = mapped[key] + 1
    with pytest.raises(ValueError, match="block 1 of the diffusers model has its own") as err:
        diffusers_to_dit(mapped)
    assert "\n" not in str(err.value)


def test_configs_diffusers_cannot_hold_are_refused():
    with pytest.raises(ValueError, match="only adaLN-Zero"):
        diffusers_config_for(ditlab.create_model("DiT", **TINY, block="in-context").config)
    with pytest.raises(ValueError, match="MLP ratio of 4"):
        diffusers_config_for(ditlab.create_model("DiT", **TINY, mlp_ratio=2.0).config)


# ---- numerics: the measured difference and its cause ----


@torch.no_grad()
def test_diffusers_transformer_equals_ditlab_but_for_its_timestep_frequencies():
    model = random_dit()
    x, t, y = inputs()
    ours = model(x, t, y)
    net = diffusers_transformer(model)
    theirs = net(x, timestep=t, class_labels=y).sample
    # t = 0: cos(0)/sin(0) do not depend on the frequencies, so both embeddings agree.
    torch.testing.assert_close(theirs[0], ours[0], atol=PARITY_ATOL, rtol=0)
    # t > 0: diffusers' downscale_freq_shift=1 (frequencies over half-1, not half) changes the output.
    assert (theirs[3:] - ours[3:]).abs().amax() > 1e-2
    official_time_frequencies(net)
    torch.testing.assert_close(net(x, timestep=t, class_labels=y).sample, ours, atol=PARITY_ATOL, rtol=0)
    hub_eps = diffusers_transformer(model, norm_eps=1e-5)  # the Hub copies' pre-MLP LayerNorm eps
    official_time_frequencies(hub_eps)
    torch.testing.assert_close(hub_eps(x, timestep=t, class_labels=y).sample, ours, atol=PARITY_ATOL, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("name", ["dit_tiny.safetensors", "dit_tiny_p4.safetensors"])
def test_diffusers_on_official_golden_weights_differs_only_by_timestep_frequencies(name):
    """The official code's own outputs (golden files): diffusers misses them by ~4e-2 through Timesteps alone."""
    entry, tensors = golden(name)
    model = ditlab.create_model("DiT", **entry["constructor_kwargs"]).eval()
    model.load_state_dict(golden_state_dict(tensors))
    net = diffusers_transformer(model, norm_eps=1e-5)  # as the Hub copies are configured
    x, t, y, official = (tensors[k] for k in ("input.x", "input.t", "input.y", "output.forward"))
    assert (net(x, timestep=t, class_labels=y).sample - official).abs().amax() > 5e-3  # measured: 3.7e-2, 4.3e-2
    official_time_frequencies(net)
    torch.testing.assert_close(net(x, timestep=t, class_labels=y).sample, official, **entry["tolerance"])


@torch.no_grad()
def test_diffusers_timestep_option_makes_ditlab_compute_what_diffusers_does(tmp_path):
    """timestep_freq_shift=1: diffusers' frequencies bit for bit, and its transformer's outputs both ways."""
    t = torch.arange(1000)
    theirs_features = diffusers.models.embeddings.get_timestep_embedding(t, 256, flip_sin_to_cos=True,
                                                                         downscale_freq_shift=1)
    assert torch.equal(timestep_embedding(t, 256, freq_shift=1), theirs_features)
    assert not torch.equal(timestep_embedding(t, 256), theirs_features)  # the default stays official
    model = random_dit(num_classes=1000, timestep_freq_shift=1)
    assert set(model.state_dict()) == set(random_dit().state_dict())  # no weights depend on it
    x, t, y = inputs()
    ours = model(x, t, y)
    # ditlab -> diffusers, as shipped (no patch): equal to float32 rounding (measured: 0).
    torch.testing.assert_close(diffusers_transformer(model)(x, timestep=t, class_labels=y).sample, ours,
                               atol=1e-6, rtol=0)
    pipe = diffusers.DiTPipeline.from_pretrained(str(export_diffusers_dit(model, DiffusionConfig(), tmp_path / "p")),
                                                 vae=tiny_vae())
    torch.testing.assert_close(pipe.transformer(x, timestep=t, class_labels=y).sample, ours, atol=1e-6, rtol=0)
    # ... and back: the folder records the convention; a flag overrides it.
    assert load_diffusers_dit(tmp_path / "p").model.config == model.config
    official = load_diffusers_dit(tmp_path / "p", timesteps="official").model
    assert official.config.timestep_freq_shift == 0 and (official(x, t, y) - ours).abs().amax() > 1e-2


def test_bad_timestep_conventions_are_one_line(pipeline_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="timestep_freq_shift=2"):
        random_dit(timestep_freq_shift=2)
    _, folder, _ = pipeline_dir
    with pytest.raises(ValueError, match="timesteps='ddpm'; allowed: official .* or diffusers"):
        load_diffusers_dit(folder, timesteps="ddpm")
    _official_dit(tmp_path)
    argv = ["convert", str(tmp_path / "official.pt"), str(tmp_path / "x.safetensors"), "--timesteps", "diffusers"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--timesteps applies to diffusers sources" in err and err.count("\n") == 1


# ---- ditlab -> diffusers -> ditlab ----


@pytest.fixture
def pipeline_dir(tmp_path):
    """A ditlab DiT (1000 classes, as DiTPipeline's null label 1000 needs) exported with a tiny VAE."""
    model = random_dit(num_classes=1000)
    vae_dir = tmp_path / "tiny-vae"
    tiny_vae().save_pretrained(vae_dir)
    diffusion = DiffusionConfig(learn_sigma=True)
    return model, export_diffusers_dit(model, diffusion, tmp_path / "pipe", vae=str(vae_dir)), diffusion


@torch.no_grad()
def test_exported_folder_loads_and_samples_in_dit_pipeline(pipeline_dir):
    model, folder, _ = pipeline_dir
    pipe = diffusers.DiTPipeline.from_pretrained(str(folder))
    assert isinstance(pipe.scheduler, diffusers.DDIMScheduler) and pipe.scheduler.config.beta_end == 0.02
    images = pipe(class_labels=[1, 7], num_inference_steps=2, guidance_scale=1.5, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    x, t, y = inputs()
    official_time_frequencies(pipe.transformer)
    torch.testing.assert_close(pipe.transformer(x, timestep=t, class_labels=y).sample, model(x, t, y),
                               atol=PARITY_ATOL, rtol=0)


@torch.no_grad()
def test_dit_pipeline_is_ditlab_ddim_with_cfg_on_all_latent_channels(pipeline_dir):
    """Same seeds, official timestep frequencies, N dividing 1000 (diffusers strides 1000 // N, ditlab ddimN the
    smallest stride giving N steps): DiTPipeline's images = ditlab's DDIM with CFG on all 4 latent channels."""
    model, folder, diffusion = pipeline_dir
    pipe = diffusers.DiTPipeline.from_pretrained(str(folder))
    official_time_frequencies(pipe.transformer)
    labels, seeds = [3, 999], [5, 6]
    theirs = pipe(class_labels=labels, num_inference_steps=4, guidance_scale=4.0, output_type="pt",
                  generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    latents = generate_latents(model, diffusion, torch.tensor(labels), DDIM(4),
                               guidance=Guidance(4.0, guided_channels=None), seeds=seeds)
    ours = (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(theirs, ours, atol=PARITY_ATOL, rtol=0)


def test_exported_folder_reads_back_as_the_same_dit_scheduler_and_vae(pipeline_dir):
    model, folder, diffusion = pipeline_dir
    loaded = load_diffusers_dit(folder)
    assert loaded.model.config == model.config and loaded.diffusion == diffusion
    assert loaded.vae == folder / "vae"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key  # pos_embed recomputed exactly
    via_sample, sample_diffusion = load_sampling_model(folder / "transformer")  # a bare transformer folder too
    assert torch.equal(via_sample.final_layer.linear.weight, model.final_layer.linear.weight)
    assert sample_diffusion == DiffusionConfig(learn_sigma=True)


@torch.no_grad()
def test_a_diffusers_made_pipeline_loads_into_ditlab(tmp_path):
    torch.manual_seed(1)
    net = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                          out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                          num_embeds_ada_norm=10).eval()
    with torch.no_grad():  # diffusers zero-inits nothing here, but make sure the output is not trivial
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for block in net.transformer_blocks[1:]:  # diffusers' per-block embedder copies, equal as after conversion
            block.norm1.emb.load_state_dict(net.transformer_blocks[0].norm1.emb.state_dict())
    scheduler = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    diffusers.DiTPipeline(transformer=net, vae=tiny_vae(), scheduler=scheduler).save_pretrained(tmp_path / "p")
    net.save_pretrained(tmp_path / "bin", safe_serialization=False)  # a bare transformer folder, .bin weights
    loaded = load_diffusers_dit(tmp_path / "p")
    assert loaded.diffusion == DiffusionConfig(schedule="cosine", learn_sigma=True)
    x, t, y = inputs()
    # Weights trained in diffusers: --timesteps diffusers gives diffusers' own outputs (measured: 7e-6, all of it
    # from diffusers' default pre-MLP LayerNorm eps 1e-5 against the official 1e-6; 0 with norm_eps=1e-6).
    assert cli.main(["convert", str(tmp_path / "p"), str(tmp_path / "d.safetensors"), "--timesteps", "diffusers"]) == 0
    native, _ = load_sampling_model(tmp_path / "d.safetensors")
    torch.testing.assert_close(native(x, t, y), net(x, timestep=t, class_labels=y).sample, atol=PARITY_ATOL, rtol=0)
    # By default (official-trained weights, as the Hub's): the official frequencies.
    official_time_frequencies(net)
    expected = net(x, timestep=t, class_labels=y).sample
    torch.testing.assert_close(loaded.model(x, t, y), expected, atol=PARITY_ATOL, rtol=0)
    torch.testing.assert_close(load_diffusers_dit(tmp_path / "bin").model(x, t, y), expected, atol=PARITY_ATOL, rtol=0)


@pytest.mark.parametrize("settings", [dict(learn_sigma=False, sigma_small=True), dict(learn_sigma=False),
                                      dict(learn_sigma=True), dict(learn_sigma=False, schedule="cosine",
                                                                   prediction="v", sigma_small=True)])
def test_scheduler_config_round_trips_the_variance(settings):
    from ditlab.interop.diffusers_dit import scheduler_config_for

    diffusion = DiffusionConfig(**settings)
    written = scheduler_config_for(diffusion)
    assert diffusion_from_scheduler(written, learn_sigma=diffusion.learn_sigma) == diffusion


def test_scheduler_settings_map_or_are_refused():
    ddim = {"_class_name": "DDIMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
            "num_train_timesteps": 1000, "prediction_type": "epsilon"}
    assert diffusion_from_scheduler(ddim, learn_sigma=True) == DiffusionConfig()
    assert diffusion_from_scheduler({**ddim, "num_train_timesteps": 500, "beta_start": 0.0002, "beta_end": 0.04,
                                     "prediction_type": "v_prediction", "variance_type": "fixed_small"},
                                    learn_sigma=False) == DiffusionConfig(num_timesteps=500, prediction="v",
                                                                          learn_sigma=False, sigma_small=True)
    for bad, match in (({"beta_schedule": "scaled_linear"}, "not one of ditlab's schedules"),
                       ({"beta_end": 0.012}, "not one of ditlab's schedules"),
                       ({"variance_type": "learned"}, "variance_type='learned'"),
                       ({"prediction_type": "flow"}, "prediction_type='flow'")):
        with pytest.raises(ValueError, match=match):
            diffusion_from_scheduler({**ddim, **bad}, learn_sigma=True)


def test_ditlab_sample_runs_on_a_diffusers_folder_and_its_vae(pipeline_dir, tmp_path):
    from ditlab.sample import SampleConfig, run_sample

    _, folder, _ = pipeline_dir
    out = run_sample(SampleConfig(checkpoint=str(folder), vae=str(folder), out=str(tmp_path / "s.npz"), num_images=2,
                                  batch_size=2, sampler_steps="ddim2", progress=False, device="cpu"))
    with np.load(out) as f:
        assert f["arr_0"].shape == (2, 16, 16, 3) and f["arr_0"].dtype == np.uint8


def test_legacy_transformer2d_class_name_loads(pipeline_dir):
    model, folder, _ = pipeline_dir
    config_file = folder / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    del config["norm_eps"]
    config_file.write_text(json.dumps({**config, "_class_name": "Transformer2DModel", "cross_attention_dim": None}))
    assert torch.equal(load_diffusers_dit(folder).model.blocks[1].attn.qkv.weight, model.blocks[1].attn.qkv.weight)


# ---- Hub ids through a cache made here ----


@pytest.mark.parametrize("source, parsed", [
    ("facebook/DiT-XL-2-256", HubId("facebook/DiT-XL-2-256", None, "")),
    ("facebook/DiT-XL-2-256@v1.0/vae", HubId("facebook/DiT-XL-2-256", "v1.0", "vae")),
    ("me/repo/weights/DiT-XL-2-256x256.pt", HubId("me/repo", None, "weights/DiT-XL-2-256x256.pt")),
    ("./runs/x", None), ("/abs/path", None), ("~/x/y", None), ("single", None),
])
def test_hub_id_syntax(source, parsed):
    assert parse_hub_id(source) == parsed
    assert parsed is None or parsed.is_file == source.endswith(".pt")


def fake_hub_repo(cache, repo: str, files: dict) -> None:
    """The huggingface_hub cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for rel, src in files.items():
        dst = root / "snapshots" / commit / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            import shutil

            shutil.copytree(src, dst)
        else:
            dst.write_bytes(src.read_bytes())


def test_hub_ids_resolve_offline_from_the_cache(pipeline_dir, tmp_path, monkeypatch):
    from ditlab.vae import load_autoencoder_kl

    model, folder, _ = pipeline_dir
    save_weights(tmp_path / "w.safetensors", model.state_dict(),
                 {"family": "DiT", "config": json.loads(json.dumps(model.config.__dict__))})
    fake_hub_repo(tmp_path / "hub", "me/tiny-dit", {"": folder, "ckpt/w.safetensors": tmp_path / "w.safetensors"})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_diffusers_dit("me/tiny-dit", allow_download=True)  # offline: the cache, never the network
    assert torch.equal(loaded.model.blocks[0].mlp.fc1.weight, model.blocks[0].mlp.fc1.weight)
    assert load_autoencoder_kl("me/tiny-dit/vae").config.latent_channels == 4
    assert load_autoencoder_kl("me/tiny-dit").config.latent_channels == 4  # a pipeline's vae/
    net, _ = load_sampling_model("me/tiny-dit/ckpt/w.safetensors")
    assert torch.equal(net.pos_embed, model.pos_embed)
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set") as err:
        resolve_weights("me/not-cached", "checkpoint", allow_download=True)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no 'nothing' in its cached snapshot"):
        resolve_weights("me/tiny-dit/nothing")


@pytest.mark.parametrize("text", ["runs/x/checkpoints/step_1.safetensors", "./me/w.pt", "../me/w.pt", "me/x/"])
def test_a_mistyped_local_path_is_never_looked_up_on_the_hub(tmp_path, monkeypatch, text):
    import ditlab.utils.hub as hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    monkeypatch.setattr(hub, "_download", lambda *a: pytest.fail("the Hub was asked"))
    with pytest.raises(FileNotFoundError, match=rf"^checkpoint {text} does not exist$"):
        resolve_weights(text, "checkpoint", allow_download=True)


# ---- ditlab convert ----


def _official_dit(tmp_path):
    model = random_dit(num_classes=10, seed=4)
    torch.save(model.state_dict(), tmp_path / "official.pt")
    return model


def test_convert_keeps_the_codec_a_checkpoint_records(pipeline_dir, tmp_path):
    from ditlab.sample import recorded_vae

    model, folder, _ = pipeline_dir
    pixel = tmp_path / "pixel.safetensors"
    save_weights(pixel, model.state_dict(), {"family": "DiT", "vae": "identity",
                                             "config": json.loads(json.dumps(model.config.__dict__))})
    run_convert(ConvertConfig(source=str(pixel), out=str(tmp_path / "again.safetensors")))
    assert recorded_vae(tmp_path / "again.safetensors") == "identity"
    run_convert(ConvertConfig(source=str(folder), out=str(tmp_path / "from_pipe.safetensors")))
    assert recorded_vae(tmp_path / "from_pipe.safetensors") == str((folder / "vae").absolute())


def test_convert_official_dit_through_ditlab_and_diffusers_and_back(tmp_path, capsys):
    model = _official_dit(tmp_path)
    args = ["--model-args", '{"num_heads": 2}']
    assert cli.main(["convert", str(tmp_path / "official.pt"), str(tmp_path / "d.safetensors"), *args]) == 0
    assert cli.main(["convert", str(tmp_path / "d.safetensors"), str(tmp_path / "pipe")]) == 0
    assert cli.main(["convert", str(tmp_path / "pipe"), str(tmp_path / "back.safetensors")]) == 0
    assert cli.main(["convert", str(tmp_path / "back.safetensors"), str(tmp_path / "back.pt")]) == 0
    printed = capsys.readouterr().out
    assert "converted" in printed and "no --vae" in printed and "guidance_scale=1" in printed
    state, meta = load_weights(tmp_path / "d.safetensors")
    assert meta["family"] == "DiT" and meta["objective"] == "diffusion" and meta["diffusion"]["learn_sigma"]
    back = load_official_dit(tmp_path / "back.pt", num_heads=2)
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_convert_mdt_and_ddt_official_round_trip(tmp_path):
    mdt = ditlab.create_model("MDTv2", **SMALL_MODELS["MDTv2"]).eval()
    torch.save(mdt.state_dict(), tmp_path / "mdt.pt")
    sizes = {k: v for k, v in SMALL_MODELS["MDTv2"].items() if k not in ("input_size", "num_classes")}
    run_convert(ConvertConfig(str(tmp_path / "mdt.pt"), str(tmp_path / "mdt.safetensors"), model="MDTv2",
                              model_args=sizes))
    run_convert(ConvertConfig(str(tmp_path / "mdt.safetensors"), str(tmp_path / "mdt2.pt")))
    assert load_weights(tmp_path / "mdt.safetensors")[1]["objective"] == "mdt"
    again = torch.load(tmp_path / "mdt2.pt", weights_only=True)
    assert all(torch.equal(again[k], v) for k, v in mdt.state_dict().items())

    ddt = ditlab.create_model("DDT", **SMALL_MODELS["DDT"]).eval()
    torch.save({"state_dict": {f"ema_denoiser.{k}": v for k, v in ddt.state_dict().items()}}, tmp_path / "d.ckpt")
    _, notes = run_convert(ConvertConfig(str(tmp_path / "d.ckpt"), str(tmp_path / "ddt.safetensors"),
                                         model_args={"num_encoder_blocks": 2}))  # family read off the keys
    assert notes == [] and load_weights(tmp_path / "ddt.safetensors")[1]["objective"] == "flow"
    run_convert(ConvertConfig(str(tmp_path / "ddt.safetensors"), str(tmp_path / "back.ckpt")))
    back, _ = load_official_ddt(tmp_path / "back.ckpt", num_encoder_blocks=2)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ddt.state_dict().items())


@pytest.mark.parametrize("family, out, message", [
    ("DiffuSSM", "x.pt", "DiffuSSM has no released official code or weights"),
    ("MDTv2", "folder", "diffusers has no MDT pipeline"),
])
def test_convert_refuses_what_has_no_target_format(tmp_path, capsys, family, out, message):
    model = ditlab.create_model(family, **SMALL_MODELS[family])
    save_weights(tmp_path / "m.safetensors", model.state_dict(),
                 {"family": family, "config": json.loads(json.dumps(model.config.__dict__))})
    assert cli.main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_convert_bad_input_is_one_line(tmp_path, capsys):
    _official_dit(tmp_path)
    (tmp_path / "broken.pt").write_bytes(b"")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    flow_dit = random_dit()
    save_weights(tmp_path / "flow.safetensors", flow_dit.state_dict(),
                 {"family": "DiT", "config": json.loads(json.dumps(flow_dit.config.__dict__)), "objective": "flow"})
    official = str(tmp_path / "official.pt")
    for argv, message in (
        ([str(tmp_path / "broken.pt"), "x.safetensors"], "is not a readable checkpoint"),
        ([str(tmp_path / "nope.pt"), "x.safetensors"], "neither an existing file or folder nor a Hub id"),
        ([official, "x.txt"], "suffix '.txt' names no format"),
        ([official, "x.pt", "--model-args", '{"num_heads": 2}', "--vae", "v"], "--vae applies to the diffusers"),
        ([official, str(tmp_path / "taken"), "--model-args", '{"num_heads": 2}'], "already exists"),
        ([str(tmp_path / "flow.safetensors"), str(tmp_path / "f")], "no DiTPipeline scheduler"),
    ):
        assert cli.main(["convert", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
