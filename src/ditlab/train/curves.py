"""``curves.png`` of a run: loss and FID against optimizer steps and against training FLOPs (ledger), drawn
with Pillow (no plotting library needed), from the rows of ``metrics.jsonl``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..utils.files import atomic_write

PANEL = (520, 340)  # width, height of one plot
MARGIN = (70, 20, 25, 50)  # left, right, top, bottom
COLOURS = {"loss": (31, 119, 180), "fid": (214, 39, 40)}


def series(rows: Sequence[dict[str, Any]], key: str, flops_per_step: float) -> list[tuple[float, float, float]]:
    """(step, train FLOPs, value) for each row that has ``key``; a step logged twice (a resumed run that
    repeated steps) keeps its last row."""
    by_step = {int(r["step"]): float(r[key]) for r in rows if key in r and r[key] == r[key]}  # drops NaN
    return [(s, s * flops_per_step, v) for s, v in sorted(by_step.items())]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _panel(points: list[tuple[float, float]], title: str, xlabel: str, colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", PANEL, "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    left, right, top, bottom = MARGIN
    x0, x1, y0, y1 = left, PANEL[0] - right, top, PANEL[1] - bottom
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text((x0, 5), title, fill="black", font=font)
    draw.text(((x0 + x1) // 2 - 3 * len(xlabel), PANEL[1] - 18), xlabel, fill="black", font=font)
    if not points:
        draw.text((x0 + 10, (y0 + y1) // 2), "no values yet", fill="gray", font=font)
        return image
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xlo, xhi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    pad = (max(ys) - min(ys)) * 0.05 or abs(ys[0]) * 0.05 or 1.0
    ylo, yhi = min(ys) - pad, max(ys) + pad

    def at(x: float, y: float) -> tuple[float, float]:
        return x0 + (x - xlo) / (xhi - xlo) * (x1 - x0), y1 - (y - ylo) / (yhi - ylo) * (y1 - y0)

    for value in _ticks(xlo, xhi):
        px = at(value, ylo)[0]
        draw.line([px, y1, px, y1 + 4], fill="black")
        draw.text((px - 15, y1 + 6), f"{value:.3g}", fill="black", font=font)
    for value in _ticks(ylo, yhi):
        py = at(xlo, value)[1]
        draw.line([x0 - 4, py, x0, py], fill="black")
        draw.text((5, py - 5), f"{value:.4g}", fill="black", font=font)
    line = [at(x, y) for x, y in points]
    if len(line) > 1:
        draw.line(line, fill=colour, width=2)
    for px, py in line if len(line) <= 50 else []:
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    return image


def plot_curves(rows: Sequence[dict[str, Any]], path: Path, flops_per_step: float) -> Path:
    """Write a 2×2 figure: loss and FID (rows) against steps and training FLOPs (columns)."""
    figure = Image.new("RGB", (2 * PANEL[0], 2 * PANEL[1]), "white")
    for r, key in enumerate(("loss", "fid")):
        points = series(rows, key, flops_per_step)
        label = "training loss" if key == "loss" else f"FID ({_samples(rows)} samples)"
        for c, (axis, xlabel) in enumerate(((0, "optimizer step"), (1, "training FLOPs (flops.training_gmacs)"))):
            panel = _panel([(p[axis], p[2]) for p in points], label, xlabel, COLOURS[key])
            figure.paste(panel, (c * PANEL[0], r * PANEL[1]))
    path = Path(path)
    atomic_write(path, lambda tmp: figure.save(tmp, format="PNG"))
    return path


def _samples(rows: Sequence[dict[str, Any]]) -> str:
    counts = sorted({int(r["fid_samples"]) for r in rows if "fid_samples" in r})
    return ", ".join(map(str, counts)) or "?"
