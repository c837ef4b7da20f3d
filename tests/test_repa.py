"""REPA: the projector, the alignment loss, DINOv2 prepared as DDT (timm's position resampling), and training on
the real images (pixel space, or latents extracted with their images)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ditlab
from ditlab.models.repa import build_projector
from ditlab.objectives.dinov2 import dinov2_preprocess, resample_pos_table
from ditlab.objectives.flow import FlowMatching
from ditlab.objectives.repa import REPAConfig, REPAFlowMatching, cosine_alignment_loss, match_token_count
from ditlab.train import TrainConfig, train
from ditlab.train.objective import build_objective

TINY_DDT = dict(in_channels=4, num_groups=2, hidden_size=32, num_blocks=3, num_encoder_blocks=2, patch_size=2,
                num_classes=10, input_size=8)
DDT_ARGS = {"hidden_size": 32, "num_groups": 2, "num_blocks": 2, "num_encoder_blocks": 1, "patch_size": 4}


class TinyEncoder(nn.Module):
    """A stand-in vision encoder: 4x4 patches of the preprocessed image -> 12-dim features; records its inputs."""

    width = 12

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 12, 4, stride=4)
        self.seen: list[torch.Tensor] = []

    def forward(self, images):
        self.seen.append(images)
        return self.proj(dinov2_preprocess(images)).flatten(2).transpose(1, 2)


def test_layering_models_never_import_objectives():
    import ast
    from pathlib import Path

    for path in (Path(ditlab.__file__).parent / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert "objectives" not in node.module, f"{path.name} imports {node.module}"


def test_projector_has_the_official_layout():
    proj = build_projector(32, 32, 12)
    assert list(proj.state_dict()) == ["0.0.weight", "0.0.bias", "0.2.weight", "0.2.bias", "0.4.weight", "0.4.bias"]
    assert isinstance(proj[0][1], nn.SiLU) and proj[0][4].out_features == 12


def test_cosine_alignment_loss_values_and_token_rescaling():
    a = torch.randn(2, 4, 6)
    torch.testing.assert_close(cosine_alignment_loss(a, a), torch.zeros(2))
    torch.testing.assert_close(cosine_alignment_loss(a, -3 * a), torch.full((2,), 2.0))
    constant = torch.ones(2, 1, 6)  # one token, upsampled bilinearly to 4 equal tokens
    assert torch.equal(match_token_count(constant, 4), torch.ones(2, 4, 6))
    with pytest.raises(ValueError, match="cannot rescale 3 feature tokens to 4"):
        match_token_count(torch.ones(1, 3, 6), 4)


def test_dinov2_preprocess_follows_the_official_steps():
    images = torch.zeros(1, 3, 256, 256)  # grey 0.5 after [-1, 1] -> [0, 1]
    out = dinov2_preprocess(images)
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out[0, :, 0, 0], (0.5 - torch.tensor([0.485, 0.456, 0.406])) /
                               torch.tensor([0.229, 0.224, 0.225]))
    assert dinov2_preprocess(torch.zeros(1, 1, 16, 16)).shape == (1, 3, 14, 14)  # grey digits become RGB
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)  # stored images: DDT's to_tensor = u / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = F.interpolate((pixels.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1), size=(28, 28),
                             mode="bicubic")
    torch.testing.assert_close(dinov2_preprocess(pixels), expected)


def smooth_table(side: int, dim: int = 8) -> torch.Tensor:
    """A (1, 1 + side², dim) table whose patch rows vary smoothly over the grid (as learned tables do)."""
    u = torch.linspace(0, 1, side)
    grid = torch.stack([torch.sin(3 * (u[:, None] + k * u[None, :]) + k) for k in range(dim)], dim=-1)
    return torch.cat([torch.full((1, 1, dim), 7.0), grid.reshape(1, side * side, dim)], dim=1)


def test_position_table_is_resampled_as_timm_with_antialiasing():
    table = smooth_table(37)  # DINOv2-B/14's pretrained 518 px grid
    out = resample_pos_table(table, (16, 16))  # DDT at 256 px: 224 px -> 16 x 16 patches
    assert out.shape == (1, 1 + 256, 8) and torch.equal(out[:, :1], table[:, :1])  # the class row is kept
    patches = table[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    by_hand = F.interpolate(patches, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(out[:, 1:], by_hand.permute(0, 2, 3, 1).reshape(1, 256, 8))
    plain = F.interpolate(patches, size=(16, 16), mode="bicubic")  # transformers' resampler
    gap = (by_hand - plain).abs().max() / table[:, 1:].abs().max()
    assert gap > 0.05  # not "the last digits": the two resamplers give other targets
    assert resample_pos_table(table, (37, 37)) is table  # the pretrained grid itself: untouched (timm)


def test_dinov2_uses_the_resampled_position_table(tmp_path):
    transformers = pytest.importorskip("transformers")
    from ditlab.objectives.dinov2 import load_dinov2

    config = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, patch_size=2, image_size=18)  # 9 x 9 table
    torch.manual_seed(0)
    reference = transformers.Dinov2Model(config).eval()
    with torch.no_grad():
        reference.embeddings.position_embeddings.copy_(smooth_table(9, 16))
    reference.save_pretrained(tmp_path / "dino")
    encoder = load_dinov2(tmp_path / "dino")
    images = torch.rand(2, 3, 16, 16) * 2 - 1  # 16 px -> 14 px -> 7 x 7 patch tokens
    features = encoder(images)
    assert features.shape == (2, 49, 16) and encoder.width == 16
    assert not any(p.requires_grad for p in encoder.parameters())
    # DDT: the table resampled to 7 x 7 by timm (antialiased), which the encoder then uses as it is.
    patches = smooth_table(9, 16)[:, 1:].reshape(1, 9, 9, 16).permute(0, 3, 1, 2)
    resampled = F.interpolate(patches, size=(7, 7), mode="bicubic", antialias=True).permute(0, 2, 3, 1)
    with torch.no_grad():
        reference.embeddings.position_embeddings = nn.Parameter(
            torch.cat([smooth_table(9, 16)[:, :1], resampled.reshape(1, 49, 16)], dim=1))
        expected = reference(pixel_values=dinov2_preprocess(images)).last_hidden_state[:, 1:]
    torch.testing.assert_close(features, expected)


def test_repa_loss_adds_half_the_alignment_of_the_real_images():
    torch.manual_seed(0)
    model = ditlab.create_model("DDT", **TINY_DDT)
    objective = REPAFlowMatching(FlowMatching(), REPAConfig(enabled=True, align_layer=2), 32, TinyEncoder())
    captured = []
    model.blocks[1].register_forward_hook(lambda _m, _i, out: captured.append(out))
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)  # the stored crops of three latents
    latents = torch.randn(3, 4, 8, 8)
    torch.manual_seed(1)
    terms = objective.loss(model, latents, torch.tensor([0, 1, 9]), images=images)
    assert objective.encoder.seen[-1] is images  # aligned to the real images, no decode
    expected_cos = cosine_alignment_loss(objective.proj(captured[0]), objective.encoder(images))
    torch.testing.assert_close(terms["cos"], expected_cos)
    torch.testing.assert_close(terms["loss"], terms["fm"] + 0.5 * terms["cos"])
    terms["loss"].mean().backward()
    assert objective.proj[0][0].weight.grad is not None and model.blocks[0].attn.qkv.weight.grad is not None
    assert "encoder" not in "".join(objective.state_dict())  # the frozen encoder is not saved
    pixels = torch.rand(3, 3, 8, 8) * 2 - 1  # pixel space: the model's x are the images
    objective.loss(ditlab.create_model("DDT", **{**TINY_DDT, "in_channels": 3}), pixels, torch.tensor([0, 1, 9]))
    assert objective.encoder.seen[-1] is pixels


def test_the_frozen_encoder_moves_with_the_objective():
    objective = REPAFlowMatching(FlowMatching(), REPAConfig(enabled=True), 32, TinyEncoder()).double()
    assert objective.encoder.proj.weight.dtype == torch.float64  # .to(device) moves it alike (the loop's call)
    assert all(k.startswith("proj.") for k in objective.state_dict())  # and it stays out of the checkpoint


def test_missing_repa_encoder_path_is_a_one_line_error(tmp_path):
    for repa, match in ((REPAConfig(enabled=True), "REPA is on but repa.encoder_path is not set"),
                        (REPAConfig(enabled=True, encoder_path=str(tmp_path / "nope")), "is not a folder")):
        config = TrainConfig(objective="flow", repa=repa, model="DDT")
        with pytest.raises(ValueError, match=match) as err:
            build_objective(config, model=ditlab.create_model("DDT", **TINY_DDT))
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="REPA needs objective='flow'"):
        TrainConfig(repa=REPAConfig(enabled=True))


def test_training_with_repa_trains_and_saves_the_projector(tmp_path, monkeypatch):
    import ditlab.objectives.dinov2 as dinov2

    monkeypatch.setattr(dinov2, "load_dinov2", lambda path: TinyEncoder())
    config = TrainConfig(run_dir=str(tmp_path / "run"), model="DDT", model_args=DDT_ARGS, objective="flow",
                         repa=REPAConfig(enabled=True, encoder_path=str(tmp_path), align_layer=1),
                         steps=3, global_batch=4, log_every=3, ckpt_every=3, sample_every=-1, progress=False,
                         device="cpu")
    result = train(config)
    assert {"fm", "cos"} <= set(result.metrics[0])
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_0000003.train_state.pt", weights_only=True)
    assert set(state["objective"]) == {"proj.0.0.weight", "proj.0.0.bias", "proj.0.2.weight", "proj.0.2.bias",
                                       "proj.0.4.weight", "proj.0.4.bias"}
    assert len(state["optimizer"]["param_groups"]) == 2  # backbone + projector


def test_repa_run_resumes_exactly(tmp_path, monkeypatch):
    import ditlab.objectives.dinov2 as dinov2

    monkeypatch.setattr(dinov2, "load_dinov2", lambda path: TinyEncoder())

    def config(run: str, steps: int) -> TrainConfig:
        return TrainConfig(run_dir=str(tmp_path / run), model="DDT", model_args=DDT_ARGS, objective="flow",
                           repa=REPAConfig(enabled=True, encoder_path=str(tmp_path), align_layer=1), steps=steps,
                           global_batch=4, log_every=2, ckpt_every=2, sample_every=-1, progress=False, device="cpu")

    train(config("straight", 4))
    train(config("split", 2))
    train(config("split", 4), resume=True)
    states = [torch.load(tmp_path / run / "checkpoints" / "step_0000004.train_state.pt", weights_only=True)
              for run in ("straight", "split")]
    for key in states[0]["objective"]:
        assert torch.equal(states[0]["objective"][key], states[1]["objective"][key]), key
    for key in states[0]["model"]:
        assert torch.equal(states[0]["model"][key], states[1]["model"][key]), key


# ----------------------------------------------------------------------------
# Latents with their images.


@pytest.fixture
def latents_with_images(tmp_path):
    pytest.importorskip("diffusers")
    from ditlab.data.latents import ExtractConfig, run_extract
    from test_images import make_folder
    from test_vae import tiny_vae

    tiny_vae().save_pretrained(tmp_path / "vae")
    make_folder(tmp_path / "images", per_class=4, size=(24, 16))

    def extract(name: str, images: bool, vae: str = str(tmp_path / "vae")):
        run_extract(ExtractConfig(data=str(tmp_path / "images"), out=str(tmp_path / name), vae=vae,
                                  image_size=16, shard_size=3, batch_size=4, dtype="float32", device="cpu",
                                  progress=False, images=images))
        return tmp_path / name

    return tmp_path, extract


def test_extracted_images_follow_the_flip_of_each_latent(latents_with_images):
    from ditlab.data.images import ImageFolder
    from ditlab.data.latents import LatentShards
    from ditlab.train.data_source import DataSource

    tmp, extract = latents_with_images
    crops = torch.from_numpy(ImageFolder(tmp / "images", 16).load_batch(list(range(8)))[0]).permute(0, 3, 1, 2)
    assert torch.equal(LatentShards(extract("lat", images=True)).get_images(list(range(8)),
                                                                             torch.zeros(8, dtype=torch.bool)), crops)
    # Identity "latents" are the pixels (std 0), so each drawn flip shows; read them as latents (codec not identity).
    shards = LatentShards(extract("pix", images=True, vae="identity"))
    source = DataSource(shards, len(shards), 3, 16, 2, codec=object(), device=torch.device("cpu"), seed=3)
    indices = [5, 0, 7, 2, 6, 1]
    flips = set()
    for step in range(4):
        x, _ = source.batch(indices, step=step)
        images = source.images(indices, step)
        assert images.dtype == torch.uint8
        torch.testing.assert_close(images.float() / 127.5 - 1, x, rtol=0, atol=1e-6)
        flips |= {bool(torch.equal(images[r], crops[i].flip(-1))) for r, i in enumerate(indices)}
    assert flips == {True, False}  # both kinds were drawn


def test_repa_on_latents_aligns_to_the_stored_images_without_decoding(latents_with_images, monkeypatch):
    import ditlab.objectives.dinov2 as dinov2
    from ditlab.vae import AutoencoderKLCodec

    tmp, extract = latents_with_images
    encoder = TinyEncoder()
    monkeypatch.setattr(dinov2, "load_dinov2", lambda path: encoder)

    def no_decode(self, latents):
        raise AssertionError("REPA must not decode latents in the loop")

    monkeypatch.setattr(AutoencoderKLCodec, "decode", no_decode)
    config = TrainConfig(run_dir=str(tmp / "run"), model="DDT", model_args=DDT_ARGS, objective="flow",
                         data=f"latents:{extract('lat', images=True)}",
                         repa=REPAConfig(enabled=True, encoder_path=str(tmp), align_layer=1),
                         steps=2, global_batch=4, log_every=1, ckpt_every=2, sample_every=-1, progress=False,
                         device="cpu")
    result = train(config)
    assert all(math.isfinite(r["cos"]) for r in result.metrics)
    assert len(encoder.seen) == 2 and all(s.dtype == torch.uint8 and s.shape == (4, 3, 16, 16) for s in encoder.seen)
    no_images = TrainConfig(**{**config.__dict__, "run_dir": str(tmp / "run2"),
                               "data": f"latents:{extract('bare', images=False)}"})
    with pytest.raises(ValueError, match="holds latents without them; extract with") as err:
        train(no_images)
    assert "\n" not in str(err.value)
