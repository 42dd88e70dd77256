"""SIGINT/SIGTERM → a flag the loop checks between steps, so it can save before exiting.

The handler only records the signal: saving inside a signal handler could interleave with a
half-done optimizer step. A second Ctrl-C restores the default behaviour (immediate exit).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopFlag:
    """Set by a signal handler; read by the training loop after every step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Install SIGINT/SIGTERM handlers for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.requested:  # second signal: give up waiting for a clean save
            signal.signal(signum, previous.get(signum) or signal.SIG_DFL)
            raise KeyboardInterrupt
        flag.signum = signum
        print(f"\n{signal.Signals(signum).name} received: saving state and LoRA after this step "
              "(press Ctrl-C again to exit without saving)", flush=True)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
