"""Checkpoints: atomic, checksummed writes; EMA weights as safetensors with their config; a resumable train state.

A checkpoint for step S is two files in ``<run>/checkpoints/``:

- ``step_<S>.safetensors``: the EMA weights with official key names, and metadata holding the model
  family, its config and the step, so ``ditlab sample`` can rebuild the model from this file alone;
- ``step_<S>.train_state.pt``: the raw weights, the optimizer state and the step (tensors and primitives
  only, loadable with ``torch.load(weights_only=True)``); under FSDP2 (``parallel="fsdp"``) it is instead the
  ``torch.distributed.checkpoint`` folder ``step_<S>.train_state.dcp/`` (see :mod:`ditlab.train.fsdp`).

Both are written to a temporary file in the same folder, fsynced and renamed, so a crash never leaves a
half-written checkpoint under a real name. The train state is written first and the weights last: a step
counts as saved only when both files exist.

Integrity: the weights file carries a SHA-256 of its own tensors and metadata (``ditlab_sha256``) and of every
train-state file (``train_state_sha256``), so a file damaged after it was written (truncated, overwritten bytes,
a bad copy) is found when it is read, and named. A non-finite EMA is never written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..utils.files import atomic_write, is_temp_file
from ..utils.integrity import file_sha256, first_non_finite

_STEP_FILE = re.compile(r"^step_(\d+)\.safetensors$")
_ANY_STEP_FILE = re.compile(r"^step_(\d+)\.(safetensors|train_state\.pt|train_state\.dcp)$")
CHECKSUM_KEY = "ditlab_sha256"  # metadata key: digest of the file's tensors and other metadata
STATE_DIGEST_KEY = "train_state_sha256"  # metadata key: {train-state file relative to checkpoints/: sha256}


class CorruptCheckpointError(ValueError):
    """A checkpoint file cannot be read or does not match the checksum written with it; the message names it."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (disk full, read-only folder, ...); the message names the file."""


# ----------------------------------------------------------------------------
# Weights files.


def weights_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over the metadata (all but the digest itself) and each tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for key in sorted(metadata):
        if key != CHECKSUM_KEY:
            h.update(json.dumps([key, metadata[key]]).encode())
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        h.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write a state dict as safetensors; ``metadata`` values are stored as JSON strings, plus the checksum."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta[CHECKSUM_KEY] = weights_digest(tensors, meta)
    _write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by :func:`save_weights`: (state dict, decoded metadata).

    An unreadable file or one whose checksum does not match is a :class:`CorruptCheckpointError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CorruptCheckpointError(f"{path} is not a readable safetensors file ({reason})") from None
    if CHECKSUM_KEY in raw_meta and weights_digest(tensors, raw_meta) != raw_meta[CHECKSUM_KEY]:
        raise CorruptCheckpointError(f"{path} is corrupt: its contents do not match the checksum written with it")
    meta: dict[str, Any] = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return tensors, meta


# ----------------------------------------------------------------------------
# Checkpoint pairs.


def checkpoint_paths(ckpt_dir: Path, step: int) -> tuple[Path, Path]:
    """(weights file, train-state file) of a step."""
    ckpt_dir = Path(ckpt_dir)
    return ckpt_dir / f"step_{step:07d}.safetensors", ckpt_dir / f"step_{step:07d}.train_state.pt"


def sharded_state_path(ckpt_dir: Path, step: int) -> Path:
    """The distributed-checkpoint folder that replaces the train-state file of a step under FSDP2."""
    return Path(ckpt_dir) / f"step_{step:07d}.train_state.dcp"


def save_checkpoint(
    ckpt_dir: Path, step: int, ema_state: dict[str, torch.Tensor], metadata: dict[str, Any], train_state: dict
) -> Path:
    """Write both files of a checkpoint atomically; returns the weights file.

    A non-finite EMA is refused (ValueError) before anything is written; a failed write is a
    :class:`CheckpointWriteError` naming the file.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    weights_path, state_path = checkpoint_paths(ckpt_dir, step)
    refuse_non_finite(ema_state, step)
    _write(state_path, lambda tmp: _torch_save(train_state, tmp))
    save_weights(weights_path, ema_state, {**metadata, "step": step,
                                           STATE_DIGEST_KEY: train_state_digests(ckpt_dir, step)})
    return weights_path


def refuse_non_finite(ema_state: dict[str, torch.Tensor], step: int) -> None:
    """A ValueError when the EMA weights hold a NaN or infinity (they would poison every later checkpoint)."""
    bad = first_non_finite(ema_state)
    if bad is not None:
        raise ValueError(f"the EMA weights became non-finite ({bad}) by step {step}; not saving them")


def _torch_save(obj: Any, tmp: Path) -> None:
    # Through a Python file object: a failed write surfaces as OSError (errno), not as torch's generic message.
    with open(tmp, "wb") as f:
        torch.save(obj, f)


def _write(path: Path, write: Callable[[Path], None]) -> None:
    try:
        atomic_write(path, write)
    except (OSError, SafetensorError, RuntimeError) as err:
        raise CheckpointWriteError(write_failure(path, err)) from err


def write_failure(path: Path, err: BaseException) -> str:
    """One line for a failed write: "no space left on device" when that is the cause, else the reason."""
    code = getattr(err, "errno", None)
    # safetensors and torch's checkpoint errors carry the OS error only inside their message
    found = re.search(r"os error (\d+)|\[Errno (\d+)\]", str(err))
    code = code if code is not None else int(found.group(1) or found.group(2)) if found else None
    if code == errno.ENOSPC:
        return f"no space left on device while writing {path}"
    reason = getattr(err, "strerror", None) or (str(err).splitlines()[0] if str(err) else type(err).__name__)
    return f"cannot write {path} ({reason})"


# ----------------------------------------------------------------------------
# Integrity of train-state files.


def train_state_digests(ckpt_dir: Path, step: int) -> dict[str, str]:
    """{path relative to ``ckpt_dir``: sha256} of the step's train-state file or every file of its DCP folder."""
    ckpt_dir = Path(ckpt_dir)
    state_file, folder = checkpoint_paths(ckpt_dir, step)[1], sharded_state_path(ckpt_dir, step)
    files = [state_file] if state_file.is_file() else sorted(p for p in folder.iterdir() if p.is_file())
    return {str(p.relative_to(ckpt_dir)): file_sha256(p) for p in files}


def verify_checkpoint(ckpt_dir: Path, step: int) -> None:
    """Read the step's weights (checksum, finiteness) and check every train-state file against its checksum.

    Raises :class:`CorruptCheckpointError` naming the first broken file. Checkpoints written before checksums
    existed are checked for readability only.
    """
    ckpt_dir = Path(ckpt_dir)
    weights_path, _ = checkpoint_paths(ckpt_dir, step)
    folder = sharded_state_path(ckpt_dir, step)
    if folder.is_dir():  # its metadata is a pickle: read it the safe way before anything else
        from .dcp_safe import read_metadata

        read_metadata(folder / ".metadata")
    tensors, meta = load_weights(weights_path)
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CorruptCheckpointError(f"{weights_path} holds non-finite EMA weights ({bad})")
    for rel, digest in (meta.get(STATE_DIGEST_KEY) or {}).items():
        path = ckpt_dir / rel
        if not path.is_file():
            raise CorruptCheckpointError(f"{path} is missing (listed in {weights_path.name})")
        if file_sha256(path) != digest:
            raise CorruptCheckpointError(f"{path} is corrupt: its contents do not match the checksum written "
                                         f"with {weights_path.name}")


def select_resume_step(ckpt_dir: Path, requested: int | None, warn: Callable[[str], None]) -> int:
    """The step to resume from: ``requested`` if given (it must be intact), else the newest intact checkpoint.

    Each broken newer checkpoint is reported through ``warn`` (one line naming the file) and skipped.
    """
    steps = saved_steps(ckpt_dir)
    if requested is not None:
        if requested not in steps:
            have = ", ".join(map(str, steps)) or "none"
            raise ValueError(f"cannot resume: no complete checkpoint for step {requested} in {ckpt_dir} "
                             f"(complete steps: {have})")
        verify_checkpoint(ckpt_dir, requested)
        return requested
    problems = []
    for step in reversed(steps):
        try:
            verify_checkpoint(ckpt_dir, step)
        except CorruptCheckpointError as err:
            problems.append(str(err))
            continue
        for problem in problems:
            warn(f"{problem}; resuming from step {step} instead")
        return step
    if problems:
        raise ValueError(f"cannot resume: no intact checkpoint in {ckpt_dir}; newest: {problems[0]}")
    raise ValueError(f"cannot resume: {Path(ckpt_dir).parent} has no complete checkpoint under checkpoints/")


def load_train_state(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a train-state file with ``weights_only=True`` (no pickled code); an unreadable one names itself."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CorruptCheckpointError(f"{path} is not a readable train state ({reason})") from None
    except Exception as err:  # weights_only refusals (pickle.UnpicklingError) and other malformed pickles
        raise CorruptCheckpointError(f"{path} is refused: {str(err).splitlines()[0]}") from None


# ----------------------------------------------------------------------------
# Listing, pruning, leftovers.


def saved_steps(ckpt_dir: Path) -> list[int]:
    """Steps that have both checkpoint files (or the weights and a sharded-state folder), ascending."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    steps = []
    for entry in ckpt_dir.iterdir():
        match = _STEP_FILE.match(entry.name)
        step = int(match.group(1)) if match else -1
        if match and (checkpoint_paths(ckpt_dir, step)[1].is_file() or sharded_state_path(ckpt_dir, step).is_dir()):
            steps.append(step)
    return sorted(steps)


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps everything)."""
    if keep <= 0:
        return
    for step in saved_steps(ckpt_dir)[:-keep]:
        for path in checkpoint_paths(ckpt_dir, step):
            path.unlink(missing_ok=True)
        shutil.rmtree(sharded_state_path(ckpt_dir, step), ignore_errors=True)


def remove_leftovers(ckpt_dir: Path) -> list[Path]:
    """Delete what killed writes leave: temporary files and folders, and train states without their weights.

    A save writes the train state first and the weights last, so only a train-state half (file or ``.dcp``
    folder) can be a killed write's leftover; a weights file alone is kept (a copied or hand-made EMA file).
    Call only while holding the run folder's lock (another job's write in progress looks the same).
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    removed = []
    for entry in sorted(ckpt_dir.iterdir()):
        match = _ANY_STEP_FILE.match(entry.name)
        orphan = (match is not None and match.group(2) != "safetensors"
                  and not (ckpt_dir / f"step_{match.group(1)}.safetensors").is_file())
        temporary = is_temp_file(entry.name) or (entry.name.startswith(".") and entry.name.endswith(".dcp.tmp"))
        if orphan or temporary:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry)
    return removed
