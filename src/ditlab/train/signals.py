"""SIGINT and SIGTERM during training: stop at the next step boundary (saving first) or at once, like Ctrl-C.

Cluster schedulers send SIGTERM before they preempt a job. Without ``save_on_signal`` SIGTERM is treated as
Ctrl-C (``KeyboardInterrupt``: the run ends, its last checkpoint stays; the CLI still exits 143 for it); with
it, the first SIGINT or SIGTERM only asks the loop to save a checkpoint after the current step and stop, and a
second one interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

import torch
import torch.distributed as dist

from ..utils.distributed import is_distributed


@dataclass
class StopRequest:
    """The signal that asked the run to stop (None while none has)."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_requests(save_on_signal: bool) -> Iterator[StopRequest]:
    """Install the handlers for the duration of the loop (main thread only; elsewhere nothing changes)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def ask_to_stop(signum: int, frame: FrameType | None) -> None:
        if request.signum is not None:  # a second signal: stop now
            _interrupt(signum, frame)
        request.signum = signum

    handler = ask_to_stop if save_on_signal else _interrupt
    signums = (signal.SIGINT, signal.SIGTERM) if save_on_signal else (signal.SIGTERM,)
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield request
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def agreed_stop(request: StopRequest, device: torch.device) -> bool:
    """Whether any rank was asked to stop (every rank must call it at the same step: one tiny all-reduce)."""
    flag = request.signum or 0
    if is_distributed():
        box = torch.tensor([flag], device=device)
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        flag = int(box.item())
        request.signum = request.signum or flag or None
    return flag != 0
