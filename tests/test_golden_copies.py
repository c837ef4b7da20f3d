"""tests/golden holds unchanged copies of ../shared/golden, so a clone of the repository tests itself."""

from __future__ import annotations

import pytest

from helpers import GOLDEN_DIR, SHARED_GOLDEN_DIR


@pytest.mark.skipif(not SHARED_GOLDEN_DIR.is_dir(), reason="../shared/golden is not beside this checkout")
def test_copies_equal_shared_golden():
    shared = sorted(p.name for p in SHARED_GOLDEN_DIR.iterdir() if p.is_file())
    assert shared, "shared golden folder is empty"
    for name in shared:
        assert (GOLDEN_DIR / name).read_bytes() == (SHARED_GOLDEN_DIR / name).read_bytes(), name


def test_every_golden_file_is_listed_in_the_manifest():
    import json

    listed = set(json.loads((GOLDEN_DIR / "MANIFEST.json").read_text())["files"])
    present = {p.name for p in GOLDEN_DIR.glob("*.safetensors")}
    assert present == listed
