"""Run metrics: one JSON object per line in metrics.jsonl, mirrored to TensorBoard under tb/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..utils.files import atomic_write


class MetricsLogger:
    """Append metric rows (rank 0 only: other ranks pass ``enabled=False`` and write nothing).

    Rows after ``start_step`` (the step the run starts or resumes from) belong to a killed attempt whose steps
    are about to be trained again; they are dropped, so each step is logged once.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self._file = None
        self._tb = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        _drop_rows_after(run_dir / "metrics.jsonl", start_step)
        self._file = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # tensorboard is a declared dependency; tolerate its absence all the same
            self._tb = None

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, row["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _drop_rows_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):  # a line cut short by a kill
            continue
    if kept != lines:
        atomic_write(path, lambda tmp: tmp.write_text("".join(kept)))
