"""ImageFolder with Pillow + numpy: ADM center crop, classes, flips, and bad-file handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.data.images import BadImageError, ImageFolder, center_crop_arr, to_model_tensor


def random_image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def make_folder(root, classes=("cat", "ant"), per_class=3, size=(20, 12)):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            random_image(*size, seed=10 * c + i).save(root / name / f"{i}.png")
    return root


def test_center_crop_halves_with_box_then_bicubic_then_crops():
    image = random_image(1100, 600, seed=0)
    # By hand: 600 >= 2*256 -> one BOX halving to 550x300; 300 < 512 stops; BICUBIC by 256/300 -> 469x256
    # (round(550*256/300) = round(469.33)); centre crop starts at column (469-256)//2 = 106.
    expected = np.asarray(image.resize((550, 300), Image.BOX).resize((469, 256), Image.BICUBIC))[:, 106:362]
    out = center_crop_arr(image, 256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert np.array_equal(out, expected)


def test_center_crop_of_a_constant_image_is_that_constant():
    image = Image.new("RGB", (300, 700), (10, 200, 30))
    assert (center_crop_arr(image, 256) == np.array([10, 200, 30], np.uint8)).all()


def test_model_tensor_range():
    x = to_model_tensor(np.array([[[[0, 255, 128]]]], np.uint8))
    assert x.shape == (1, 3, 1, 1)
    torch.testing.assert_close(x.flatten(), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]))


def test_classes_are_sorted_folders_and_flip_mirrors(tmp_path):
    ds = ImageFolder(make_folder(tmp_path / "d"), image_size=8)
    assert ds.classes == ["ant", "cat"] and len(ds) == 6 and ds.num_classes == 2
    assert [label for _, label in ds.files] == [0, 0, 0, 1, 1, 1]
    x, y = ds.get_batch([0, 4])
    xf, yf = ds.get_batch([0, 4], flips=torch.tensor([True, False]))
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [0, 1] and torch.equal(y, yf)
    assert torch.equal(xf[0], x[0].flip(-1)) and torch.equal(xf[1], x[1])


def test_empty_folder_and_too_few_classes_are_errors(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="has no images"):
        ImageFolder(tmp_path / "empty", 8)
    with pytest.raises(ValueError, match="2 class folders, fewer than num_classes=1000"):
        ImageFolder(make_folder(tmp_path / "d"), 8, num_classes=1000)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "missing", 8)


def test_bad_files_are_named_or_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "ant" / "notes.txt").write_text("not an image")
    good = root / "cat" / "0.png"
    (root / "cat" / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    ds = ImageFolder(root, 8)
    bad_index = [str(p) for p, _ in ds.files].index(str(root / "ant" / "notes.txt"))
    with pytest.raises(BadImageError, match="notes.txt"):
        ds.load(bad_index)
    truncated = [str(p) for p, _ in ds.files].index(str(root / "cat" / "truncated.png"))
    with pytest.raises(BadImageError, match="truncated.png"):
        ds.load(truncated)
    skipping = ImageFolder(root, 8, skip_bad=True)
    assert len(skipping) == 6 and sorted(p.name for p in skipping.skipped) == ["notes.txt", "truncated.png"]


def test_images_data_source_flips_reproducibly_per_step(tmp_path):
    from types import SimpleNamespace

    from ditlab.train.data_source import build_data_source
    from ditlab.utils.distributed import DistInfo

    info = DistInfo(0, 0, 1, torch.device("cpu"))
    source = build_data_source(SimpleNamespace(data=f"images:{make_folder(tmp_path / 'd')}", seed=0, image_size=8),
                               info)
    assert (source.size, source.channels, source.input_size, source.num_classes) == (6, 3, 8, 2)
    plain, _ = ImageFolder(tmp_path / "d", 8).get_batch(list(range(6)))
    batches = [source.batch(list(range(6)), step=s)[0] for s in range(4)]
    assert torch.equal(batches[0], source.batch(list(range(6)), step=0)[0])
    for x in batches:  # every image is itself or its mirror
        assert all(torch.equal(x[i], plain[i]) or torch.equal(x[i], plain[i].flip(-1)) for i in range(6))
    assert any(not torch.equal(batches[0], b) for b in batches[1:])
    with pytest.raises(ValueError, match="needs a folder"):
        build_data_source(SimpleNamespace(data="images:", seed=0, image_size=8), info)


# ----------------------------------------------------------------------------
# Issue 14: 16-bit and float images, symbolic links, empty classes.


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    ramp = np.arange(64, dtype=np.float64).reshape(8, 8) / 63  # 0..1
    expected = np.round(ramp * 255).astype(np.uint8)
    (tmp_path / "a").mkdir()
    Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(tmp_path / "a" / "gray16.png")  # mode I;16
    Image.fromarray(np.round(ramp * 65535).astype(np.int32)).save(tmp_path / "a" / "gray32.tif")  # mode I
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "a" / "float.tif")  # mode F
    ds = ImageFolder(tmp_path, 8)
    assert [Image.open(p).mode for p, _ in ds.files] == ["F", "I;16", "I"]
    for i in range(3):
        image, _ = ds.load(i)
        assert np.abs(image.astype(int) - expected[..., None]).max() <= 1, ds.files[i][0]  # rounding of float32


def test_float_or_wide_images_out_of_range_are_refused_by_name(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((8, 8), 200.0, np.float32)).save(tmp_path / "a" / "f255.tif")
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "a" / "i32.tif")
    random_image(8, 8, seed=0).save(tmp_path / "a" / "ok.png")
    ds = ImageFolder(tmp_path, 8)
    with pytest.raises(BadImageError, match=r"f255\.tif: float pixels \(F\) outside 0\.\.1 \(found 200\.\.200\)"):
        ds.load(0)
    with pytest.raises(BadImageError, match=r"i32\.tif: 16-bit pixels \(I\) outside 0\.\.65535"):
        ds.load(1)
    assert [p.name for p in ImageFolder(tmp_path, 8, skip_bad=True).skipped] == ["f255.tif", "i32.tif"]


def test_links_into_the_root_or_to_listed_folders_are_skipped(tmp_path):
    root = make_folder(tmp_path / "d")
    outside = make_folder(tmp_path / "outside", classes=("x",), per_class=2)
    (root / "zebra").symlink_to(root / "cat")  # a second label for cat's images
    (root / "ant" / "more").symlink_to(root / "cat")  # cat's images under ant
    (root / "ant" / "copy.png").symlink_to(root / "cat" / "0.png")
    (root / "bird").symlink_to(outside / "x")  # a new place: a real class
    (root / "cat" / "again").symlink_to(outside / "x")  # already listed as bird
    (root / "cat" / "loop").symlink_to(tmp_path)  # contains the root
    with pytest.warns(UserWarning, match="skipped 5 symbolic link"):
        ds = ImageFolder(root, 8)
    assert ds.classes == ["ant", "bird", "cat"] and len(ds) == 8
    assert [p.relative_to(root).as_posix() for p, label in ds.files if label == 1] == ["bird/0.png", "bird/1.png"]
    assert len({p.resolve() for p, _ in ds.files}) == 8  # no image twice


def test_empty_class_folder_is_refused_by_name(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "bee").mkdir()
    (root / "bee" / ".DS_Store").write_text("")
    with pytest.raises(ValueError, match="class folder\\(s\\) without images: bee; each sub-folder is a class"):
        ImageFolder(root, 8)

