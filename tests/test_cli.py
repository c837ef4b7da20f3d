"""The command line: entry points, help, flops, the demo end to end (tiny), one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ditlab.cli import main


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ditlab", *args], capture_output=True, text=True, timeout=120)


def test_python_dash_m_equals_console_script():
    proc = run_module("--help")
    assert proc.returncode == 0
    for command in ("demo", "train", "flops"):
        assert command in proc.stdout


def test_train_help_teaches(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--global-batch" in out and "images per step over all processes" in out
    assert "torchrun --standalone" in out
    assert "--min-snr-gamma" in out  # objective flags are there too


def test_flops_command_prints_the_ledger(capsys):
    assert main(["flops", "DiT-XL/2", "--image-sizes", "256", "512"]) == 0
    out = capsys.readouterr().out
    assert "675,129,632" in out and "676,014,368" in out
    assert "118.6" in out and "524.5" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "DiT-XXL/2"], "unknown model 'DiT-XXL/2'; allowed:"),
    (["train", "--precision", "fp16"], "precision='fp16' is not one of fp32, bf16"),
    (["train", "--data", "imagenet"], "data='imagenet' is not a known dataset; allowed: digits"),
    (["train", "--prediction", "score"], "unknown prediction 'score'; allowed: eps, x0, v"),
    (["flops", "DiT-XXL/2"], "unknown model 'DiT-XXL/2'"),
    (["train", "--model-args", '{"patch_size": 3}'], "input_size=16 is not divisible by patch_size=3"),
    (["demo", "--model-args", '{"depth": 1.5}', "--steps", "1"], "DiT argument depth=1.5 must be int, not float"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    code = main([*argv, "--run-dir", str(tmp_path / "r")] if argv[0] in ("train", "demo") else argv)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ditlab: error: ") and message in err[0], err


def test_demo_end_to_end_tiny(tmp_path, capsys):
    run = tmp_path / "demo"
    argv = ["demo", "--run-dir", str(run), "--steps", "20", "--samples-per-class", "2", "--sampler-steps", "ddim4",
            "--progress", "false", "--model-args", '{"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 4}']
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "class accuracy of samples:" in out and str(run / "samples.png") in out
    report = json.loads((run / "demo.json").read_text())
    assert report["status"] == "done" and report["num_samples"] == 20
    assert 0.0 <= report["class_accuracy"] <= 1.0 and report["classifier_held_out_accuracy"] > 0.9
    assert (run / "samples.png").is_file()
    # A second demo replaces its own folder; a foreign folder is left alone.
    assert main(argv) == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    assert main(["demo", "--run-dir", str(foreign)]) == 2
    assert "is not a ditlab demo folder" in capsys.readouterr().err

