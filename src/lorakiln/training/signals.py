"""SIGINT/SIGTERM during a training: stop every phase within seconds, saving where it helps.

Two behaviours, chosen by the phase the run is in:

* **between steps** (the training loop): the handler only records the signal and the loop saves a
  state and a LoRA after the current step. Saving inside a signal handler could interleave with
  a half-done optimizer step, so the handler never saves itself.
* **phases with nothing to save or nothing worth waiting for** (loading the model, caching
  latents, sample renders, the final grids): inside `StopFlag.raising()` the handler also raises
  `StopSignal` at once, the way Python's own SIGINT handler raises `KeyboardInterrupt`, so a
  render of many cells stops within one denoising step instead of after all of them. It is a
  `KeyboardInterrupt` subclass so that library code catching `Exception` does not swallow it,
  and `finally` blocks (the output lock, temporary files) still run, which SIG_DFL would skip.

A second signal while a save is running restores the previous handler and exits without saving.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopSignal(KeyboardInterrupt):
    """Raised by the handler when a signal arrives during a phase that stops at once."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopFlag:
    """Set by a signal handler; read by the training loop after every step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._raising = 0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @contextmanager
    def raising(self) -> Iterator[None]:
        """Within the block a signal raises `StopSignal` immediately (and one that arrived before
        the block raises on entry), instead of waiting for the loop to look at the flag."""
        if self.signum is not None:
            raise StopSignal(self.signum)
        self._raising += 1
        try:
            yield
        except KeyboardInterrupt:  # StopSignal itself, or a second Ctrl-C
            raise
        except Exception as err:
            if self.signum is None:
                raise
            # Native code that called back into Python when the handler raised may report the
            # interruption as its own error (safetensors' loader gives a ValueError about a
            # half-made tensor): after a signal, any error here is that signal's stop.
            raise StopSignal(self.signum) from err
        finally:
            self._raising -= 1

    def _record(self, signum: int) -> None:
        """Called by the handler: remember the signal; raise when in a raising phase."""
        self.signum = signum
        if self._raising:
            raise StopSignal(signum)
        print(f"\n{signal.Signals(signum).name} received: saving state and LoRA after this step "
              "(press Ctrl-C again to exit without saving)", flush=True)


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
        flag._record(signum)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
