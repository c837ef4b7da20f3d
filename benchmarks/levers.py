"""The speed levers of DiT-XL/2 (and the other XL presets), measured one at a time, reported as a table and a plot.

``run`` measures a suite row by row. Each row is one fresh process of ``benchmarks/train_throughput.py`` (ours)
or ``benchmarks/official_dit.py`` (the official DiT code from --official-dir), so no row inherits another's
allocator peak or compile cache. Within a ladder every row adds one lever to the row above it; the first row
of ``train`` and ``sample`` is the official code and the second is ours set up like it, so the table shows
what each lever gave and the total against the official code, all from one run on one machine.

Suites (default sizes: DiT-XL/2 at 256 px, the official per-GPU batch 32 = 256 / 8 GPUs for training,
sample.py's 8 images for sampling):

  train          official train.py -> ours like it -> SDPA -> bf16 autocast -> fused AdamW -> no per-step
                 host sync -> torch.compile per block -> batch 64 -> batch 128 -> activation checkpointing
                 at batch 256 (a memory lever: it costs speed)
  sample         official sample.py -> ours like it -> SDPA -> bf16 -> torch.compile per block ->
                 CUDA graphs -> separate cond/uncond passes (the lever, reversed) -> batch 64 -> batch 256
  mdt-attention  MDTv2-XL/2 training (full + masked pass), bf16: relative bias through SDPA (an additive mask:
                 the memory-efficient kernel) vs FlexAttention (the bias read inside the fused kernel)
  families       DiT-XL/2, MDTv2-XL/2, DDT-XL/2-22en6de and DiffuSSM-XL, each with its own objective, at the
                 fastest settings of the ladders (bf16, SDPA, fused AdamW, compile per block)

``report`` turns the JSON lines into a Markdown table (img/s, gain over the row above, gain over the official
row, MFU, peak memory) and, with --plot, a bar chart of img/s per lever.

Examples:
  # On an H100 (each suite fits in one 10-minute command; --rows picks a slice of a suite):
  python benchmarks/levers.py run --suite train --out results/levers.jsonl
  python benchmarks/levers.py run --suite sample --out results/levers.jsonl
  python benchmarks/levers.py report results/levers.jsonl --plot benchmarks/levers.png
  # Anywhere: a few-second version of a suite on tiny models, to check the pipeline:
  python benchmarks/levers.py run --suite train --smoke --out /tmp/smoke.jsonl
  python benchmarks/levers.py run --suite all --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OURS, OFFICIAL = "train_throughput.py", "official_dit.py"
DIT = ["--model", "DiT-XL/2", "--image-size", "256"]
FAST = ["--precision", "bf16", "--attention", "sdpa", "--adamw", "fused", "--compile"]


@dataclass(frozen=True)
class Row:
    """One measurement: which script, with which arguments, under which lever name."""

    suite: str
    lever: str
    script: str
    args: tuple[str, ...]
    cuda_only: bool = False  # a lever that does not exist on CPU (CUDA graphs)


Change = dict[str, str | bool]  # flag -> new value; True adds a switch, False removes it


def ladder(suite: str, first: Row, base: list[str], steps: list[tuple[str, Change, bool]]) -> list[Row]:
    """``first`` (the official code), then our rows, each one ``base`` with every change so far applied."""
    rows, args = [first], list(base)
    for lever, change, cuda_only in steps:
        args = apply(args, change)
        rows.append(Row(suite, lever, OURS, tuple(args), cuda_only))
    return rows


def train_ladder() -> list[Row]:
    """Each row adds one lever to the one above; the first two are the official code and ours set up like it."""
    base = [*DIT, "--mode", "train", "--batch-size", "32"]
    official = Row("train", "official train.py (fp32+TF32, DDP, EMA, loss.item())", OFFICIAL, tuple(base))
    like_official: Change = {"--precision": "fp32", "--tf32": True, "--attention": "explicit", "--adamw": "foreach",
                             "--sync-every-step": True}
    return ladder("train", official, base, [
        ("ours, official settings (fp32+TF32, explicit attention, foreach AdamW, per-step sync)", like_official,
         False),
        ("+ SDPA attention", {"--attention": "sdpa"}, False),
        ("+ bf16 autocast (fp32 master weights)", {"--precision": "bf16"}, False),
        ("+ fused AdamW", {"--adamw": "fused"}, False),
        ("+ no per-step host sync (ditlab train's loop)", {"--sync-every-step": False}, False),
        ("+ torch.compile per block", {"--compile": True}, False),
        ("+ batch 64", {"--batch-size": "64"}, False),
        ("+ batch 128", {"--batch-size": "128"}, False),
        ("+ activation checkpointing, batch 256", {"--grad-checkpointing": True, "--batch-size": "256"}, False),
    ])


def sample_ladder() -> list[Row]:
    """Guided 250-step DDPM sampling, per-step timing (img/s/run = img/s / 250)."""
    base = [*DIT, "--mode", "sample", "--sample-batch-size", "8", "--sample-steps", "250", "--cfg-scale", "4"]
    official = Row("sample", "official sample.py (fp32+TF32, explicit attention)", OFFICIAL, tuple(base))
    return ladder("sample", official, base, [
        ("ours, official settings (fp32+TF32, explicit attention, one 2N forward)",
         {"--precision": "fp32", "--tf32": True, "--attention": "explicit"}, False),
        ("+ SDPA attention", {"--attention": "sdpa"}, False),
        ("+ bf16 autocast", {"--precision": "bf16"}, False),
        ("+ torch.compile per block", {"--compile": True}, False),
        ("+ CUDA graphs (compile mode reduce-overhead)", {"--cuda-graphs": True}, True),
        ("  (lever off: separate cond/uncond passes)", {"--cfg-batch": "separate"}, True),
        ("+ batch 64", {"--cfg-batch": "joint", "--sample-batch-size": "64"}, True),
        ("+ batch 256", {"--sample-batch-size": "256"}, True),
    ])


def mdt_attention_rows() -> list[Row]:
    mdt = ["--model", "MDTv2-XL/2", "--image-size", "256", "--mode", "train", "--batch-size", "32",
           "--precision", "bf16", "--adamw", "fused"]
    return [Row("mdt-attention", "MDTv2-XL/2, relative bias via SDPA (additive mask)", OURS,
                tuple([*mdt, "--attention", "sdpa"])),
            Row("mdt-attention", "MDTv2-XL/2, relative bias via FlexAttention", OURS,
                tuple([*mdt, "--attention", "flex"]))]


def family_rows() -> list[Row]:
    presets = ("DiT-XL/2", "MDTv2-XL/2", "DDT-XL/2-22en6de", "DiffuSSM-XL")
    return [Row("families", preset, OURS, ("--model", preset, "--image-size", "256", "--mode", "both",
                                           "--batch-size", "32", "--sample-batch-size", "32", *FAST))
            for preset in presets]


SUITES = {"train": train_ladder, "sample": sample_ladder, "mdt-attention": mdt_attention_rows,
          "families": family_rows}


def apply(args: list[str], change: Change) -> list[str]:
    """``args`` with ``change`` applied: a string replaces (or adds) the flag's value, True adds a switch,
    False removes it."""
    out = list(args)
    for flag, value in change.items():
        if value is False:
            out = [a for a in out if a != flag]
        elif value is True:
            out += [] if flag in out else [flag]
        elif flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


# ----------------------------------------------------------------------------
# Running.

TINY = {"DiT-XL/2": "DiT-S/2", "MDTv2-XL/2": "MDTv2-S/2", "DDT-XL/2-22en6de": "DDT-B/2-8en4de",
        "DiffuSSM-XL": "DiffuSSM-S"}


def smoke_args(row: Row) -> tuple[str, ...]:
    """The row on a small preset of the same family at latent 8 (DiffuSSM: 4), batch 4 (sampling 2), two timed
    iterations, on the CPU; no --compile (minutes on a CPU: the smoke run checks the plumbing, not speed)."""
    model = row.args[row.args.index("--model") + 1]
    change: Change = {"--model": TINY[model], "--input-size": "4" if "DiffuSSM" in model else "8",
                      "--compile": False, "--device": "cpu", "--threads": "1", "--warmup": "1", "--iters": "2"}
    change |= {flag: size for flag, size in (("--batch-size", "4"), ("--sample-batch-size", "2")) if flag in row.args}
    return tuple(apply(list(row.args), change))


def rows_of(suite: str, slice_text: str | None) -> list[Row]:
    rows = [r for name in (SUITES if suite == "all" else [suite]) for r in SUITES[name]()]
    if slice_text:
        start, _, stop = slice_text.partition(":")
        rows = rows[int(start or 0): int(stop) if stop else None]
    return rows


def command(row: Row, smoke: bool, official_dir: str | None) -> list[str]:
    args = list(smoke_args(row) if smoke else row.args)
    if row.script == OFFICIAL and official_dir:
        args += ["--official-dir", official_dir]
    return [sys.executable, str(HERE / row.script), *args]


def run_row(row: Row, cmd: list[str], out: Path, timeout: float) -> dict[str, Any] | None:
    """Run one row's process; append its JSON rows to ``out`` tagged with suite and lever; None if it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        tic = time.perf_counter()
        try:
            done = subprocess.run([*cmd, "--json", str(rows_file)], capture_output=True, text=True, timeout=timeout,
                                  env=os.environ | {"PYTHONUNBUFFERED": "1"})
            error = done.stderr.strip().splitlines()[-1] if done.returncode else None
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:g} s"
        lines = rows_file.read_text().splitlines() if rows_file.is_file() else []
    if error or not lines:
        print(f"  FAILED: {error or 'no result row'}", flush=True)
        record = {"suite": row.suite, "lever": row.lever, "script": row.script, "failed": error or "no result row",
                  "command": " ".join(cmd)}
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return None
    with out.open("a") as f:
        for line in lines:
            f.write(json.dumps({"suite": row.suite, "lever": row.lever, "script": row.script} | json.loads(line))
                    + "\n")
    last = json.loads(lines[-1])["result"]
    print(f"  {last['img_per_s']:.2f} img/s, peak {last['peak_memory_gib']:.1f} GiB "
          f"({time.perf_counter() - tic:.0f} s)", flush=True)
    return last


def run(args: argparse.Namespace) -> int:
    rows = rows_of(args.suite, args.rows)
    cuda = not args.smoke and args.device != "cpu"
    failures = 0
    if not args.dry_run:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        cmd = command(row, args.smoke, args.official_dir)
        if row.cuda_only and not cuda:
            print(f"[{i}] {row.suite}: {row.lever} -- skipped (CUDA only)")
            continue
        print(f"[{i}] {row.suite}: {row.lever}\n  {' '.join(cmd[1:])}", flush=True)
        if not args.dry_run:
            failures += run_row(row, cmd, args.out, args.timeout) is None
    return 1 if failures else 0


# ----------------------------------------------------------------------------
# Reporting.


def load_rows(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every JSON line of ``paths``; a missing file or a bad line is a one-line ValueError naming it."""
    rows = []
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"{path} does not exist (write it with: levers.py run --out {path})")
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not a JSON line ({err.msg}); expected levers.py run output") \
                    from None
            if "suite" not in rows[-1] or not ("result" in rows[-1] or "failed" in rows[-1]):
                raise ValueError(f"{path}:{number} is not a levers.py row (no suite/result); was it written by "
                                 "levers.py run?")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table per suite: img/s, gain over the row above and over the suite's official row."""
    out = []
    for suite in dict.fromkeys(r["suite"] for r in rows):
        group = [r for r in rows if r["suite"] == suite]
        first = group[0]
        out += [f"### {suite}", "",
                f"{first.get('machine', '?')}, torch {first.get('torch', '?')}, {first.get('date', '?')[:10]}", "",
                "| lever | model | step | batch | img/s | × row above | × official | MFU | peak GiB |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        official = next((r["result"]["img_per_s"] for r in group
                         if r.get("implementation") == "official" and "result" in r), None)
        previous: dict[str, float] = {}
        for r in group:
            if "failed" in r:
                out.append(f"| {r['lever']} | | - | - | failed: {r['failed'][:60]} | | | | |")
                continue
            res = r["result"]
            step, speed = res["measurement"], res["img_per_s"]
            above = f"{speed / previous[step]:.2f}" if step in previous else "-"
            vs_official = f"{speed / official:.2f}" if official and r.get("implementation") != "official" else "-"
            mfu = f"{100 * res['mfu']:.1f}%" if res.get("mfu") is not None else "-"
            model = r.get("settings", {}).get("model", "?")
            out.append(f"| {r['lever']} | {model} | {step} | {res['batch']} | {speed:.2f} | {above} | {vs_official} "
                       f"| {mfu} | {res['peak_memory_gib']:.1f} |")
            previous[step] = speed
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """One horizontal bar chart per suite: img/s of every row, the official code's bar in grey."""
    import matplotlib  # optional: pip install ditlab[bench]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = list(dict.fromkeys(r["suite"] for r in rows if "result" in r))
    fig, axes = plt.subplots(len(suites), 1, figsize=(10, 0.45 * len(rows) + 1.5 * len(suites)), squeeze=False)
    for ax, suite in zip(axes[:, 0], suites, strict=True):
        group = [r for r in rows if r["suite"] == suite and "result" in r]
        labels = [f"{r['lever']} [{r['result']['measurement']}]" for r in group][::-1]
        speeds = [r["result"]["img_per_s"] for r in group][::-1]
        colours = ["0.6" if r.get("implementation") == "official" else "C0" for r in group][::-1]
        ax.barh(labels, speeds, color=colours)
        for y, speed in enumerate(speeds):
            ax.text(speed, y, f" {speed:.1f}", va="center", fontsize=8)
        ax.set_xlabel("img/s (sampling: guided images advanced one step)")
        ax.set_title(f"{suite}: {group[0].get('machine', '?')}, {group[0].get('date', '?')[:10]}")
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def report(args: argparse.Namespace) -> int:
    try:
        rows = load_rows(args.files)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not rows:
        print("no rows in " + ", ".join(map(str, args.files)), file=sys.stderr)
        return 1
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    paragraphs = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(description=paragraphs[0], epilog="\n\n".join(paragraphs[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="measure a suite, one process per row, appending JSON lines to --out")
    r.add_argument("--suite", choices=(*SUITES, "all"), default="train")
    r.add_argument("--rows", metavar="A:B", help="only rows A..B-1 of the suite (Python slice), to split a suite")
    r.add_argument("--out", type=Path, default=Path("results/levers.jsonl"), help="JSON lines (appended)")
    r.add_argument("--official-dir", default=None, help="checkout of facebookresearch/DiT (official_dit.py default)")
    r.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu skips the CUDA-only levers")
    r.add_argument("--smoke", action="store_true", help="tiny models on the CPU, 2 iterations: checks the plumbing")
    r.add_argument("--timeout", type=float, default=600, help="seconds per row before it counts as failed")
    r.add_argument("--dry-run", action="store_true", help="print the commands only")
    p = sub.add_parser("report", help="Markdown table (and --plot PNG) from JSON lines written by run")
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--plot", type=Path, default=None, help="write a bar chart PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.command == "run" and args.rows and not re.fullmatch(r"\d*:\d*", args.rows):
        parser.error(f"--rows {args.rows!r} must be a slice A:B of row numbers (e.g. 0:5, 5:, :3)")
    if args.command == "run" and args.device == "cuda" and not args.smoke and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda, but torch.cuda.is_available() is False; use --smoke or --device cpu")
    return run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
