"""Reliability of `ditlab train` under kills, signals, damaged files and bad input (issue 14); CPU, a few minutes.

Every trial is checked against an uninterrupted reference run of the same tiny config:

- kill -9 at a random moment of training, and kill -9 inside a checkpoint write (the child's writers pause
  after writing the temporary file, before its rename, so the kill lands there), then ``--resume`` until done:
  held = every restart succeeded unaided and the final EMA and train state equal the reference bit for bit;
- SIGTERM with ``--save-on-signal`` (held = exit 143, a checkpoint at the stop step, exact final result) and
  without it (held = exit 143 and one line);
- damaged newest checkpoints (truncated, empty, garbage header, flipped bytes in the EMA or the train state,
  a crafted pickle as DCP metadata): held = one warning naming the file, fallback, exact final result, no code run;
- disk full while saving (ENOSPC injected), two runs in one folder, a frozen distributed peer with
  ``--dist-timeout``, and bad command lines: held = exit code and exactly one ``error`` line, no traceback.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/reliability.py [--kills 8] [--write-kills 8] [--out f.json]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ditlab.cli import main as cli_main
from ditlab.train import checkpoint as ckpt

TINY = {"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 4}
STEPS, CKPT_EVERY = 40, 4

# The child: `ditlab train` whose checkpoint writers pause after writing each temporary file (WRITE_PAUSE s).
CHILD = """
import os, sys, time
from ditlab.train import checkpoint as c
pause = float(os.environ.get("WRITE_PAUSE", "0"))
if pause:
    for name in ("_torch_save", "save_file"):
        def slow(*args, _real=getattr(c, name), **kwargs):
            _real(*args, **kwargs)
            time.sleep(pause)
        setattr(c, name, slow)
from ditlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def flags(run: Path) -> list[str]:
    return ["--run-dir", str(run), "--model", "DiT", "--model-args", json.dumps(TINY), "--global-batch", "8",
            "--steps", str(STEPS), "--lr", "1e-3", "--ema-decay", "0.9", "--log-every", "1",
            "--ckpt-every", str(CKPT_EVERY), "--sample-every", "-1", "--progress", "false", "--device", "cpu"]


def child(script: Path, args: list[str], pause: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WRITE_PAUSE": str(pause)}
    return subprocess.Popen([sys.executable, str(script), "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def final_equal(run: Path, ref: Path) -> bool:
    if STEPS not in ckpt.saved_steps(run / "checkpoints"):
        return False
    a_w, b_w = (ckpt.load_weights(ckpt.checkpoint_paths(r / "checkpoints", STEPS)[0])[0] for r in (run, ref))
    a_s, b_s = (ckpt.load_train_state(ckpt.checkpoint_paths(r / "checkpoints", STEPS)[1]) for r in (run, ref))
    same_ema = a_w.keys() == b_w.keys() and all(torch.equal(a_w[k], b_w[k]) for k in a_w)
    same_model = all(torch.equal(a_s["model"][k], b_s["model"][k]) for k in a_s["model"])
    return same_ema and same_model


def rows(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def start_args(run: Path) -> list[str] | None:
    """A fresh start until a checkpoint exists, then --resume (what a job script would do after a crash); None
    once the final checkpoint exists (a kill after the last save)."""
    steps = ckpt.saved_steps(run / "checkpoints")
    if steps and steps[-1] == STEPS:
        return None
    return ["--resume", str(run), "--steps", str(STEPS)] if steps else flags(run)


def temp_files(run: Path, pid: int) -> set[str]:
    """The temporary files process ``pid`` is writing (atomic_write names them .<name>.tmp-<pid>)."""
    folder = run / "checkpoints"
    return {p.name for p in folder.glob(f".*.tmp-{pid}")} if folder.is_dir() else set()


def kill_cycle(script: Path, run: Path, ref: Path, kills: int, in_write: bool, rng: random.Random) -> dict:
    """Start, kill -9, restart ... ``kills`` times, then let it finish; returns what held.

    In-write kills land while the n-th temporary file of the attempt exists (n = 1 or 2: inside the train-state
    write or inside the weights write of a checkpoint pair); the others land at a random moment of training.
    """
    kills_done, landed, stale, removed, errors = 0, 0, 0, 0, []
    for _ in range(kills):
        if start_args(run) is None:
            break
        proc = child(script, start_args(run), pause=0.4 if in_write else 0.0)
        start_rows, seen, nth = rows(run), set(), rng.choice([1, 2])
        while proc.poll() is None:
            if in_write:
                seen |= temp_files(run, proc.pid)
                if len(seen) >= nth:
                    time.sleep(0.05)
                    break
            elif rows(run) > start_rows:
                time.sleep(rng.uniform(0.0, 0.15))
                break
            time.sleep(0.003)
        if proc.poll() is not None:  # it ended on its own: finished, or failed to restart
            if proc.returncode != 0:
                errors.append(proc.communicate()[1].strip().splitlines()[-1:])
            break
        landed += bool(temp_files(run, proc.pid))
        proc.kill()
        _, err = proc.communicate()
        stale += "stale lock" in err
        removed += sum(int(x.split("removed ")[1].split()[0]) for x in err.splitlines() if "leftover(s)" in x)
        kills_done += 1
    if start_args(run) is not None:
        proc = child(script, start_args(run))
        _, err = proc.communicate(timeout=300)
        stale += "stale lock" in err
        removed += sum(int(x.split("removed ")[1].split()[0]) for x in err.splitlines() if "leftover(s)" in x)
        if proc.returncode != 0:
            errors.append(err.strip().splitlines()[-1:])
    return {"kills": kills_done, "kills_with_a_temp_file_open": landed if in_write else None,
            "failed_restarts": errors, "exact": final_equal(run, ref), "stale_lock_warnings": stale,
            "leftovers_removed": removed}


def sigterm_trials(script: Path, tmp: Path, ref: Path, n: int, rng: random.Random) -> dict:
    held = 0
    for i in range(n):
        run = tmp / f"term{i}"
        proc = child(script, [*flags(run), "--save-on-signal", "true"])
        while proc.poll() is None and rows(run) < 2 + i * 3:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.1))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        stop = [int(line.split(" at step ")[1].split(";")[0]) for line in err.splitlines() if "stopped by" in line]
        saved = bool(stop) and stop[0] in ckpt.saved_steps(run / "checkpoints")
        again = subprocess.run([sys.executable, str(script), "train", "--resume", str(run), "--steps", str(STEPS)],
                               capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        held += proc.returncode == 143 and saved and again.returncode == 0 and final_equal(run, ref)
    run = tmp / "term_plain"
    proc = child(script, flags(run))
    while proc.poll() is None and rows(run) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    plain = proc.returncode == 143 and "ditlab: interrupted by SIGTERM" in err and "Traceback" not in err
    return {"save_on_signal": n, "save_on_signal_held": held, "plain_sigterm_held": plain}


# ---- damaged checkpoints (in process) ----


def _flip_ema(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[8 + int.from_bytes(data[:8], "little") + 40] ^= 0xFF
    p.write_bytes(bytes(data))


def _flip_state(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


class _Touch:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def damage_trials(tmp: Path, ref: Path) -> dict:
    weights = lambda run: ckpt.checkpoint_paths(run / "checkpoints", STEPS)[0]  # noqa: E731
    state = lambda run: ckpt.checkpoint_paths(run / "checkpoints", STEPS)[1]  # noqa: E731
    damages = {
        "truncated weights": lambda r: weights(r).write_bytes(weights(r).read_bytes()[:1000]),
        "empty weights": lambda r: weights(r).write_bytes(b""),
        "garbage header": lambda r: weights(r).write_bytes(b"\xff" * 8 + weights(r).read_bytes()[8:]),
        "flipped byte in EMA": lambda r: _flip_ema(weights(r)),
        "flipped bit in train state": lambda r: _flip_state(state(r)),
        "truncated train state": lambda r: state(r).write_bytes(state(r).read_bytes()[:5000]),
    }
    results = {}
    for name, damage in damages.items():
        run = tmp / name.replace(" ", "_")
        shutil.copytree(ref, run)
        cfg = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**cfg, "run_dir": str(run)}))
        damage(run)  # the newest step; the resume falls back one checkpoint and trains the last steps again
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli_main(["train", "--resume", str(run), "--steps", str(STEPS), "--progress", "false"])
        warned = [x for x in err.getvalue().splitlines() if "instead" in x]
        named = len(warned) == 1 and f"step_{STEPS:07d}" in warned[0]
        results[name] = bool(code == 0 and named and final_equal(run, ref))
    run, marker = tmp / "crafted_dcp", tmp / "code_ran"
    shutil.copytree(ref, run)
    for step in ckpt.saved_steps(run / "checkpoints"):
        ckpt.checkpoint_paths(run / "checkpoints", step)[1].unlink()
        folder = ckpt.sharded_state_path(run / "checkpoints", step)
        folder.mkdir()
        (folder / ".metadata").write_bytes(pickle.dumps(_Touch(marker)))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(["train", "--resume", str(run), "--steps", str(STEPS + 4)])
    lines = [x for x in err.getvalue().splitlines() if x.startswith("ditlab: error")]
    results["crafted pickle as DCP metadata"] = code == 2 and len(lines) == 1 and not marker.exists()
    return results


# ---- one-line failures ----


def one_line(argv: list[str], code: int) -> bool:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            got = cli_main(argv)
        except SystemExit as exit_:  # argparse: usage line + one error line
            got = exit_.code
    lines = [x for x in err.getvalue().splitlines() if "error:" in x]
    return got == code and len(lines) == 1 and "Traceback" not in err.getvalue()


def input_trials(tmp: Path, ref: Path) -> dict:
    base = ["train", "--run-dir", str(tmp / "bad"), "--model", "DiT", "--model-args", json.dumps(TINY),
            "--device", "cpu", "--progress", "false", "--steps", "2", "--sample-every", "-1"]
    (tmp / "a_file").write_text("x")
    cases = {
        "--device tpu": [*base, "--device", "tpu"], "--lr inf": [*base, "--lr", "inf"],
        "--max-grad-norm nan": [*base, "--max-grad-norm", "nan"], "--warmup-steps -1": [*base, "--warmup-steps", "-1"],
        "--keep-checkpoints -1": [*base, "--keep-checkpoints", "-1"],
        "--sample-every -5": [*base, "--sample-every", "-5"], "--seed 2**63": [*base, "--seed", str(2**63)],
        "--seed 1e21": [*base, "--seed", "1e21"], "--betas 0.9": [*base, "--betas", "0.9"],
        "--betas 0.9,x": [*base, "--betas", "0.9,x"], "model-args depth '4'": [*base, "--model-args", '{"depth": "4"}'],
        "run dir is a file": [*base, "--run-dir", str(tmp / "a_file")],
        "run dir below a file": [*base, "--run-dir", str(tmp / "a_file" / "run")],
        "--resume at the reached step": ["train", "--resume", str(ref), "--steps", str(STEPS)],
        "--resume-step that does not exist": ["train", "--resume", str(ref), "--steps", "99", "--resume-step", "3"],
        "--data images:missing": [*base, "--data", f"images:{tmp / 'missing'}"],
    }
    return {name: one_line(argv, 2) for name, argv in cases.items()}


def disk_full_trial(tmp: Path) -> bool:
    real = ckpt._torch_save

    def full(obj, path):
        if f"step_{2 * CKPT_EVERY:07d}" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, path)

    ckpt._torch_save = full
    try:
        run = tmp / "full"
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli_main(["train", *flags(run)])
    finally:
        ckpt._torch_save = real
    line = [x for x in err.getvalue().splitlines() if x.startswith("ditlab: error")]
    return code == 1 and len(line) == 1 and "no space left on device while writing" in line[0] and \
        f"last good checkpoint is {run}/checkpoints/step_{CKPT_EVERY:07d}" in line[0]


def lock_trial(script: Path, tmp: Path) -> bool:
    run = tmp / "shared"
    first = child(script, [*flags(run), "--steps", "100000"])
    while first.poll() is None and rows(run) < 1:
        time.sleep(0.01)
    second = subprocess.run([sys.executable, str(script), "train", *flags(run)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    first.kill()
    first.communicate()
    lines = [x for x in second.stderr.splitlines() if "error:" in x]
    return second.returncode == 2 and len(lines) == 1 and "is in use by another job" in lines[0]


FROZEN_PEER = """
import sys, time
import torch.distributed as dist
from ditlab.utils.distributed import init_distributed
info = init_distributed("cpu", timeout_s=float(sys.argv[1]))
if info.rank == 1:
    time.sleep(60)
start = time.time()
try:
    dist.barrier()
except Exception:
    print(f"rank 0 gave up after {time.time() - start:.1f} s", flush=True)
    sys.exit(3)
"""


def frozen_peer_trial(tmp: Path, timeout_s: float = 5.0) -> dict:
    script = tmp / "frozen.py"
    script.write_text(FROZEN_PEER)
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(timeout_s)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    gave_up = [x for x in proc.stdout.splitlines() if "gave up" in x]
    return {"timeout_s": timeout_s, "rank0": gave_up[0] if gave_up else None,
            "job_wall_s": round(time.time() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--write-kills", type=int, default=8)
    parser.add_argument("--sigterms", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    torch.set_num_threads(1)
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        script = tmp / "child.py"
        script.write_text(CHILD)
        ref = tmp / "reference"
        tic = time.time()
        assert subprocess.run([sys.executable, str(script), "train", *flags(ref)], capture_output=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode == 0
        report["kill -9 during training"] = kill_cycle(script, tmp / "killed", ref, args.kills, False, rng)
        report["kill -9 inside checkpoint writes"] = kill_cycle(script, tmp / "killed_w", ref, args.write_kills,
                                                                True, rng)
        report["SIGTERM"] = sigterm_trials(script, tmp, ref, args.sigterms, rng)
        report["damaged newest checkpoint"] = damage_trials(tmp, ref)
        report["bad command lines"] = input_trials(tmp, ref)
        report["disk full while saving"] = disk_full_trial(tmp)
        report["two runs in one folder"] = lock_trial(script, tmp)
        report["frozen peer, --dist-timeout 5"] = frozen_peer_trial(tmp)
        report["wall_s"] = round(time.time() - tic, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
