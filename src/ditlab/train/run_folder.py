"""Claiming a run folder before any work: its type and permissions, a lock, leftovers, the step to resume from.

Everything here runs on rank 0 only; the outcome (or the one-line error) reaches every rank.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from ..utils.distributed import DistInfo, broadcast_object
from ..utils.files import atomic_write, check_writable_folder, folder_lock
from . import checkpoint as ckpt
from .config import TrainConfig


def warn(message: str) -> None:
    """One warning line on stderr (rank 0 calls it)."""
    print(f"ditlab: warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def claim_run_dir(config: TrainConfig, resume: bool, resume_step: int | None,
                  info: DistInfo) -> Iterator[tuple[Path, int]]:
    """Hold the run folder for the whole run; yields (run folder, step to start from).

    A fresh run needs a folder without checkpoints, and one whose config.json (if any) is this run's config; a
    resumed run starts from ``resume_step`` or the newest intact checkpoint, which must lie below
    ``config.steps``. config.json is written only once these checks pass.
    """
    run_dir = Path(config.run_dir)
    with contextlib.ExitStack() as stack:
        error, start = None, 0
        if info.is_main:
            try:
                if resume and not run_dir.is_dir():
                    raise ValueError(f"cannot resume: {run_dir} does not exist")
                check_writable_folder(run_dir, "run folder")
                stack.enter_context(folder_lock(run_dir, warn))
                start = _prepare(config, run_dir, resume, resume_step)
            except ValueError as err:
                error = str(err)
            except OSError as err:  # lock, mkdir, leftover removal: still one line, and the other ranks must hear
                error = f"run folder {run_dir} cannot be used ({err})"
        error, start = broadcast_object((error, start))  # type: ignore[misc]
        if error is not None:
            raise ValueError(error)
        yield run_dir, start


def _prepare(config: TrainConfig, run_dir: Path, resume: bool, resume_step: int | None) -> int:
    for name in ("checkpoints", "samples", "tb"):
        check_writable_folder(run_dir / name, "run folder part")
    for name in ("config.json", "metrics.jsonl"):
        if (run_dir / name).exists() and not (run_dir / name).is_file():
            raise ValueError(f"{run_dir / name} is not a file; the run folder {run_dir} cannot be used")
    ckpt_dir = run_dir / "checkpoints"
    removed = ckpt.remove_leftovers(ckpt_dir)
    if removed:
        warn(f"removed {len(removed)} leftover(s) of interrupted checkpoint writes: "
             f"{', '.join(p.name for p in removed)}")
    steps = ckpt.saved_steps(ckpt_dir)
    if resume:
        if not steps:
            raise ValueError(f"cannot resume: {run_dir} has no complete checkpoint under checkpoints/")
        start = ckpt.select_resume_step(ckpt_dir, resume_step, warn)
        if config.steps <= start:
            raise ValueError(f"{run_dir} is already at step {start}; nothing to do for --steps {config.steps} "
                             f"(pass --steps above {start} to train further)")
        _set_aside_newer(ckpt_dir, start, [s for s in steps if s > start])
    else:
        if steps:
            raise ValueError(f"run folder {run_dir} already has checkpoints; resume it with --resume {run_dir}")
        _refuse_other_run(config, run_dir)
        start = 0
    atomic_write(run_dir / "config.json", lambda tmp: config.save(tmp))
    return start


def _refuse_other_run(config: TrainConfig, run_dir: Path) -> None:
    """A folder without checkpoints whose metrics.jsonl has rows may be reused only by the same config (a run
    killed before its first save); with another config the two runs' metrics would mix."""
    path, metrics = run_dir / "config.json", run_dir / "metrics.jsonl"
    if not (metrics.is_file() and metrics.stat().st_size):
        return  # nothing was logged: nothing to mix
    if not path.is_file():
        raise ValueError(f"run folder {run_dir} holds metrics.jsonl of an unknown run; use a new --run-dir")
    try:
        old = json.loads(json.dumps(TrainConfig.load(path).to_dict()))
    except ValueError:
        raise ValueError(f"run folder {run_dir} holds an unreadable config.json; use a new --run-dir") from None
    new = json.loads(json.dumps(config.to_dict()))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ValueError(f"run folder {run_dir} holds another run without checkpoints ({diffs}{more}); "
                         "use a new --run-dir or delete the folder")


def _set_aside_newer(ckpt_dir: Path, start: int, newer: list[int]) -> None:
    """Rename checkpoints after the resume step (broken, or skipped by --resume-step) out of the run's way.

    The resumed run rewrites those steps; left in place they would count as the newest when pruning.
    """
    for step in newer:
        for path in (*ckpt.checkpoint_paths(ckpt_dir, step), ckpt.sharded_state_path(ckpt_dir, step)):
            target = path.with_name(path.name + ".abandoned")
            if path.exists():
                if target.is_dir():
                    shutil.rmtree(target)
                path.replace(target) if path.is_file() else path.rename(target)
        warn(f"step {step} set aside as step_{step:07d}.*.abandoned (resuming from step {start})")
