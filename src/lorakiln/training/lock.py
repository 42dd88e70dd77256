"""One training per output: `<output_dir>/<output_name>.lock`, held for the run's whole life.

Without it two trainings into one output both run to the end and silently replace each other's
LoRA files and states. The lock file is created with `O_CREAT | O_EXCL`, which POSIX defines as
atomic (open(2): "if the file exists, open fails"), so of two runs starting together exactly one
gets it. It holds JSON naming the holder (PID, host, start time, command) for the refusal
message, and the holder also keeps an exclusive `flock` on it: the kernel drops that lock when
the process dies however it dies (flock(2)), so a lock left by a `kill -9` or a power cut is told
apart from a live one even when the PID has been reused since. A stale lock — no flock held and
its PID dead on this host, or this host rebooted since — is taken over with a notice.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorakiln.errors import TrainingError

try:  # flock is POSIX; on Windows the PID check alone decides whether a lock is stale
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

Log = Callable[[str], None] | None


class OutputLocked(TrainingError):
    """Another live training holds this output's lock."""


def _boot_id() -> str | None:
    """Linux's per-boot id: a lock written before a reboot is stale whatever its PID."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def check_output_dir(output_dir: Path) -> None:
    """A clear error, before any model loads, when `output_dir` cannot be a folder of outputs."""
    for part in (output_dir, *output_dir.parents):
        if part.exists() and not part.is_dir():
            where = f"output_dir {part} is" if part == output_dir else f"output_dir {output_dir} lies under {part},"
            raise TrainingError(f"{where} a file, not a folder; set output.output_dir to a folder "
                                "(it is created if missing)")
        if part.exists():
            break
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrainingError(f"cannot create output_dir {output_dir}: {err.strerror or err}; set "
                            "output.output_dir to a folder you can write") from err
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise TrainingError(f"output_dir {output_dir} is not writable; set output.output_dir to a "
                            "folder you can write")


class OutputLock:
    """`with OutputLock(folder, name):` holds `<folder>/<name>.lock` until the block ends."""

    def __init__(self, output_dir: str | Path, output_name: str, *, command: str | None = None,
                 log: Log = print) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / f"{output_name}.lock"
        self.command = command if command is not None else " ".join(sys.argv)
        self.log = log
        self._fd: int | None = None
        self._created_dir = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
                "started": time.time(), "command": self.command}

    def acquire(self) -> None:
        """Create the lock, taking over a stale one; raise `OutputLocked` if a live run holds it."""
        self._created_dir = not self.output_dir.exists()
        check_output_dir(self.output_dir)
        for _ in range(50):  # each turn either wins, refuses, or removed a stale lock to retry
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            self._fd = fd
            # Details first, flock second: a starter that looks in between sees a live PID and
            # refuses; one that holds the flock for its look only delays us (blocking flock).
            os.write(fd, (json.dumps(self.info()) + "\n").encode("utf-8"))
            os.fsync(fd)
            if fcntl is not None:
                with contextlib.suppress(OSError):  # no flock on this file system: PID check only
                    fcntl.flock(fd, fcntl.LOCK_EX)
            return
        raise TrainingError(f"could not take {self.path}: it keeps reappearing; is another "
                            "program creating it?")

    def release(self) -> None:
        """Remove the lock if it is still ours (the same file we created), then close it."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)
        os.close(fd)
        if self._created_dir:  # a run that stopped before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                self.output_dir.rmdir()

    def _handle_existing(self) -> None:
        """Refuse a live holder; remove a stale lock (the caller then retries the creation)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)  # flock needs no write access (flock(2))
        except FileNotFoundError:  # released between our two opens
            return
        except PermissionError as err:
            raise OutputLocked(f"{self.path} exists and cannot be read ({err.strerror}); another user's "
                               "training may be writing to this output — choose another output") from None
        try:
            if not _try_flock(fd):
                raise OutputLocked(self._held_message(_read_info(fd, wait=True)))
            holder = _read_info(fd, wait=True)
            if not self._is_stale(holder):
                raise OutputLocked(self._held_message(holder))
            if not os.path.samestat(os.fstat(fd), os.stat(self.path)):
                return  # another starter replaced it meanwhile; look again
            os.unlink(self.path)
            if self.log:
                self.log(f"notice: took over the stale lock {self.path} ({_describe(holder)}; "
                         "that process is gone)")
        except FileNotFoundError:
            return
        finally:
            os.close(fd)

    def _is_stale(self, holder: dict[str, Any] | None) -> bool:
        """No flock is held (checked by the caller): stale unless a live PID on this host says
        otherwise. A lock from another host cannot be checked, so it is kept."""
        if holder is None:
            return True  # unreadable after waiting: its writer died before writing
        if holder.get("host") != socket.gethostname():
            return False
        boot = _boot_id()
        if boot and holder.get("boot_id") and holder["boot_id"] != boot:
            return True
        pid = holder.get("pid")
        return not (isinstance(pid, int) and _pid_alive(pid))

    def _held_message(self, holder: dict[str, Any] | None) -> str:
        return (f"another training is writing to this output: {self.path} is held by "
                f"{_describe(holder)}. Wait for it to finish, stop it (Ctrl-C or SIGTERM saves its "
                "state), or choose another output.output_dir / output.output_name. If that process "
                "is really gone (e.g. it ran on another machine), delete the lock file")


def _try_flock(fd: int) -> bool:
    """Whether nobody holds an flock on `fd`'s file (we take it for the rest of the check)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without flock: fall back to the PID check
        return True
    return True


def _read_info(fd: int, *, wait: bool) -> dict[str, Any] | None:
    """The holder's JSON; a lock created a moment ago may not be written yet, so wait briefly."""
    for _ in range(20 if wait else 1):
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        try:
            info = json.loads(raw.decode("utf-8"))
            if isinstance(info, dict):
                return info
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    return None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "a process that left no details"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    command = holder.get("command") or "?"
    return f"PID {holder.get('pid')} on host {holder.get('host')}, started {when} (command: {command})"
