"""The report of a ``ditlab study`` folder, made from its ``study.json`` alone (``ditlab study --report-only``).

Writes ``report.md`` (settings, the comparison table, DDT's encoder-sharing table, failures, the study's own
timing) and SVG line plots (FID against training PFLOP and against training wall-clock, loss curves, FID against
sampling speed for encoder sharing). SVG is plain text: no plotting library is needed and GitHub renders it.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT, MARGIN = 560, 360, 60


# ----------------------------------------------------------------------------
# SVG plots.


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}"


def line_plot(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str) -> str:
    """An SVG line plot with markers, one line per series, axes with round ticks and a legend."""
    points = [p for pts in series.values() for p in pts if all(math.isfinite(v) for v in p)]
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    w, h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN

    def sx(x: float) -> float:
        return MARGIN + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return MARGIN + h - (y - y0) / (y1 - y0) * h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="13">{escape(title)}</text>',
           f'<rect x="{MARGIN}" y="{MARGIN}" width="{w}" height="{h}" fill="none" stroke="#444"/>']
    for t in _ticks(x0, x1):
        out.append(f'<text x="{sx(t):.1f}" y="{MARGIN + h + 15}" text-anchor="middle">{_label(t)}</text>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{MARGIN}" x2="{MARGIN + w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
                   f'<text x="{MARGIN - 5}" y="{sy(t) + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    out.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 15}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="15" y="{HEIGHT / 2}" text-anchor="middle" transform="rotate(-90 15 {HEIGHT / 2})">'
               f'{escape(ylabel)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(pts))
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in pts]
        out.append(f'<text x="{MARGIN + w - 5}" y="{MARGIN + 15 + 14 * i}" text-anchor="end" fill="{colour}">'
                   f'{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _evals(result: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(result.get("evals", {}).values(), key=lambda e: e["step"])


def _wall_at(result: dict[str, Any], step: int) -> float | None:
    """Training seconds up to ``step`` (the cumulative time logged at the first row at or after it)."""
    return next((sec for s, sec in result.get("seconds_curve", []) if s >= step), None)


def plots(state: dict[str, Any]) -> dict[str, str]:
    """{file name: SVG text} of the study's plots (empty plots are left out)."""
    results = state["results"]
    fid_flop = {n: [(e["train_pflop"], e["fid"]) for e in _evals(r)] for n, r in results.items()}
    fid_wall = {n: [(_wall_at(r, e["step"]) / 60, e["fid"]) for e in _evals(r) if _wall_at(r, e["step"])]
                for n, r in results.items()}
    loss = {n: [tuple(p) for p in r.get("loss_curve", [])] for n, r in results.items()}
    sharing = {n: [(s["sample_img_per_s"], s["fid"]) for s in r["sharing"].values()]
               for n, r in results.items() if r.get("sharing")}
    made = {
        "fid_vs_pflop.svg": line_plot(fid_flop, "FID vs training compute", "training PFLOP", "FID"),
        "fid_vs_wallclock.svg": line_plot(fid_wall, "FID vs training wall-clock", "training minutes", "FID"),
        "loss.svg": line_plot(loss, "training loss (objectives differ: compare shapes, not levels)", "step",
                              "loss"),
        "sharing.svg": line_plot(sharing, "encoder sharing: FID vs sampling speed", "sampling img/s", "FID"),
    }
    return {k: v for k, v in made.items() if v}


# ----------------------------------------------------------------------------
# Markdown.


def _num(value: Any, fmt: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def _minutes(seconds: float | None) -> str:
    return "-" if not seconds else f"{seconds / 60:.1f} min"


def comparison_table(state: dict[str, Any]) -> list[str]:
    """The main table: one row per entry, FID at every budget."""
    budgets = sorted({int(s) for r in state["results"].values() for s in r.get("evals", {})})
    head = ["entry", "params (M)", "GMACs/img (fwd)", "train GMACs/img", "vs ref", "train img/s",
            "median-window img/s", "train wall"]
    head += [f"FID @{b}" for b in budgets] + ["final FID", "sFID", "Precision", "Recall", "sampling img/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, plan in state["plan"].items():
        result = state["results"].get(name, {})
        evals = result.get("evals", {})
        final = evals.get(str(max(budgets))) if budgets else None
        cells = [name, _num(plan["params"] / 1e6), _num(plan["forward_gmacs"], ".4f"),
                 _num(plan["train_gmacs"], ".4f"), _num(plan["ratio_to_reference"], ".3f"),
                 _num(result.get("train_img_per_s"), ".1f"), _num(result.get("train_img_per_s_median"), ".1f"),
                 _minutes(result.get("train_seconds"))]
        cells += [_num(evals.get(str(b), {}).get("fid")) for b in budgets]
        cells += [_num((final or {}).get(k), f) for k, f in
                  (("fid", ".2f"), ("sfid", ".2f"), ("precision", ".3f"), ("recall", ".3f"),
                   ("sample_img_per_s", ".1f"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def sharing_table(state: dict[str, Any]) -> list[str]:
    lines = []
    for name, result in state["results"].items():
        rows = result.get("sharing") or {}
        if not rows:
            continue
        base = rows.get("none", {}).get("sample_img_per_s")
        lines += [f"**{name}** at step {next(iter(rows.values()))['step']}:", "",
                  "| sharing | encoder calls | FID | sFID | sampling img/s | speed-up | DP calibration |",
                  "|---|---|---|---|---|---|---|"]
        for spec, row in rows.items():
            speed = row["sample_img_per_s"] / base if base else None
            lines.append(f"| {spec} | {row['encoder_calls']} | {_num(row['fid'])} | {_num(row['sfid'])} | "
                         f"{_num(row['sample_img_per_s'], '.1f')} | {_num(speed)}x | "
                         f"{_num(row.get('calibration_seconds'), '.1f')} s |")
        lines.append("")
    return lines


def settings_lines(state: dict[str, Any]) -> list[str]:
    """Every setting: the shared ones, then each entry's recipe, model_args and sizing."""
    cfg = state["config"]
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | `{json.dumps(v)}` |" for k, v in cfg.items()]
    lines += ["", f"Data: {json.dumps(state.get('data', {}))}; budgets (steps): "
              f"{sorted({int(s) for r in state['results'].values() for s in r.get('evals', {})})}", "",
              "| entry | model | objective | optimizer | lr | betas | max_grad_norm | objective settings | "
              "model_args | sizing | recipe source |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, plan in state["plan"].items():
        spec = plan["spec"]
        objective = {**spec["diffusion"], **spec["flow"]}
        lr = spec["lr"] * cfg.get("lr_scale", 1.0)
        lines.append(f"| {name} | {spec['model']} | {spec['objective']} | {spec['optimizer']} | {lr:g} | "
                     f"{tuple(spec['betas'])} | {spec['max_grad_norm']} | `{json.dumps(objective)}` | "
                     f"`{json.dumps(plan['model_args'])}` | {plan['sizing']} | {spec['source']} |")
    return lines


def _fids(state: dict[str, Any], name: str) -> dict[int, float]:
    return {int(k): v["fid"] for k, v in state["results"].get(name, {}).get("evals", {}).items()}


def _convergence(state: dict[str, Any], name: str, claim: str) -> str | None:
    """How often ``name`` beats DiT's FID at the shared budgets."""
    mine, dit = _fids(state, name), _fids(state, "DiT")
    shared = sorted(set(mine) & set(dit))
    if not shared:
        return None
    wins = [b for b in shared if mine[b] < dit[b]]
    verdict = "consistent with the claim" if len(wins) == len(shared) else (
        "not reproduced" if not wins else "mixed")
    pairs = ", ".join(f"{b}: {mine[b]:.2f} vs {dit[b]:.2f}" for b in shared)
    return (f"- {claim}: {name}'s FID is below DiT's at {len(wins)} of {len(shared)} budgets "
            f"(step: {name} vs DiT, {pairs}): {verdict} at this scale.")


def _sharing_claim(state: dict[str, Any]) -> str | None:
    rows = state["results"].get("DDT", {}).get("sharing") or {}
    base = rows.get("none")
    if not base or len(rows) < 2:
        return None
    parts = [f"{spec}: {row['sample_img_per_s'] / base['sample_img_per_s']:.2f}x img/s, FID "
             f"{row['fid'] - base['fid']:+.2f}" for spec, row in rows.items() if spec != "none"]
    return ("- DDT, ~2x sampling speed-up from encoder sharing at a small FID cost: against no sharing (FID "
            f"{base['fid']:.2f}), " + "; ".join(parts) + ". Whether a FID change is small must be judged against "
            "the FID differences between budgets and seeds, which this run does not measure.")


def claims_lines(state: dict[str, Any]) -> list[str]:
    """The papers' claims next to this run's numbers (facts only; no claim is judged without its numbers)."""
    lines = [_convergence(state, "MDTv2", "MDT converges faster than DiT"),
             _convergence(state, "DDT", "DDT converges faster than DiT"), _sharing_claim(state)]
    if "DiffuSSM" in state["plan"] and "DiT" in state["plan"]:
        ssm, dit = _fids(state, "DiffuSSM"), _fids(state, "DiT")
        final = max(set(ssm) & set(dit), default=None)
        at = f" (final FID {ssm[final]:.2f} vs DiT {dit[final]:.2f})" if final else ""
        lines.append("- DiffuSSM, lower Gflops for comparable quality: not testable as stated here, because the "
                     "study equalises training FLOPs by design; it compares quality at equal compute instead" + at
                     + ".")
    return [line for line in lines if line]


def timing_lines(state: dict[str, Any]) -> list[str]:
    t = state.get("timing", {})
    lines = [f"- {k.replace('_', ' ')}: {_minutes(v)}" for k, v in t.items() if isinstance(v, (int, float))]
    for key, value in t.items():
        if isinstance(value, dict):
            lines.append(f"- {key}: `{json.dumps(value)}`")
    rows = [e for r in state["results"].values() for e in r.get("evals", {}).values()]
    rows += [e for r in state["results"].values() for k, e in r.get("sharing", {}).items() if k != "none"]
    scored = [e for e in rows if e.get("score_seconds")]
    if scored:
        images, seconds = sum(e["samples"] for e in scored), sum(e["score_seconds"] for e in scored)
        lines.append(f"- scoring (Inception features and metrics; the first also computes the reference's "
                     f"statistics): {images} sample images in {_minutes(seconds)}, {images / seconds:.1f} img/s")
    return lines


def _processes_note(state: dict[str, Any]) -> str:
    counts = sorted({e.get("processes", 1) for r in state["results"].values() for e in _evals(r)})
    if counts in ([], [1]):
        return ""
    return (f" Sampling ran split over {' or '.join(map(str, counts))} processes (torchrun): its img/s counts "
            "them together.")


def render(state: dict[str, Any]) -> str:
    """The whole report.md text."""
    cfg = state["config"]
    lines = [f"# ditlab study: {', '.join(state['plan'])} at equal training compute", "",
             f"Data `{cfg['data']}` at {cfg['image_size']} px, {cfg['steps']} steps of {cfg['global_batch']} "
             f"images, FID/sFID/Precision/Recall from {cfg['fid_samples']} samples ({cfg['sampler_steps']} "
             f"sampler steps, guidance {cfg['cfg_scale']}) against {cfg['reference_images'] or 'all'} real "
             "training images, with the FID Inception. GMACs are multiply-accumulates (the papers' Gflops); "
             "training cost is 3x forward, MDT's masked pass included." + _processes_note(state), "",
             *comparison_table(state), "",
             "train img/s: images over the whole training wall clock (what the FID-vs-wall-clock plot uses); "
             "median-window img/s: the median logged window's rate, which other load on a shared machine "
             "disturbs less.", ""]
    failed = {n: r for n, r in state["results"].items() if r.get("status") == "failed"}
    if failed:
        lines += ["**Failed entries:**", ""] + [f"- {n}: {r['error']}" for n, r in failed.items()] + [""]
    for name in plots(state):
        lines.append(f"![{name}]({name})")
    grids = [(n, e.get("grid")) for n, r in state["results"].items() for e in _evals(r)[-1:] if e.get("grid")]
    if grids:
        lines += ["", "Samples at the final budget (one row per class):", ""]
        lines += [f"**{n}**\n\n![{n}]({g})\n" for n, g in grids]
    if any(r.get("sharing") for r in state["results"].values()):
        lines += ["", "## Encoder sharing (uniform R, statistical DP with K = ceil(N / R))", "", *sharing_table(state)]
    claims = claims_lines(state)
    if claims:
        lines += ["", "## The papers' claims at this scale (one seed; no error bars)", "", *claims]
    lines += ["", "## Settings", "", *settings_lines(state), "", "## Time spent by the study", "",
              *timing_lines(state), ""]
    return "\n".join(lines)


def write_report(out: str | Path, state: dict[str, Any] | None = None) -> Path:
    """Write report.md and the plots into the study folder (from ``state`` or its study.json)."""
    from .study import load_state

    out = Path(out)
    state = load_state(out) if state is None else state
    for name, svg in plots(state).items():
        (out / name).write_text(svg)
    path = out / "report.md"
    path.write_text(render(state))
    return path
