"""Broken or unsafe files given to the CLI end in one ``ditlab: error:`` line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ditlab import cli
from ditlab.interop.diffusers_dit import read_diffusers_weights
from ditlab.sample_checks import checkpoint_format


class RunsCode:
    def __reduce__(self):
        return (print, ("code ran",))


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_sample_on_an_unsafe_pickle_is_one_line(tmp_path: Path, capsys) -> None:
    torch.save({"ema": {"w": torch.ones(1)}, "extra": RunsCode()}, tmp_path / "x.pt")
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path / "o.npz")]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "refuses to unpickle" in lines[0], lines


def test_convert_of_a_damaged_safetensors_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header!!}")
    assert cli.main(["convert", str(bad), str(tmp_path / "out.pt")]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and f"{bad} is not a readable safetensors file" in lines[0], lines


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"])
def test_damaged_diffusers_weights_are_one_line(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"\x10\x00\x00\x00 not weights")
    with pytest.raises(ValueError, match=rf"{name} is not a readable weights file"):
        read_diffusers_weights(tmp_path)


def test_checkpoint_format_of_a_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"checkpoint {tmp_path} cannot be read"):
        checkpoint_format(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*missing.pt does not exist"):
        checkpoint_format(tmp_path / "missing.pt")
