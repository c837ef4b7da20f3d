"""Bad input to `ditlab sample`, `evaluate`, the image reader and `--model-args` (issue 14); CPU, about a minute.

Each case runs the command line in this process (``ditlab.cli.main``) inside a fresh folder of damaged files made
here with numpy, Pillow and torch (``evaluate`` with a stand-in Inception: the sample files are what is tested).
A case is one of two kinds:

- refuse: held = exit code 2, exactly one ``ditlab: error:`` line on stderr, no traceback, and no ``.npz`` written;
- accept (inputs that used to be read wrongly): held = exit code 0 and the result checked (16-bit and float images
  scaled, a symlinked class folder listed once, a 1-channel checkpoint sampled as gray RGB).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/reliability_inputs.py [--out f.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ditlab.cli import main as cli_main
from ditlab.data.images import ImageFolder
from ditlab.models.registry import create_model
from ditlab.objectives import DiffusionConfig
from ditlab.train.checkpoint import save_weights

TINY = dict(input_size=8, patch_size=4, hidden_size=32, depth=1, num_heads=2, num_classes=3)
SAMPLE = ["sample", "--num-images", "3", "--batch-size", "2", "--sampler-steps", "ddim2", "--vae", "identity",
          "--progress", "false", "--device", "cpu", "--out", "w/o.npz"]
EXTRACT = ["extract-latents", "--vae", "identity", "--image-size", "8", "--progress", "false", "--out", "w/lat"]


def checkpoint(path: str, channels: int = 3, scale: float = 1.0) -> None:
    torch.manual_seed(0)
    model = create_model("DiT", **TINY, in_channels=channels)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.final_layer.linear.weight.mul_(scale)
    save_weights(Path(path), model.state_dict(), {"family": "DiT", "config": dataclasses.asdict(model.config),
                                                  "diffusion": dataclasses.asdict(DiffusionConfig())})


def image_folder(name: str, extra: Callable[[Path], None] = lambda root: None) -> str:
    for c in ("a", "b"):
        (Path(name) / c).mkdir(parents=True)
        for i in range(2):
            pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(Path(name) / c / f"{i}.png")
    extra(Path(name))
    return name


def make_files() -> None:
    checkpoint("good.safetensors")
    checkpoint("nan.safetensors", scale=float("nan"))
    checkpoint("huge.safetensors", scale=1e38)  # finite weights whose images overflow to NaN
    checkpoint("gray.safetensors", channels=1)
    good = Path("good.safetensors").read_bytes()
    Path("empty.safetensors").write_bytes(b"")
    Path("trunc.safetensors").write_bytes(good[: len(good) // 2])
    Path("garbage.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    Path("badjson.safetensors").write_bytes(good[:8] + b"{garbage!!!!" + good[20:])
    Image.new("RGB", (8, 8)).save("photo.png")
    Image.new("RGB", (8, 8)).save("photo.jpg")
    Path("notes.txt").write_text("hello")
    with open("arr.npz", "wb") as f:
        np.savez(f, arr_0=np.zeros(3))
    Path("adir").mkdir()
    with open("ref.npz", "wb") as f:
        np.savez(f, np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
    with open("noarr0.npz", "wb") as f:
        np.savez(f, images=np.zeros((6, 8, 8, 3), np.uint8))
    with open("float.npz", "wb") as f:
        np.savez(f, np.random.default_rng(1).random((6, 8, 8, 3), np.float32))
    with open("gray.npz", "wb") as f:
        np.savez(f, np.zeros((6, 8, 8), np.uint8))
    np.save("plain.npy", np.zeros((6, 8, 8, 3), np.uint8))
    Path("plain.npy").rename("plain.npz")
    Path("notzip.npz").write_text("hello")
    Path("emptyf.npz").write_bytes(b"")
    Path("truncz.npz").write_bytes(Path("ref.npz").read_bytes()[:300])
    ramp = np.arange(64, dtype=np.float64).reshape(8, 8) / 63
    image_folder("img16", lambda r: Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(r / "a/g16.png"))
    image_folder("imgf", lambda r: Image.fromarray(ramp.astype(np.float32)).save(r / "a/f.tif"))
    image_folder("imgf255", lambda r: Image.fromarray(np.full((8, 8), 200, np.float32)).save(r / "a/f.tif"))
    image_folder("imglink", lambda r: (r / "c").symlink_to("a"))
    image_folder("imgloop", lambda r: (r / "a" / "up").symlink_to(".."))
    image_folder("imgempty", lambda r: (r / "z").mkdir())
    image_folder("imgbad", lambda r: (r / "a" / "bad.png").write_bytes(b"nope"))
    image_folder("imgtrunc", lambda r: (r / "a" / "t.png").write_bytes((r / "a" / "0.png").read_bytes()[:60]))


def _ramp_read(root: str, name: str) -> bool:
    expected = np.round(np.arange(64).reshape(8, 8) / 63 * 255)
    ds = ImageFolder(root, 8)
    index = [p.name for p, _ in ds.files].index(name)
    return bool(np.abs(ds.load(index)[0][..., 0] - expected).max() <= 1)


def _gray_npz() -> bool:
    with np.load("w/o.npz") as f:
        images = f["arr_0"]
    return images.shape == (3, 8, 8, 3) and bool((images[..., 0] == images[..., 2]).all())


def _listed_once(root: str, classes: list[str]) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageFolder(root, 8)
    return ds.classes == classes and len({p.resolve() for p, _ in ds.files}) == len(ds) == 2 * len(classes)


REFUSE = [[*SAMPLE, "--checkpoint", "good.safetensors", *extra] for extra in (
    ["--cfg-scale", "nan"], ["--cfg-scale", "inf"], ["--cfg-scale=-inf"], ["--eta", "nan"], ["--cfg-power", "nan"],
    ["--cfg-power", "0"], ["--cfg-interval", "nan,1"], ["--cfg-interval", "1,0.3"], ["--seed", "-1"],
    ["--seed", str(2**64 - 1)], ["--guided-channels", "4"], ["--share", "uniform:2"], ["--cfg-interval", "0.3,1"],
    ["--eta", "0.5", "--sampler-steps", "4"], ["--labels", "9"], ["--out", "adir"], ["--out", "notes.txt/o.npz"],
    ["--out", "/proc/self/o.npz"], ["--png-dir", "notes.txt"], ["--png-dir", "/proc/self/png"], ["--grid", "adir"],
    ["--grid", "w/grid.npz"], ["--grid", "/proc/self/g.png"])]
REFUSE += [[*SAMPLE, "--checkpoint", name] for name in (
    "nan.safetensors", "huge.safetensors", "empty.safetensors", "trunc.safetensors", "garbage.safetensors",
    "badjson.safetensors", "photo.png", "photo.jpg", "notes.txt", "arr.npz", "adir")]
REFUSE += [["evaluate", "--samples", f"{name}.npz", "--reference", "ref.npz", "--inception", "ref.npz", "--progress",
            "false"]
           for name in ("noarr0", "notzip", "plain", "float", "gray", "emptyf", "truncz")]
REFUSE += [["train", "--run-dir", "w/run", "--steps", "1", "--model-args", '{"depth": "six"}'],
           ["train", "--run-dir", "w/run", "--steps", "1", "--model-args", '{"learn_sigma": 1}'],
           ["demo", "--run-dir", "w/run", "--steps", "1", "--model-args", '{"depth": 1.5}']]
REFUSE += [[*EXTRACT, "--data", name] for name in ("imgf255", "imgempty", "imgbad", "imgtrunc")]
ACCEPT: list[tuple[list[str], Callable[[], bool]]] = [
    ([*SAMPLE, "--checkpoint", "gray.safetensors"], _gray_npz),
    ([*EXTRACT, "--data", "img16"], lambda: _ramp_read("img16", "g16.png")),
    ([*EXTRACT, "--data", "imgf"], lambda: _ramp_read("imgf", "f.tif")),
    ([*EXTRACT, "--data", "imglink"], lambda: _listed_once("imglink", ["a", "b"])),
    ([*EXTRACT, "--data", "imgloop"], lambda: _listed_once("imgloop", ["a", "b"])),
]


def _shown(argv: list[str]) -> str:
    """The case without the flags every sample / extract-latents case shares."""
    for common in (SAMPLE, EXTRACT):
        if argv[: len(common)] == common:
            return " ".join([common[0], *argv[len(common):]])
    return " ".join(argv)


class StandInInception(torch.nn.Module):
    """Six random features of 8x8 images: enough for ``evaluate`` to read the reference; the cases are the samples."""

    has_logits = True

    def __init__(self, weights_file: str) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8 * 8 * 3, 6, generator=torch.Generator().manual_seed(0)))
        self.weights_file = weights_file

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.float().flatten(1) / 255 @ self.w
        return {"pool": x, "spatial": x[:, :3], "logits": x[:, :5]}


def stub_inception() -> None:
    import ditlab.eval.score as score

    score.load_fid_inception = lambda path, *args, **kwargs: StandInInception(str(path))
    score.cached_inception.cache_clear()


def run_case(argv: list[str]) -> tuple[int | str, list[str]]:
    """(exit code, or the escaping exception's name; stderr lines other than warnings)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code: int | str = cli_main(argv)
        except BaseException as exc:  # a traceback: counted as not held
            code = type(exc).__name__
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    rows, home = [], Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # contextlib.chdir needs Python 3.11
        make_files()
        stub_inception()
        cases = [(argv, None) for argv in REFUSE] + ACCEPT
        for argv, check in cases:
            Path("w").mkdir()
            code, lines = run_case(argv)
            if check is None:
                held = code == 2 and len(lines) == 1 and lines[0].startswith("ditlab: error: ") \
                    and not Path("w/o.npz").exists()
            else:
                held = code == 0 and check()
            rows.append({"argv": _shown(argv),
                         "kind": "refuse" if check is None else "accept", "exit": code, "held": held,
                         "message": lines[-1] if lines else ""})
            print(f"{'held' if held else 'NOT HELD':8s} exit={code!s:3s} {rows[-1]['argv'][:70]:70s} "
                  f"{rows[-1]['message'][:110]}", flush=True)
            shutil.rmtree("w")
        os.chdir(home)
    summary = {kind: f"{sum(r['held'] for r in rows if r['kind'] == kind)}/{sum(r['kind'] == kind for r in rows)}"
               for kind in ("refuse", "accept")}
    print(f"held: refused in one line {summary['refuse']}, accepted and read correctly {summary['accept']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "cases": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
