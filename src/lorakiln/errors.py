"""User-facing errors.

Every error a user can fix by changing a file, a key or a value is a `LorakilnError`: the CLI
prints its message without a traceback. Messages name the file/key/value and say how to fix it.
"""

from __future__ import annotations

import errno
import os


class LorakilnError(Exception):
    """An error caused by user input; its message is printed as-is by the CLI."""


class ConfigError(LorakilnError):
    """A config key or value is unknown or out of range."""


class DatasetError(LorakilnError):
    """The training folder has a problem (naming, unreadable file, bad caption...)."""


class ModelLoadError(LorakilnError):
    """A base model could not be found or loaded."""


class TrainingError(LorakilnError):
    """Training stopped for a reason the user can act on (e.g. a non-finite loss)."""


class FileFormatError(LorakilnError):
    """A file is damaged or is not what its name says (a truncated `.safetensors`, a header that is
    not JSON, NaN weights); the message names the file and the broken rule."""


class OutputWriteError(LorakilnError):
    """An output could not be written (disk full, quota, read-only, no permission).

    Every lorakiln write goes to a temporary file that is renamed over the target only once it
    is complete (`lorakiln.atomic`), so a failed write loses nothing: the message says so.
    """

    #: errno values that mean "this place cannot take the file" rather than a bug.
    ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EACCES", "EROFS")
                       if hasattr(errno, name))

    @classmethod
    def from_os_error(cls, path: object, err: OSError, *, atomic: bool = True) -> OutputWriteError:
        """The message for `err` at `path` (None: not known). `atomic`: the failed write went
        through a temporary file, so the message can promise that nothing was lost."""
        codes = {errno.ENOSPC: "no space left on device", errno.EROFS: "the file system is read-only",
                 errno.EACCES: "permission denied"}
        if hasattr(errno, "EDQUOT"):
            codes[errno.EDQUOT] = "disk quota exceeded"
        reason = codes.get(err.errno or 0) or os.strerror(err.errno or 0)
        full = err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        fix = ("free some space (or choose another output folder)" if full
               else "check the folder's permissions (or choose another output folder)")
        if not atomic:
            return cls(f"{path or 'a file'}: {reason}; {fix} and run the command again")
        return cls(f"could not write {path}: {reason}. Nothing was lost: lorakiln writes into a temporary file "
                   "and renames it into place only once it is complete, so existing files are unchanged and no "
                   f"partial file is left; {fix} and run the command again")
