"""torchrun DDP on CPU (gloo, 2 processes): the loop runs, resumes exactly, and writes one run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ditlab.train import checkpoint as ckpt

TINY = json.dumps({"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 4})


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ditlab",
           "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def common(run_dir: Path, steps: int) -> list[str]:
    return ["--run-dir", str(run_dir), "--model", "DiT", "--model-args", TINY, "--global-batch", "8",
            "--steps", str(steps), "--lr", "1e-3", "--ema-decay", "0.9", "--log-every", "2", "--ckpt-every", "2",
            "--sample-every", "-1", "--progress", "false", "--device", "cpu"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_two_processes_resume_exactly(tmp_path):
    straight = torchrun(*common(tmp_path / "a", 4))
    assert straight.returncode == 0, straight.stderr[-2000:]
    first = torchrun(*common(tmp_path / "b", 2))
    assert first.returncode == 0, first.stderr[-2000:]
    second = torchrun("--resume", str(tmp_path / "b"), "--steps", "4", "--progress", "false")
    assert second.returncode == 0, second.stderr[-2000:]
    a, _ = ckpt.load_weights(ckpt.checkpoint_paths(tmp_path / "a" / "checkpoints", 4)[0])
    b, _ = ckpt.load_weights(ckpt.checkpoint_paths(tmp_path / "b" / "checkpoints", 4)[0])
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Only rank 0 logs: one row per logging step, not two.
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
