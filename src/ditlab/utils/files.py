"""File plumbing every layer may use: atomic writes, the identity files that pin a resumable job, folder locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TEMP_MARK = ".tmp-"  # atomic_write's temporary files are named .<name>.tmp-<pid>


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, fsync it, then rename it onto ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # Some writers (safetensors) create files 0600; give every output the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
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


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_write` (left behind only by a killed writer)."""
    return name.startswith(".") and TEMP_MARK in name


def check_writable_folder(path: Path, what: str, create: bool = True) -> None:
    """Refuse, in one line and before any work, a folder that exists as a file (or below one) or cannot be
    written: a probe file is written in it (``create``: the folder is made first) or, without ``create``, in its
    nearest existing parent, so that a refused job leaves no trace."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path.cwd())
    if not existing.is_dir():
        raise ValueError(f"{what} {path} cannot be used: {existing} is a file, not a folder")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
            existing = path
        probe = existing / f".write-probe{TEMP_MARK}{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{what} {path} is not writable ({err.strerror or err})") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path, warn: Callable[[str], None]) -> Iterator[None]:
    """Hold ``folder/.lock`` (an ``flock``) so two jobs cannot write one folder; released when the job ends.

    The lock file records the holder's host and PID. The kernel drops the ``flock`` when its process dies, so a
    killed job never blocks the next one; a record whose PID is dead is reported through ``warn`` as stale.
    """
    path = Path(folder) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise ValueError(f"{folder} is in use by another job ({_holder(fd) or 'unknown holder'}, "
                             f"lock {path}); wait for it or use another folder") from None
        previous = _holder(fd)
        if previous:
            host, _, pid = previous.partition(" PID ")
            dead = host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))
            state = "is not running" if dead else "did not release it"
            warn(f"stale lock {path} from {previous} ({state}); taking it over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} PID {os.getpid()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # only a killed job leaves its record behind
    finally:
        os.close(fd)  # closing drops the flock


def _holder(fd: int) -> str:
    return os.pread(fd, 256, 0).decode(errors="replace").strip()
