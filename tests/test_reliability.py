"""Training runs under damage (issue 14): broken checkpoints, full disks, kills, signals, shared folders, bad input."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import socket
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from ditlab.cli import build_parser
from ditlab.cli import main as cli_main
from ditlab.train import NonFiniteLossError, TrainConfig, loop, train
from ditlab.train import checkpoint as ckpt
from ditlab.utils import distributed
from ditlab.utils.files import folder_lock
from test_train import TINY, final_state, tiny_config


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("ditlab: error")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """A 10-step run with checkpoints at 5 and 10 (copied, then damaged, by the tests)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(tiny_config(run, steps=10, ckpt_every=5))
    return run


def copy_run(straight: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "run_dir": str(run)}))
    return run


# ---- 2. corrupted checkpoints: checksum, one line naming the file, fallback, no non-finite EMA ----


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_inside_ema(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + 40: 8 + header + 44] = b"\xff\xff\xc0\x7f"  # a NaN written over the first tensor's bytes
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": truncate,
    "empty": lambda p: p.write_bytes(b""),
    "garbage header": lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header!!}" + p.read_bytes()),
    "flipped bytes in the EMA": flip_inside_ema,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_weights_fall_back_to_the_last_intact_step(straight, tmp_path, capsys, damage):
    run = copy_run(straight, tmp_path)
    broken = ckpt.checkpoint_paths(run / "checkpoints", 10)[0]
    DAMAGE[damage](broken)
    with pytest.raises(ckpt.CorruptCheckpointError, match=str(broken)):
        ckpt.load_weights(broken)
    train(tiny_config(run, steps=10, ckpt_every=5), resume=True)
    warning = [x for x in capsys.readouterr().err.splitlines() if "resuming from step 5 instead" in x]
    assert len(warning) == 1 and str(broken) in warning[0]
    # The retrained step 10 equals the undamaged one, and the broken pair was set aside.
    for key, value in final_state(straight, 10)[0].items():
        assert torch.equal(final_state(run, 10)[0][key], value), key
    assert (broken.parent / (broken.name + ".abandoned")).is_file()


def test_damaged_train_state_is_found_by_its_checksum(straight, tmp_path, capsys):
    run = copy_run(straight, tmp_path)
    state = ckpt.checkpoint_paths(run / "checkpoints", 10)[1]
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the optimizer state
    state.write_bytes(bytes(data))
    with pytest.raises(ckpt.CorruptCheckpointError, match=f"{state} is corrupt"):
        ckpt.verify_checkpoint(run / "checkpoints", 10)
    assert ckpt.select_resume_step(run / "checkpoints", None, print) == 5


def test_no_intact_checkpoint_or_a_broken_requested_one_is_one_line(straight, tmp_path, capsys):
    run = copy_run(straight, tmp_path)
    for step in (5, 10):
        truncate(ckpt.checkpoint_paths(run / "checkpoints", step)[0])
    assert cli_main(["train", "--resume", str(run), "--steps", "20"]) == 2
    line = one_error_line(capsys)
    assert "no intact checkpoint" in line and "step_0000010.safetensors" in line
    assert cli_main(["train", "--resume", str(run), "--steps", "20", "--resume-step", "5"]) == 2
    assert "step_0000005.safetensors is not a readable safetensors file" in one_error_line(capsys)
    assert cli_main(["train", "--resume", str(run), "--steps", "20", "--resume-step", "7"]) == 2
    assert "no complete checkpoint for step 7" in one_error_line(capsys)


def test_resume_step_picks_an_older_checkpoint(straight, tmp_path):
    run = copy_run(straight, tmp_path)
    train(tiny_config(run, steps=10, ckpt_every=5), resume=True, resume_step=5)
    for key, value in final_state(straight, 10)[0].items():
        assert torch.equal(final_state(run, 10)[0][key], value), key


def test_non_finite_ema_is_never_saved(tmp_path, monkeypatch):
    original = loop.EMA.update

    def update_going_nan(self, model, step):
        original(self, model, step)
        if step == 7:  # the loss stays finite: only the EMA breaks
            next(self.module.parameters()).data.fill_(float("nan"))

    monkeypatch.setattr(loop.EMA, "update", update_going_nan)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"EMA weights became non-finite .* by step 10; not saving them; "
                                                  r"stopped, the last good checkpoint is .*step_0000005"):
        train(tiny_config(run, steps=20, ckpt_every=5))
    assert ckpt.saved_steps(run / "checkpoints") == [5]
    assert not [p for p in os.listdir(run / "checkpoints") if p.startswith(".")]  # nothing half-written


# ---- 1. FSDP train state: no pickled code runs when a DCP folder is read ----


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_dcp_metadata_is_refused_without_running_it(tmp_path):
    from ditlab.train.dcp_safe import read_metadata

    marker = tmp_path / "pwned"
    evil = tmp_path / ".metadata"
    evil.write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"\.metadata is refused: pathlib.Path.touch is not a "
                                                           r"checkpoint metadata type"):
        read_metadata(evil)
    assert not marker.exists()


def test_crafted_dcp_item_is_refused_and_a_genuine_folder_loads(tmp_path):
    import torch.distributed.checkpoint as dcp

    from ditlab.train.dcp_safe import SafeFileSystemReader, SafeLoadPlanner, read_metadata

    marker = tmp_path / "pwned"
    good = {"w": torch.arange(4.0), "groups": [{"lr": 1e-3, "betas": (0.9, 0.99), "params": ["w"]}]}
    with pytest.warns(UserWarning):  # single process: torch says it saves without a process group
        dcp.save(good, checkpoint_id=str(tmp_path / "good"))
        dcp.save({**good, "groups": RunsCode(marker)}, checkpoint_id=str(tmp_path / "evil"))
    assert read_metadata(tmp_path / "good" / ".metadata").state_dict_metadata.keys() >= {"w"}
    loaded = {"w": torch.zeros(4), "groups": [{"lr": 0.0, "betas": (0.0, 0.0), "params": [""]}]}
    with pytest.warns(UserWarning):
        dcp.load(loaded, storage_reader=SafeFileSystemReader(str(tmp_path / "good")), planner=SafeLoadPlanner())
    assert torch.equal(loaded["w"], good["w"]) and loaded["groups"] == good["groups"]
    with pytest.raises(BaseException, match="checkpoint item 'groups' is refused"), pytest.warns(UserWarning):
        dcp.load({"w": torch.zeros(4), "groups": None}, storage_reader=SafeFileSystemReader(str(tmp_path / "evil")),
                 planner=SafeLoadPlanner())
    assert not marker.exists()


def test_dcp_items_are_never_loaded_with_weights_only_false(tmp_path, monkeypatch):
    """The checked object is the one stored: torch's second, unrestricted ``torch.load`` never runs."""
    import torch.distributed.checkpoint as dcp

    from ditlab.train.dcp_safe import SafeFileSystemReader, SafeLoadPlanner

    saved = {"w": torch.arange(3.0), "optim": {"groups": [{"lr": 2e-4, "params": ["w"]}], "step": 7}}
    with pytest.warns(UserWarning):
        dcp.save(saved, checkpoint_id=str(tmp_path / "ck"))
    calls, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k))
    loaded = {"w": torch.zeros(3), "optim": {"groups": [{"lr": 0.0, "params": [""]}], "step": 0}}
    with pytest.warns(UserWarning):
        dcp.load(loaded, storage_reader=SafeFileSystemReader(str(tmp_path / "ck")), planner=SafeLoadPlanner())
    assert loaded["optim"] == saved["optim"] and torch.equal(loaded["w"], saved["w"])
    assert calls and all(flag is True for flag in calls)


def test_resume_of_a_crafted_sharded_checkpoint_is_one_line(straight, tmp_path, capsys):
    """A run folder whose DCP metadata would run code: the CLI refuses it before building anything."""
    run = copy_run(straight, tmp_path)
    ckpt_dir, marker = run / "checkpoints", tmp_path / "pwned"
    for step in (5, 10):
        os.remove(ckpt.checkpoint_paths(ckpt_dir, step)[1])
        folder = ckpt.sharded_state_path(ckpt_dir, step)
        folder.mkdir()
        (folder / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
        weights = ckpt.checkpoint_paths(ckpt_dir, step)[0]
        tensors, meta = ckpt.load_weights(weights)  # the attacker also rewrites the checksums
        meta[ckpt.STATE_DIGEST_KEY] = ckpt.train_state_digests(ckpt_dir, step)
        ckpt.save_weights(weights, tensors, {k: v for k, v in meta.items() if k != ckpt.CHECKSUM_KEY})
    assert cli_main(["train", "--resume", str(run), "--steps", "20"]) == 2
    assert "pathlib.Path.touch is not a checkpoint metadata type" in one_error_line(capsys)
    assert not marker.exists()


# ---- 5. file boundaries: disk full, unusable folders, wrong types ----


@pytest.mark.parametrize("writer", ["train state", "weights"])
def test_disk_full_while_saving_is_one_line_naming_file_and_last_checkpoint(tmp_path, monkeypatch, capsys, writer):
    real_torch_save, real_save_file = ckpt._torch_save, ckpt.save_file

    def full_at_step_10(name, real):
        def write(obj, tmp, *args, **kwargs):
            if "step_0000010" in str(tmp):
                Path(tmp).write_bytes(b"partial")
                if name == "weights":  # safetensors reports the OS error inside its own exception
                    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(obj, tmp, *args, **kwargs)
        return write

    if writer == "weights":
        monkeypatch.setattr(ckpt, "save_file", full_at_step_10("weights", real_save_file))
    else:
        monkeypatch.setattr(ckpt, "_torch_save", full_at_step_10("state", real_torch_save))
    run = tmp_path / "run"
    flags = ["--run-dir", str(run), "--model", "DiT", "--model-args", json.dumps(TINY), "--global-batch", "8",
             "--steps", "10", "--ckpt-every", "5", "--sample-every", "-1", "--progress", "false", "--device", "cpu"]
    assert cli_main(["train", *flags]) == 1
    line = one_error_line(capsys)
    name = "step_0000010.safetensors" if writer == "weights" else "step_0000010.train_state.pt"
    assert f"no space left on device while writing {run / 'checkpoints' / name}" in line
    assert line.endswith(f"the last good checkpoint is {run / 'checkpoints' / 'step_0000005.safetensors'}")
    assert ckpt.saved_steps(run / "checkpoints") == [5]
    assert not [p for p in os.listdir(run / "checkpoints") if p.startswith(".")]  # no temp file left


def test_os_errors_of_rank0_only_work_become_the_one_line_error_every_rank_raises(tmp_path, monkeypatch):
    """An OSError on rank 0 is caught and broadcast like the ValueErrors there (uncaught, other ranks would hang)."""
    from ditlab.train import fsdp
    from ditlab.utils.distributed import DistInfo

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "somewhere")

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "remove_leftovers", denied)
        with pytest.raises(ValueError, match=r"run folder .* cannot be used \(\[Errno 13\] Permission denied"):
            train(tiny_config(tmp_path / "a", steps=2, ckpt_every=10))
    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "prune_checkpoints", denied)
        with pytest.raises(ckpt.CheckpointWriteError, match=r"checkpoint of step 2 failed \(\[Errno 13\]"):
            train(tiny_config(tmp_path / "b", steps=2, ckpt_every=10))
    assert "Permission denied" in fsdp._rank0_error(DistInfo(0, 0, 1, torch.device("cpu")), denied)


def test_unusable_run_folders_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "build_data_source", lambda *a: pytest.fail("work started"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"run folder .*file cannot be used: .*file is a file, not a folder"):
        train(tiny_config(tmp_path / "file"))
    with pytest.raises(ValueError, match=r"run folder .*file/run cannot be used: .*file is a file, not a folder"):
        train(tiny_config(tmp_path / "file" / "run"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").mkdir()
    with pytest.raises(ValueError, match=r"metrics.jsonl is not a file"):
        train(tiny_config(tmp_path / "run"))

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "write_bytes", read_only)  # the write probe (root ignores permission bits)
    with pytest.raises(ValueError, match=r"run folder .*ro is not writable \(Read-only file system\)"):
        train(tiny_config(tmp_path / "ro"))


def test_wrong_types_in_model_args_and_betas_are_one_line(tmp_path, capsys):
    base = ["train", "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--progress", "false"]
    assert cli_main([*base, "--model", "DiT", "--model-args", '{"depth": "4"}']) == 2
    assert one_error_line(capsys).endswith("DiT argument depth='4' must be int, not str")
    assert cli_main([*base, "--model", "DiT", "--model-args", '{"learn_sigma": 1}']) == 2
    assert "learn_sigma=1 must be bool" in one_error_line(capsys)
    with pytest.raises(SystemExit):
        cli_main([*base, "--betas", "0.9"])
    assert "'0.9' is not 2 comma-separated floats" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"betas=\(0.9, 1.5\) must be 2 numbers in \[0, 1\)"):
        TrainConfig(betas=(0.9, 1.5))
    with pytest.raises(ValueError, match=r"adan_betas=\('a', 0.9, 0.9\) must be 3 numbers"):
        TrainConfig(adan_betas=["a", 0.9, 0.9])


# ---- 6. leftovers, locks, reused folders ----


def test_leftovers_of_killed_writes_are_removed_on_resume(straight, tmp_path, capsys):
    run = copy_run(straight, tmp_path)
    ckpt_dir = run / "checkpoints"
    leftovers = [ckpt_dir / ".step_0000015.train_state.pt.tmp-4242", ckpt_dir / "step_0000015.train_state.pt",
                 ckpt_dir / ".step_0000020.safetensors.tmp-4243"]
    for path in leftovers:
        path.write_bytes(b"half")
    (ckpt_dir / ".step_0000020.train_state.dcp.tmp").mkdir()
    train(tiny_config(run, steps=15, ckpt_every=5), resume=True)
    assert "removed 4 leftover(s) of interrupted checkpoint writes" in capsys.readouterr().err
    assert sorted(os.listdir(ckpt_dir)) == [f"step_00000{s}.{k}" for s in ("05", "10", "15")
                                             for k in ("safetensors", "train_state.pt")]


def test_a_weights_file_without_train_state_survives_start_and_resume(straight, tmp_path):
    """Weights are written last, so a weights file alone is never a killed write's leftover: it is kept."""
    run = copy_run(straight, tmp_path)
    ckpt_dir = run / "checkpoints"
    alone = ckpt_dir / "step_0000007.safetensors"
    shutil.copyfile(ckpt.checkpoint_paths(ckpt_dir, 5)[0], alone)
    train(tiny_config(run, steps=15, ckpt_every=5), resume=True)
    assert alone.read_bytes() == ckpt.checkpoint_paths(straight / "checkpoints", 5)[0].read_bytes()
    fresh = tmp_path / "fresh"
    (fresh / "checkpoints").mkdir(parents=True)
    shutil.copyfile(alone, fresh / "checkpoints" / alone.name)
    train(tiny_config(fresh, steps=2, ckpt_every=10))
    assert (fresh / "checkpoints" / alone.name).is_file()


def test_two_runs_cannot_share_a_folder_and_a_stale_lock_is_reported(straight, tmp_path, capsys):
    run = copy_run(straight, tmp_path)
    with folder_lock(run, print), pytest.raises(ValueError, match=rf"{run} is in use by another job \(.* PID "
                                                                   rf"{os.getpid()}, lock {run}/.lock\)"):
        train(tiny_config(run, steps=15, ckpt_every=5), resume=True)
    (run / ".lock").write_text(f"{socket.gethostname()} PID 999999999")  # left by a killed run
    train(tiny_config(run, steps=15, ckpt_every=5), resume=True)
    assert f"stale lock {run}/.lock from {socket.gethostname()} PID 999999999 (is not running)" in \
        capsys.readouterr().err
    assert (run / ".lock").read_text() == ""  # released


def test_folder_without_checkpoints_is_not_reused_with_another_config(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, steps=4, ckpt_every=10, log_every=2))  # killed before its first checkpoint, as it were
    for path in (run / "checkpoints").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"holds another run without checkpoints \(lr: 0.001 -> 0.01\)"):
        train(tiny_config(run, steps=4, ckpt_every=10, log_every=2, lr=1e-2))
    train(tiny_config(run, steps=4, ckpt_every=10, log_every=2))  # the same run again: its old rows are dropped
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4]


# ---- 7. signals and peers ----


def send_at_step(monkeypatch, sig: int, at: int) -> None:
    original = loop.optimisation_step

    def step_then_signal(parts, x0, y, step, lr, **extra):
        stats = original(parts, x0, y, step, lr, **extra)
        if step + 1 == at:
            os.kill(os.getpid(), sig)
        return stats

    monkeypatch.setattr(loop, "optimisation_step", step_then_signal)


def test_sigterm_with_save_on_signal_saves_at_the_step_boundary(straight, tmp_path, monkeypatch, capsys):
    send_at_step(monkeypatch, signal.SIGTERM, at=3)
    handler = signal.getsignal(signal.SIGTERM)
    run = tmp_path / "run"
    flags = ["--run-dir", str(run), "--model", "DiT", "--model-args", json.dumps(TINY), "--global-batch", "8",
             "--lr", "1e-3", "--ema-decay", "0.9", "--log-every", "5", "--steps", "10", "--ckpt-every", "5",
             "--sample-every", "-1", "--progress", "false", "--device", "cpu", "--save-on-signal", "true"]
    assert cli_main(["train", *flags]) == 143
    assert f"stopped by SIGTERM at step 3; checkpoint {run}/checkpoints/step_0000003.safetensors" in \
        capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    monkeypatch.undo()
    assert cli_main(["train", "--resume", str(run), "--steps", "10"]) == 0
    for key, value in final_state(straight, 10)[0].items():  # the interruption changed nothing
        assert torch.equal(final_state(run, 10)[0][key], value), key


def test_sigterm_without_save_on_signal_stops_at_once_with_exit_143(tmp_path, monkeypatch, capsys):
    send_at_step(monkeypatch, signal.SIGTERM, at=3)
    run = tmp_path / "run"
    assert cli_main(["train", "--run-dir", str(run), "--model", "DiT", "--model-args", json.dumps(TINY),
                     "--steps", "10", "--global-batch", "8", "--sample-every", "-1", "--progress", "false",
                     "--device", "cpu"]) == 143  # a SIGTERM always exits 143; only Ctrl-C is 130
    assert capsys.readouterr().err.strip() == "ditlab: interrupted by SIGTERM"
    assert ckpt.saved_steps(run / "checkpoints") == [] and (run / ".lock").read_text() == ""


def test_dist_timeout_reaches_the_process_group(monkeypatch):
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    distributed.init_distributed("cpu", timeout_s=7.5)
    assert seen["backend"] == "gloo" and seen["timeout"].total_seconds() == 7.5
    seen.clear()
    distributed.init_distributed("cpu")
    assert "timeout" not in seen  # torch's default
    with pytest.raises(ValueError, match="dist_timeout=nan must be a finite number"):
        TrainConfig(dist_timeout=float("nan"))


# ---- 8. smaller ones ----


def test_resume_to_a_step_already_reached_changes_nothing(straight, tmp_path, capsys):
    run = copy_run(straight, tmp_path)
    before = (run / "config.json").read_text()
    assert cli_main(["train", "--resume", str(run), "--steps", "10"]) == 2
    assert one_error_line(capsys).endswith(f"{run} is already at step 10; nothing to do for --steps 10 "
                                           "(pass --steps above 10 to train further)")
    assert (run / "config.json").read_text() == before


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "tpu"}, "device='tpu' is not one of cpu, cuda"),
    ({"lr": float("inf")}, "lr=inf must be a finite number > 0"),
    ({"max_grad_norm": float("nan")}, "max_grad_norm=nan must be a finite number > 0"),
    ({"warmup_steps": -1}, "warmup_steps=-1 must be an integer >= 0"),
    ({"keep_checkpoints": -2}, "keep_checkpoints=-2 must be an integer >= 0"),
    ({"sample_every": -5}, "sample_every=-5 must be an integer >= -1"),
    ({"seed": 10**21}, r"seed=1000000000000000000000 must be an integer in \[0, 2\*\*63 - 1\]"),
    ({"seed": 1e21}, r"seed=1e\+21 must be an integer"),
    ({"weight_decay": -0.1}, "weight_decay=-0.1 must be a finite number >= 0"),
    ({"sample_steps": "dimm50"}, "bad sampler 'dimm50' for a Gaussian diffusion model"),
    ({"sample_steps": "sde0", "objective": "flow"}, "bad sampler 'sde0' for a flow-matching model"),
])
def test_out_of_range_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_largest_seed_trains(tmp_path):
    result = train(tiny_config(tmp_path / "run", steps=1, ckpt_every=1, seed=2**63 - 1))
    assert result.step == 1 and torch.isfinite(torch.tensor(result.final_loss))


def test_train_help_lists_the_data_forms_and_skip_bad(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert '"digits"' in text and '"images:DIR"' in text and '"latents:DIR"' in text
    assert "--skip-bad" in text and "--save-on-signal" in text and "--dist-timeout" in text and "--resume-step" in text


def test_train_skips_bad_images_when_asked(tmp_path):
    from test_images import make_folder

    images = make_folder(tmp_path / "images", per_class=2, size=(12, 12))
    (images / "cat" / "broken.png").write_bytes(b"not a png")
    config = tiny_config(tmp_path / "run", data=f"images:{images}", image_size=8, steps=1, ckpt_every=1,
                         global_batch=5, model_args={**TINY, "patch_size": 2})  # step 1 reads every file
    with pytest.raises(ValueError, match=r"broken.png: not a readable image .* or pass --skip-bad"):
        train(config)
    result = train(tiny_config(tmp_path / "run2", data=f"images:{images}", image_size=8, steps=1, ckpt_every=1,
                               global_batch=2, model_args={**TINY, "patch_size": 2}, skip_bad=True))
    assert result.step == 1


def test_missing_vae_of_a_latents_run_is_found_at_start(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    from ditlab.data.latents import run_extract
    from test_images import make_folder
    from test_latents import config as extract_config
    from test_vae import tiny_vae

    tiny_vae().save_pretrained(tmp_path / "vae")
    images = make_folder(tmp_path / "images", per_class=2, size=(16, 16))
    run_extract(extract_config(images, str(tmp_path / "vae"), tmp_path / "lat"))
    shutil.rmtree(tmp_path / "vae")
    monkeypatch.setattr(loop, "optimisation_step", lambda *a, **k: pytest.fail("a step ran before the VAE was checked"))
    config = tiny_config(tmp_path / "run", data=f"latents:{tmp_path / 'lat'}", sample_every=0,
                         model_args={**TINY, "patch_size": 1})
    with pytest.raises(FileNotFoundError, match="VAE .*vae"):
        train(config)


def test_checkpoint_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        train(tiny_config(tmp_path / "run", steps=1, ckpt_every=1))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert modes == {"step_0000001.safetensors": 0o644, "step_0000001.train_state.pt": 0o644}
    assert (tmp_path / "run" / "config.json").stat().st_mode & 0o777 == 0o644
