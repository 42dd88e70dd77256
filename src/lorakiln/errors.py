"""User-facing errors.

Every error a user can fix by changing a file, a key or a value is a `LorakilnError`: the CLI
prints its message without a traceback. Messages name the file/key/value and say how to fix it.
"""

from __future__ import annotations


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
