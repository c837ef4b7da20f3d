"""Checkpoints: atomic writes, EMA weights as safetensors with their config, a resumable train-state file.

A checkpoint for step S is two files in ``<run>/checkpoints/``:

- ``step_<S>.safetensors``: the EMA weights with official key names, and metadata holding the model
  family, its config and the step, so ``ditlab sample`` can rebuild the model from this file alone;
- ``step_<S>.train_state.pt``: the raw weights, the optimizer state and the step (tensors and primitives
  only, loadable with ``torch.load(weights_only=True)``); under FSDP2 (``parallel="fsdp"``) it is instead the
  ``torch.distributed.checkpoint`` folder ``step_<S>.train_state.dcp/`` (see :mod:`ditlab.train.fsdp`).

Both are written to a temporary file in the same folder, fsynced and renamed, so a crash never leaves a
half-written checkpoint under a real name. The train state is written first and the weights last: a step
counts as saved only when both files exist.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..utils.files import atomic_write

_STEP_FILE = re.compile(r"^step_(\d+)\.safetensors$")


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write a state dict as safetensors; ``metadata`` values are stored as JSON strings."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by :func:`save_weights`: (state dict, decoded metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        raw_meta = f.metadata() or {}
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    meta: dict[str, Any] = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return tensors, meta


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
    """Write both files of a checkpoint atomically; returns the weights file."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    weights_path, state_path = checkpoint_paths(ckpt_dir, step)
    atomic_write(state_path, lambda tmp: torch.save(train_state, tmp))
    save_weights(weights_path, ema_state, {**metadata, "step": step})
    return weights_path


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


def load_train_state(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a train-state file with ``weights_only=True`` (no pickled code)."""
    return torch.load(path, map_location=device, weights_only=True)


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps everything)."""
    if keep <= 0:
        return
    for step in saved_steps(ckpt_dir)[:-keep]:
        for path in checkpoint_paths(ckpt_dir, step):
            path.unlink(missing_ok=True)
        shutil.rmtree(sharded_state_path(ckpt_dir, step), ignore_errors=True)
