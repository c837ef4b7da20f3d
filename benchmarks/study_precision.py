"""bf16 autocast versus fp32 for the study's models: training throughput, and whether the FID ranking changes.

Throughput: each entry of a study preset (planned at equal training FLOPs exactly as ``ditlab study`` plans it)
trains a few steps under fp32 and under bf16 autocast, alternating, ``--repeats`` times; the median img/s of the
timed windows (the first window, with its warm-up, is dropped) is reported per precision.

Ranking (``--ranking``): the same study (``--ranking-preset``, default quick, changed by ``--ranking-overrides``
JSON) is run once per precision, into ``OUT/fp32`` and ``OUT/bf16``, and the entries' final FIDs are ranked in
each. ``--fp32-from DIR`` takes the fp32 side from an existing fp32 study instead of running it: its FIDs at the
ranking study's final budget, which are the same numbers a fresh run would give when every setting but ``steps``,
``evals``, ``share_ratios`` agrees (training to a budget does not depend on the steps that follow it: constant
learning rate, same data order, same EMA). On a shared machine the times are disturbed by other work: say so
when quoting them.

Examples:
  python benchmarks/study_precision.py --preset cpu --data fashion-mnist
  python benchmarks/study_precision.py --preset cpu --ranking --ranking-preset quick --out runs/precision
  python benchmarks/study_precision.py --skip-throughput --ranking --ranking-preset cpu \
      --ranking-overrides '{"steps": 800, "evals": 1, "share_ratios": []}' --fp32-from studies/fmnist-cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

from ditlab import study
from ditlab.train import train


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu", help="study preset whose entries are timed")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--entries", default=",".join(study.DEFAULT_ENTRIES))
    p.add_argument("--window", type=int, default=10, help="steps per timed window")
    p.add_argument("--windows", type=int, default=3, help="windows per run (the first is warm-up, dropped)")
    p.add_argument("--repeats", type=int, default=2, help="alternating fp32/bf16 runs per entry")
    p.add_argument("--ranking", action="store_true", help="also run a whole study per precision and rank FIDs")
    p.add_argument("--ranking-preset", default="quick")
    p.add_argument("--ranking-overrides", type=json.loads, default={}, help="JSON StudyConfig fields of the ranking "
                   "studies, e.g. '{\"steps\": 800, \"evals\": 1, \"share_ratios\": []}'")
    p.add_argument("--fp32-from", default=None, help="an existing fp32 study folder supplying the fp32 FIDs")
    p.add_argument("--skip-throughput", action="store_true", help="only the ranking")
    p.add_argument("--out", default="runs/study-precision", help="folder of the ranking studies")
    p.add_argument("--json", default=None, help="write every number here")
    return p.parse_args()


def timed_img_per_s(cfg: study.StudyConfig, plan: dict, precision: str, window: int, windows: int) -> list[float]:
    """img/s of the timed windows of a short fresh run of one entry."""
    with tempfile.TemporaryDirectory() as tmp:
        tc = study.entry_train_config(cfg, plan, Path(tmp), window * windows)
        tc.precision, tc.log_every, tc.ckpt_every, tc.progress = precision, window, 10**9, False
        rows = train(tc).metrics
    return [r["img_per_s"] for r in rows[1:]]


def throughput(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    cfg = study.resolve_config({"preset": args.preset, "data": args.data, "entries": args.entries,
                                "progress": False, "device": "cpu"})
    plans = study.plan_entries(cfg, study.data_shape(cfg))
    out = {}
    for name, plan in plans.items():
        speeds: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for repeat in range(args.repeats):
            for precision in ("fp32", "bf16") if repeat % 2 == 0 else ("bf16", "fp32"):  # neither always first
                speeds[precision] += timed_img_per_s(cfg, plan, precision, args.window, args.windows)
        out[name] = {p: statistics.median(v) for p, v in speeds.items()}
        out[name]["bf16_speedup"] = out[name]["bf16"] / out[name]["fp32"]
        print(f"{name}: fp32 {out[name]['fp32']:.1f} img/s, bf16 {out[name]['bf16']:.1f} img/s "
              f"({out[name]['bf16_speedup']:.2f}x)", flush=True)
    return out


UNTIED = ("steps", "evals", "share_ratios")  # settings that do not change the numbers at a shared budget


def fp32_state(cfg: study.StudyConfig, folder: str) -> dict:
    """The state of an existing fp32 study whose numbers at ``cfg``'s final budget are ``cfg``'s (checked)."""
    state = study.load_state(Path(folder))
    wanted = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k not in (*study._RUNTIME_FIELDS, *UNTIED)}
    differ = sorted(k for k, v in wanted.items() if state["config"].get(k) != v)
    if differ:
        raise SystemExit(f"--fp32-from {folder}: settings differ from the ranking study's: {', '.join(differ)}")
    return state


def ranking(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    finals = {}
    for precision in ("fp32", "bf16"):
        cfg = study.resolve_config({"preset": args.ranking_preset, "data": args.data, "entries": args.entries,
                                    **args.ranking_overrides, "precision": precision,
                                    "out": str(Path(args.out) / precision), "device": "cpu"})
        if precision == "fp32" and args.fp32_from:
            state = fp32_state(cfg, args.fp32_from)
        else:
            study.run_study(cfg)
            state = study.load_state(cfg.out)
        finals[precision] = {n: r["evals"][str(cfg.budgets[-1])]["fid"] for n, r in state["results"].items()
                             if str(cfg.budgets[-1]) in r.get("evals", {})}
        order = sorted(finals[precision], key=finals[precision].get)
        print(f"{precision}: final FID " + ", ".join(f"{n} {finals[precision][n]:.2f}" for n in order), flush=True)
    same = sorted(finals["fp32"], key=finals["fp32"].get) == sorted(finals["bf16"], key=finals["bf16"].get)
    print(f"ranking {'unchanged' if same else 'CHANGED'} by bf16 autocast")
    return finals


def main() -> None:
    args = parse_args()
    record = {"preset": args.preset, "data": args.data}
    if not args.skip_throughput:
        record["throughput"] = throughput(args)
    if args.ranking:
        record["ranking"] = ranking(args)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
