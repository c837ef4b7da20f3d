"""ADM .npz files that are no zip or lack arr_0 (issue 14): one line naming the file, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest

from ditlab.eval.reference import iter_npz_batches, npz_keys, npz_length, write_npz


@pytest.fixture
def files(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip")
    (tmp_path / "empty.npz").write_bytes(b"")
    np.save(tmp_path / "plain.npy", np.zeros((4, 4, 4, 3), np.uint8))
    (tmp_path / "plain.npy").rename(tmp_path / "plain.npz")
    with open(tmp_path / "named.npz", "wb") as f:
        np.savez(f, images=np.zeros((4, 4, 4, 3), np.uint8))
    write_npz(tmp_path / "good.npz", np.zeros((4, 4, 4, 3), np.uint8))
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("text.npz", "text.npz is not an .npz file (not a zip archive)"),
    ("empty.npz", "empty.npz is not an .npz file (not a zip archive)"),
    ("plain.npz", "plain.npz is not an .npz file (not a zip archive)"),
    ("named.npz", "named.npz has no 'arr_0' array (keys: images)"),
])
def test_a_file_that_is_no_image_batch_is_one_line(files, name, message):
    for read in (npz_length, lambda path: next(iter_npz_batches(path, 2))):
        with pytest.raises(ValueError) as err:
            read(files / name)
        assert message in str(err.value) and "\n" not in str(err.value)
    assert npz_keys(files / "good.npz") == ["arr_0"] and next(iter_npz_batches(files / "good.npz", 2)).shape[0] == 2


def test_grayscale_sample_files_are_scored_as_rgb(tmp_path):
    """(N, H, W, 1) sample files are admitted (repeated to RGB), with the activations of their RGB copy."""
    from ditlab.eval.reference import compute_activations
    from helpers import StandInInception

    gray = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "gray.npz", gray)  # a user's file: write_npz itself writes RGB only, as ADM's
    write_npz(tmp_path / "rgb.npz", np.repeat(gray, 3, axis=-1))
    net = StandInInception()
    a = compute_activations(tmp_path / "gray.npz", net, batch_size=2, progress=False)
    b = compute_activations(tmp_path / "rgb.npz", net, batch_size=2, progress=False)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    np.savez(tmp_path / "two.npz", np.zeros((2, 8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match=r"must be \(N, H, W, 3\) or \(N, H, W, 1\) images"):
        compute_activations(tmp_path / "two.npz", net, progress=False)
