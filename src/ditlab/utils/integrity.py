"""Content checks shared by training checkpoints and sampling jobs: SHA-256 of files and folders, finite tensors."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def _feed(digest: Any, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    _feed(digest, Path(path))
    return digest.hexdigest()


def path_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, or of a folder's files (relative names and bytes, in sorted order;
    hidden files such as temporaries left out)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        _feed(digest, file)
    return digest.hexdigest()


def first_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding a NaN or infinity, or None."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None
