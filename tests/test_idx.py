"""MNIST / Fashion-MNIST IDX files: spec parsing, reading (raw or gzipped), one-line errors, fitting to 32,
the model dataset, and the wiring into train / extract-latents. Error cases use tiny IDX files made here;
the real Debian files are read in small slices."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ditlab.cli import main
from ditlab.data.idx import (
    DEBIAN_FASHION_MNIST,
    IDXDataset,
    IDXSpec,
    fit_images,
    load_idx,
    parse_idx_spec,
)
from ditlab.train import TrainConfig
from ditlab.train.data_source import build_data_source
from ditlab.utils.distributed import DistInfo

HAVE_FASHION = (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason=f"Fashion-MNIST not installed at {DEBIAN_FASHION_MNIST} (Debian package "
                             "dataset-fashion-mnist; `make install` installs it when run as root)")
CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: 0x0000, type 0x08, ndim, big-endian sizes, data."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, data: bytes, gz: bool) -> Path:
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_folder(root: Path, n: int = 6, gz: bool = True, split: str = "train", side: int = 28,
                    labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A folder with one split of a tiny MNIST-format dataset; returns (images, labels) written."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10 if labels is None else labels
    stem = "train" if split == "train" else "t10k"
    write_idx(root / f"{stem}-images-idx3-ubyte", idx_bytes(images), gz)
    write_idx(root / f"{stem}-labels-idx1-ubyte", idx_bytes(labels), gz)
    return images, labels.astype(np.int64)


@pytest.mark.parametrize("text, expected", [
    ("fashion-mnist", IDXSpec("fashion-mnist", DEBIAN_FASHION_MNIST, "train")),
    ("fashion-mnist:test", IDXSpec("fashion-mnist", DEBIAN_FASHION_MNIST, "test")),
    ("fashion-mnist:train:5000", IDXSpec("fashion-mnist", DEBIAN_FASHION_MNIST, "train", 5000)),
    ("fashion-mnist:/d/fm", IDXSpec("fashion-mnist", Path("/d/fm"), "train")),
    ("mnist:/data/mnist:test", IDXSpec("mnist", Path("/data/mnist"), "test")),
    ("mnist:/data/mnist:test:100", IDXSpec("mnist", Path("/data/mnist"), "test", 100)),
    ("mnist:./test", IDXSpec("mnist", Path("test"), "train")),
    ("digits", None), ("images:/x", None), ("latents:/x", None),
])
def test_parse_idx_spec(text, expected):
    assert parse_idx_spec(text) == expected
    if expected is not None:
        assert parse_idx_spec(str(expected)) == expected  # the canonical string round-trips


@pytest.mark.parametrize("text, message", [
    ("mnist", "needs a folder: mnist:DIR"),
    ("mnist:test", "needs a folder: mnist:DIR"),
    ("fashion-mnist:test:0", "image count 0 must be positive"),
])
def test_parse_idx_spec_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_idx_spec(text)


@pytest.mark.parametrize("gz", [True, False])
def test_tiny_files_round_trip_raw_or_gzipped(tmp_path, gz):
    images, labels = make_idx_folder(tmp_path, gz=gz, split="test")
    got_images, got_labels = load_idx(f"mnist:{tmp_path}:test")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_labels.dtype == np.int64 and got_images.flags.writeable
    head, head_labels = load_idx(f"mnist:{tmp_path}:test:2")
    np.testing.assert_array_equal(head, images[:2])
    np.testing.assert_array_equal(head_labels, labels[:2])


def test_dotted_file_names_of_some_mirrors_are_found(tmp_path):
    images, _ = make_idx_folder(tmp_path, gz=False)
    for stem in ("train-images", "train-labels"):
        old = next(tmp_path.glob(f"{stem}-*"))
        old.rename(tmp_path / old.name.replace("-idx", ".idx"))
    np.testing.assert_array_equal(load_idx(f"mnist:{tmp_path}")[0], images)


def _one_line_error(spec: str, error: type, *fragments: str) -> None:
    with pytest.raises(error) as info:
        load_idx(spec)
    text = str(info.value)
    assert "\n" not in text and all(f in text for f in fragments), text


def test_missing_files_say_where_they_come_from(tmp_path):
    _one_line_error(f"fashion-mnist:{tmp_path}", FileNotFoundError, str(tmp_path / "train-images-idx3-ubyte.gz"),
                    "dataset-fashion-mnist")
    _one_line_error(f"mnist:{tmp_path}:test", FileNotFoundError, "t10k-images-idx3-ubyte", "MNIST")
    make_idx_folder(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    _one_line_error(f"mnist:{tmp_path}", FileNotFoundError, "train-labels-idx1-ubyte")


def test_wrong_magic_names_the_file(tmp_path):
    make_idx_folder(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x89PNG" + path.read_bytes()[4:])
    _one_line_error(f"mnist:{tmp_path}", ValueError, str(path), "not an IDX file", "magic 89504e47")


def test_labels_file_in_place_of_images_is_a_dimension_error(tmp_path):
    make_idx_folder(tmp_path, gz=False)
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels)
    _one_line_error(f"mnist:{tmp_path}", ValueError, "train-images-idx3-ubyte", "1 dimensions, expected 3")


def test_images_that_are_not_28x28_are_refused(tmp_path):
    make_idx_folder(tmp_path, side=27)
    _one_line_error(f"mnist:{tmp_path}", ValueError, "train-images-idx3-ubyte.gz", "27x27, expected 28x28")


def test_truncated_gzip_names_the_file(tmp_path):
    make_idx_folder(tmp_path, n=20)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    _one_line_error(f"mnist:{tmp_path}", ValueError, str(path), "truncated gzip")


def test_truncated_raw_file_names_the_file(tmp_path):
    make_idx_folder(tmp_path, n=5, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    _one_line_error(f"mnist:{tmp_path}", ValueError, str(path), "truncated", "5 items")


def test_image_and_label_counts_must_agree(tmp_path):
    make_idx_folder(tmp_path, n=6)
    write_idx(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(5, np.uint8)), gz=True)
    _one_line_error(f"mnist:{tmp_path}", ValueError, "train-labels-idx1-ubyte.gz", "5 labels for the 6 images")


def test_labels_outside_the_ten_classes_are_refused(tmp_path):
    make_idx_folder(tmp_path, n=3, labels=np.array([0, 10, 1], np.uint8))
    _one_line_error(f"mnist:{tmp_path}", ValueError, "label 10 is outside 0..9")


def test_fit_pad_centres_the_image_in_a_black_border():
    images = np.full((2, 28, 28), 200, np.uint8)
    out = fit_images(images, 32, "pad")
    assert out.shape == (2, 32, 32) and out.dtype == np.uint8
    assert (out[:, 2:30, 2:30] == 200).all() and out.sum() == images.sum()
    odd = fit_images(images, 31, "pad")  # margin 3: 1 before, 2 after
    assert (odd[:, 1:29, 1:29] == 200).all() and odd.sum() == images.sum()
    assert fit_images(images, 28) is images


def test_fit_resize_is_bilinear_and_keeps_flat_images_flat():
    flat = np.full((1, 28, 28), 77, np.uint8)
    for size in (32, 16):
        assert (fit_images(flat, size, "resize") == 77).all()
    ramp = np.tile(np.arange(28, dtype=np.uint8) * 9, (1, 28, 1))
    big = fit_images(ramp, 56, "resize")[0, 0].astype(int)
    assert (np.diff(big) >= 0).all() and big[0] == 0 and big[-1] == 243  # monotone, ends kept


@pytest.mark.parametrize("size, fit, message", [
    (16, "pad", "image size 16 is smaller than the 28x28 images"),
    (32, "crop", "image fit 'crop' is not one of pad, resize"),
])
def test_fit_errors(size, fit, message):
    with pytest.raises(ValueError, match=message):
        fit_images(np.zeros((1, 28, 28), np.uint8), size, fit)


def test_dataset_gives_one_channel_in_minus_one_one_and_rgb_for_inception(tmp_path):
    images, labels = make_idx_folder(tmp_path, n=4)
    ds = IDXDataset(f"mnist:{tmp_path}", 32)
    x, y = ds.get_batch([3, 0])
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x[1, 0, 2:30, 2:30], torch.from_numpy(images[0]).float() / 127.5 - 1)
    assert (x[:, :, :2] == -1).all()  # the zero padding is black
    assert y.tolist() == [labels[3], labels[0]] and ds.classes[0] == "0" and ds.num_classes == 10
    rgb, label = ds.load(1)
    assert rgb.shape == (32, 32, 3) and (rgb == rgb[..., :1]).all() and label == labels[1]
    np.testing.assert_array_equal(ds.rgb_uint8()[1], rgb)


def test_to_rgb_uint8_takes_model_tensors_and_uint8_arrays():
    from ditlab.imageio import to_rgb_uint8, to_uint8

    x = torch.linspace(-1, 1, 2 * 16).reshape(2, 1, 4, 4)
    rgb = to_rgb_uint8(x)
    assert rgb.shape == (2, 4, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.repeat(to_uint8(x), 3, axis=-1))
    np.testing.assert_array_equal(to_rgb_uint8(rgb), rgb)  # RGB passes as it is
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, H, W, 1 or 3\), got float32 \(2, 4, 4\)"):
        to_rgb_uint8(np.zeros((2, 4, 4), np.float32))


@needs_fashion
def test_real_fashion_mnist_test_split():
    images, labels = load_idx("fashion-mnist:test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10  # the test split is class-balanced
    head, head_labels = load_idx("fashion-mnist:test:50")
    np.testing.assert_array_equal(head, images[:50])
    np.testing.assert_array_equal(head_labels, labels[:50])
    assert IDXDataset("fashion-mnist:test:1").classes[9] == "Ankle boot"


@needs_fashion
def test_real_fashion_mnist_train_header_and_slice():
    images, labels = load_idx("fashion-mnist:train:100")
    assert images.shape == (100, 28, 28) and labels.min() >= 0 and labels.max() <= 9
    assert 0 < images.mean() < 255  # real pictures, not an empty or saturated slice


@needs_fashion
def test_training_data_source_from_fashion_mnist():
    cfg = TrainConfig(data="fashion-mnist:train:128")
    source = build_data_source(cfg, CPU)
    assert (source.size, source.channels, source.input_size, source.num_classes) == (128, 1, 32, 10)
    x, y = source.batch([0, 5])
    assert x.shape == (2, 1, 32, 32) and -1 <= x.min() and x.max() <= 1 and y.dtype == torch.int64
    resized = build_data_source(TrainConfig(data="fashion-mnist:train:8", image_size=16, image_fit="resize"), CPU)
    assert resized.input_size == 16


def test_train_config_checks_image_fit():
    with pytest.raises(ValueError, match="image_fit='crop' is not one of pad, resize"):
        TrainConfig(image_fit="crop")


def test_train_cli_on_mnist_folder_end_to_end(tmp_path, capsys):
    make_idx_folder(tmp_path / "mnist", n=16, split="test")
    run = tmp_path / "run"
    argv = ["train", "--data", f"mnist:{tmp_path / 'mnist'}:test", "--run-dir", str(run), "--steps", "2",
            "--global-batch", "4", "--progress", "false", "--sample-every", "-1", "--model", "DiT",
            "--model-args", '{"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 8}']
    assert main(argv) == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["data"].startswith("mnist:") and config["image_fit"] == "pad"
    meta = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert meta["step"] == 2
    # `ditlab sample` writes the grayscale model's images as RGB, so `ditlab evaluate` can read them
    out = tmp_path / "samples.npz"
    checkpoint = sorted((run / "checkpoints").glob("*.safetensors"))[-1]
    assert main(["sample", "--checkpoint", str(checkpoint), "--vae", "identity", "--num-images", "3",
                 "--sampler-steps", "ddim2", "--out", str(out), "--progress", "false"]) == 0, capsys.readouterr().err
    with np.load(out) as npz:
        images = npz["arr_0"]
    assert images.shape == (3, 32, 32, 3) and (images == images[..., :1]).all()


def test_train_help_lists_the_data_forms(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for form in ("fashion-mnist[:DIR]", "mnist:DIR", ":train/:test", "images:DIR", "latents:DIR", "--image-fit"):
        assert form in out, form


def test_missing_mnist_folder_is_one_cli_line(tmp_path, capsys):
    assert main(["train", "--data", f"mnist:{tmp_path / 'nowhere'}", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-images-idx3-ubyte.gz does not exist" in err[0], err


def test_extract_latents_from_idx_repeats_grayscale_to_rgb(tmp_path):
    from ditlab.data.latents import ExtractConfig, LatentShards, run_extract

    images, labels = make_idx_folder(tmp_path / "mnist", n=5)
    out = tmp_path / "lat"
    cfg = ExtractConfig(data=f"mnist:{tmp_path / 'mnist'}", out=str(out), vae="identity", shard_size=4,
                        dtype="float32", device="cpu", progress=False)
    assert cfg.image_size == 32
    index = json.loads(run_extract(cfg).read_text())
    assert index["num_images"] == 5 and index["latent_shape"] == [3, 32, 32] and index["classes"][3] == "3"
    mean, _, label = LatentShards(out).read(4)
    expected = torch.from_numpy(fit_images(images[4:5], 32)[0]).float() / 127.5 - 1
    for c in range(3):
        torch.testing.assert_close(mean[0, c], expected)
    assert label == labels[4]
    source = build_data_source(SimpleNamespace(data=f"latents:{out}", seed=0, image_size=None), CPU)
    assert source.channels == 3 and source.input_size == 32
