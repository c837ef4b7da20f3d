"""File plumbing every layer may use: atomic writes and the identity files that pin a resumable job."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, fsync it, then rename it onto ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def check_or_write_identity(path: Path, identity: dict[str, Any], write: bool, what: str) -> None:
    """Pin a resumable job's settings: write ``identity`` as JSON (if ``write``) or refuse a different one.

    A rerun with other settings into the same folder would mix two jobs' outputs; the error names every changed
    setting (old -> new) and ``what`` the folder holds.
    """
    path = Path(path)
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in identity if previous.get(k) != identity[k])
        if changed:
            diffs = ", ".join(f"{k}: {previous.get(k)!r} -> {identity[k]!r}" for k in changed)
            raise ValueError(f"{path.parent} holds {what} ({diffs}); use a new output folder")
    elif write:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(identity, indent=2) + "\n"))
