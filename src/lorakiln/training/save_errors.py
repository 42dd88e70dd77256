"""A save that cannot be written (full disk, quota, read-only mount) ends the run with one message.

Without this a full disk surfaces as `OSError: [Errno 28]` or as PyTorch's `RuntimeError:
[enforce fail at inline_container.cc:…] . unexpected pos …` (torch.save's zip writer reports a
short write that way) after a traceback, and the user cannot tell whether anything was lost.
Nothing is: LoRA files and states are written under temporary names and renamed only when
complete (atomic.py, state.py), so the message can say so, name the file that failed, and point
at the last complete state to resume from once there is space.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lorakiln.errors import LorakilnError, OutputWriteError, TrainingError
from lorakiln.training import recovery
from lorakiln.training.state import StateWriteError

if TYPE_CHECKING:
    from lorakiln.training.context import TrainContext

#: Texts of write failures that do not arrive as OSError: torch.save's zip writer
#: (caffe2 inline_container.cc) and the safetensors writer (a Rust io::Error in the message).
_MARKERS = ("inline_container", "PytorchStreamWriter", "unexpected pos", "No space left on device",
            "os error 28", "StorageFull", "Disk quota exceeded", "os error 122")
_TEMP_NAME = re.compile(r"^\.(.+)\.[A-Za-z0-9_]+\.tmp$")


class SaveFailed(TrainingError):
    """A LoRA, state or render could not be written; the files already saved are intact.
    `state` is the last complete state, if any (the CLI prints the command that resumes it)."""

    def __init__(self, message: str, state: Path | None = None) -> None:
        super().__init__(message)
        self.state = state


def is_write_failure(err: BaseException) -> bool:
    """An error that means the disk refused the bytes (not a bug in what was being saved)."""
    return isinstance(err, OSError) or any(m in str(err) for m in _MARKERS)


def _cause(err: BaseException) -> str:
    code = getattr(err, "errno", None)
    text = str(err)
    if code == errno.ENOSPC or "No space left" in text or "os error 28" in text or "unexpected pos" in text \
            or "StorageFull" in text:
        return "the disk is full"
    if code == getattr(errno, "EDQUOT", None) or "Disk quota" in text or "os error 122" in text:
        return "the disk quota is used up"
    if code == errno.EROFS:
        return "the file system is read-only"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return text.splitlines()[0][:160] if text else type(err).__name__


def _target(err: BaseException, default: Path) -> Path:
    """The file being written: the error's own file name when it has one (a temporary
    `.<file>.<random>.tmp` stands for `<file>`), else what the caller was saving."""
    name = getattr(err, "filename", None)
    if not name:
        return default
    path = Path(name)
    match = _TEMP_NAME.match(path.name)
    return path.with_name(match.group(1)) if match else path


def _last_state(ctx: TrainContext) -> tuple[Path, int] | None:
    from lorakiln.training.outputs import state_dir

    try:
        folder, _ = recovery.find_state(state_dir(ctx))
    except LorakilnError:
        return None
    step = recovery.state_step(folder)
    return (folder, step) if step is not None else None


def message(ctx: TrainContext, target: Path, err: BaseException) -> str:
    """What failed, that nothing was lost, and where the last good state is."""
    return "\n  ".join([
        f"could not write {target}: {_cause(err)}.",
        "Nothing was lost: lorakiln writes every LoRA and state under a temporary name and renames "
        "it only when complete, so the files already saved keep their previous contents.",
        *_where_to_go_on(ctx, _cause(err))])


def _where_to_go_on(ctx: TrainContext, cause: str) -> list[str]:
    full = any(word in cause.lower() for word in ("full", "quota", "space"))
    fix = "free some space" if full else "make the output folder writable"
    lines = []
    state = _last_state(ctx)
    if state is not None:
        lines.append(f"Last good state: {state[0]} (step {state[1]}); {fix}, then resume from it to "
                     "continue exactly.")
    else:
        lines.append(f"No state was saved yet (output.save_state = true saves one with every LoRA); {fix} "
                     "and start again.")
    if ctx.last_saved is not None:
        lines.append(f"Last LoRA saved: {ctx.last_saved}")
    return lines


@contextmanager
def reported(ctx: TrainContext, target: Path) -> Iterator[None]:
    """Turn a write failure inside the block into `SaveFailed`; other errors pass unchanged."""
    try:
        yield
    except OutputWriteError as err:  # an atomic writer already named the file and the cause
        state = _last_state(ctx)
        lines = [str(err), *_where_to_go_on(ctx, str(err))]
        raise SaveFailed("\n  ".join(lines), state[0] if state else None) from err
    except LorakilnError:
        raise
    except StateWriteError as err:
        if not is_write_failure(err.cause):
            raise
        raise _failed(ctx, err.folder / err.name, err.cause) from err
    except Exception as err:
        if not is_write_failure(err):
            raise
        raise _failed(ctx, _target(err, target), err) from err


def _failed(ctx: TrainContext, target: Path, err: BaseException) -> SaveFailed:
    state = _last_state(ctx)
    return SaveFailed(message(ctx, target, err), state[0] if state else None)
