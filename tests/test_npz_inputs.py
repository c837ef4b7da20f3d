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
