"""The FID Inception-v3: parameter names/shapes of pt_inception-2015-12-05-6726825d.pth, feature shapes,
TF1 resize, and the weight loader's errors."""

from __future__ import annotations

import pytest
import torch

import ditlab.eval.inception as inception_mod
from ditlab.eval.inception import INCEPTION_ENV, WEIGHTS_NAME, FIDInceptionV3, load_fid_inception, resize_bilinear_tf1


def _convs(prefix: str, specs: list[tuple[str, int, int, int, int]]) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, cin, cout, kh, kw in specs:
        p = f"{prefix}{name}."
        out[p + "conv.weight"] = (cout, cin, kh, kw)
        for stat in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            out[p + stat] = (cout,)
        out[p + "bn.num_batches_tracked"] = ()
    return out


def published_shapes() -> dict[str, tuple[int, ...]]:
    """Written from the published architecture (Szegedy et al. 2016 / the 2015 TF graph as ported by
    pytorch-fid: torchvision Inception3 names, no AuxLogits, a 1008-way fc), independently of the module."""
    shapes = _convs("", [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3),
                         ("Conv2d_2b_3x3", 32, 64, 3, 3), ("Conv2d_3b_1x1", 64, 80, 1, 1),
                         ("Conv2d_4a_3x3", 80, 192, 3, 3)])
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        shapes |= _convs(f"{name}.", [("branch1x1", cin, 64, 1, 1), ("branch5x5_1", cin, 48, 1, 1),
                                      ("branch5x5_2", 48, 64, 5, 5), ("branch3x3dbl_1", cin, 64, 1, 1),
                                      ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3),
                                      ("branch_pool", cin, pool, 1, 1)])
    shapes |= _convs("Mixed_6a.", [("branch3x3", 288, 384, 3, 3), ("branch3x3dbl_1", 288, 64, 1, 1),
                                   ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3)])
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        shapes |= _convs(f"{name}.", [
            ("branch1x1", 768, 192, 1, 1), ("branch7x7_1", 768, c7, 1, 1), ("branch7x7_2", c7, c7, 1, 7),
            ("branch7x7_3", c7, 192, 7, 1), ("branch7x7dbl_1", 768, c7, 1, 1), ("branch7x7dbl_2", c7, c7, 7, 1),
            ("branch7x7dbl_3", c7, c7, 1, 7), ("branch7x7dbl_4", c7, c7, 7, 1), ("branch7x7dbl_5", c7, 192, 1, 7),
            ("branch_pool", 768, 192, 1, 1)])
    shapes |= _convs("Mixed_7a.", [("branch3x3_1", 768, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3),
                                   ("branch7x7x3_1", 768, 192, 1, 1), ("branch7x7x3_2", 192, 192, 1, 7),
                                   ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)])
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        shapes |= _convs(f"{name}.", [
            ("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1), ("branch3x3_2a", 384, 384, 1, 3),
            ("branch3x3_2b", 384, 384, 3, 1), ("branch3x3dbl_1", cin, 448, 1, 1),
            ("branch3x3dbl_2", 448, 384, 3, 3), ("branch3x3dbl_3a", 384, 384, 1, 3),
            ("branch3x3dbl_3b", 384, 384, 3, 1), ("branch_pool", cin, 192, 1, 1)])
    return shapes | {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


@pytest.fixture(scope="module")
def net() -> FIDInceptionV3:
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_state_dict_names_and_shapes_match_the_published_file(net):
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == published_shapes()
    # torchvision's Inception3 has 27,161,264 parameters; minus AuxLogits (3,326,696) plus 8 more fc classes
    # (8 * 2049) gives the FID network's count.
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049


def test_random_weight_forward_gives_adm_feature_shapes(net):
    with torch.no_grad():
        net.fc.bias.fill_(5.0)
        images = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)  # NHWC uint8, resized to 299
        out = net(images)
    assert out["pool"].shape == (2, 2048)
    assert out["spatial"].shape == (2, 17 * 17 * 7)  # mixed_6/conv[..., :7] flattened
    assert out["logits"].shape == (2, 1008)
    torch.testing.assert_close(out["logits"], out["pool"] @ net.fc.weight.T)  # no bias, as ADM


def test_tf1_bilinear_resize_has_no_half_pixel_offset():
    x = torch.tensor([[[[0.0, 10.0]]]])
    # TF1 align_corners=False: source = dest * in/out = 0, .5, 1, 1.5 (clamped) -> 0, 5, 10, 10.
    torch.testing.assert_close(resize_bilinear_tf1(x.expand(1, 1, 2, 2), 4)[0, 0, 0], torch.tensor([0., 5, 10, 10]))
    y = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    torch.testing.assert_close(resize_bilinear_tf1(y, 2)[0, 0, 0], torch.tensor([0.0, 2.0]))  # picks 0 and 2


def test_loader_accepts_the_file_layout_and_rejects_others(net, tmp_path, monkeypatch):
    state = {k: v.half() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "w.pth")
    loaded = load_fid_inception(tmp_path / "w.pth")
    torch.testing.assert_close(loaded.fc.weight, net.fc.weight.half().float())
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not the FID Inception"):
        load_fid_inception(tmp_path / "other.pth")
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.setattr(inception_mod, "fid_helper_weights", lambda: None)  # as without ditlab[fid]
    with pytest.raises(FileNotFoundError, match=f"ditlab\\[fid\\].*{INCEPTION_ENV}"):
        load_fid_inception(None)
    monkeypatch.setenv(INCEPTION_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_fid_inception(None)


def test_unreadable_weight_files_are_one_line_errors(tmp_path, monkeypatch):
    """Garbage, empty, truncated or non-dict --inception / $DITLAB_INCEPTION files: one ValueError naming the
    file and what is expected, never a bare UnpicklingError/EOFError/BadZipFile/RuntimeError."""
    torch.save({"fc.weight": torch.zeros(64)}, tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    files = {"garbage.pth": b"not a torch file at all", "empty.pth": b"", "cut.pth": data[: len(data) // 2],
             "cut_tail.pth": data[:-100]}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    for name in [*files, "tensor.pth"]:
        with pytest.raises(ValueError, match=f"{name}.*(cannot be read|not a state dict).*{WEIGHTS_NAME}") as err:
            load_fid_inception(tmp_path / name)
        assert "\n" not in str(err.value), name
    monkeypatch.setenv(INCEPTION_ENV, str(tmp_path / "garbage.pth"))
    with pytest.raises(ValueError, match="garbage.pth cannot be read"):
        load_fid_inception(None)
