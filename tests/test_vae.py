"""ditlab.vae: a tiny random AutoencoderKL saved with diffusers and reloaded through our loader."""

from __future__ import annotations

import pickle

import pytest
import torch

from ditlab.vae import AutoencoderKLCodec, IdentityCodec, load_autoencoder_kl, load_codec

diffusers = pytest.importorskip("diffusers")


def tiny_vae(scaling_factor: float = 0.5, shift_factor: float | None = None):
    """diffusers' own test size: two levels of 2 and 4 channels, 4 latent channels."""
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        block_out_channels=[2, 4], down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2, sample_size=16,
        scaling_factor=scaling_factor, shift_factor=shift_factor,
    ).eval()


@pytest.fixture
def vae_dir(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path / "vae", vae


def test_saved_vae_reloads_and_scales_by_its_config(vae_dir):
    path, vae = vae_dir
    codec = load_codec(str(path))
    assert isinstance(codec, AutoencoderKLCodec)
    assert (codec.scaling_factor, codec.channels, codec.downsample) == (0.5, 4, 2)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, std = codec.encode_posterior(x)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        expected_images = vae.decode(dist.mean).sample
    torch.testing.assert_close(mean, dist.mean * 0.5)
    torch.testing.assert_close(std, dist.std * 0.5)
    assert mean.shape == (2, 4, 8, 8)
    torch.testing.assert_close(codec.decode(mean), expected_images)  # decode divides the scale back out


def test_shift_factor_is_applied_both_ways(tmp_path):
    vae = tiny_vae(scaling_factor=2.0, shift_factor=0.25)
    codec = AutoencoderKLCodec("tiny", vae=vae)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    mean, _ = codec.encode_posterior(x)
    with torch.no_grad():
        raw = vae.encode(x).latent_dist.mean
        torch.testing.assert_close(mean, (raw - 0.25) * 2.0)
        torch.testing.assert_close(codec.decode(mean), vae.decode(raw).sample)


def test_encode_draws_from_the_posterior_with_a_generator(vae_dir):
    codec = load_codec(str(vae_dir[0]))
    x = torch.zeros(1, 3, 16, 16)
    mean, std = codec.encode_posterior(x)
    a = codec.encode(x, torch.Generator().manual_seed(1))
    b = codec.encode(x, torch.Generator().manual_seed(1))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, mean + std * eps)


def test_codec_is_lazy_and_pickles_without_the_network(vae_dir):
    codec = load_codec(str(vae_dir[0]))
    assert codec._vae is None  # nothing loaded until first use
    codec.encode_posterior(torch.zeros(1, 3, 16, 16))
    clone = pickle.loads(pickle.dumps(codec))
    assert clone._vae is None and clone.name == codec.name


def test_missing_or_bad_vae_sources_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="neither an existing file or folder"):
        load_autoencoder_kl(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_autoencoder_kl(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the local cache"):
        load_autoencoder_kl("stabilityai/sd-vae-ft-ema")


def test_identity_codec_round_trip():
    codec = load_codec("identity", channels=1)
    x = torch.randn(2, 1, 4, 4)
    assert isinstance(codec, IdentityCodec) and codec.channels == 1
    assert torch.equal(codec.decode(codec.encode(x)), x)
    mean, std = codec.encode_posterior(x)
    assert torch.equal(mean, x) and not std.any()
