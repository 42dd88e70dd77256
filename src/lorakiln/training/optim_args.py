"""Parse kohya-style ``key=value`` optimizer / scheduler arguments into typed Python values.

kohya sd-scripts takes ``--optimizer_args decouple=True weight_decay=0.05 betas=0.9,0.99`` and
evaluates each value; kohya_ss's GUI has one "Optimizer extra arguments" text box holding the same
items separated by spaces. We accept all three shapes users bring (a list of items, one
space-separated string, or an already-typed dict from TOML) and turn them into one ``dict``.

Values are parsed by a small grammar rather than ``eval``/``literal_eval`` so that the error can
name the exact item that is wrong, and so a config file can never execute code:

=====================  ===============================
``True`` / ``false``   ``bool`` (case-insensitive)
``None``               ``None``
``8`` / ``-1``         ``int``
``1e-3`` / ``inf``     ``float``
``0.9,0.99``           ``tuple`` of the above (betas)
``'text'``             ``str`` (quotes required, so typos do not pass silently as strings)
=====================  ===============================
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lorakiln.errors import ConfigError

__all__ = ["accepted_args", "check_known_args", "parse_optim_args", "parse_value"]

OptimArgs = Mapping[str, Any] | Sequence[str] | str | None

_INT_RE = re.compile(r"^[+-]?\d+$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_value(text: str, *, item: str | None = None) -> Any:
    """Parse one value string; ``item`` (the whole ``key=value``) is quoted in the error."""
    where = f"'{item}'" if item is not None else f"'{text}'"
    value = text.strip()
    if not value:
        raise ConfigError(f"Optimizer argument {where} has an empty value.")
    if "," in value:
        parts = [p.strip() for p in value.split(",")]
        if parts[-1] == "":  # tolerate a trailing comma: "betas=0.9,0.99,"
            parts.pop()
        if not parts or any(p == "" for p in parts):
            raise ConfigError(f"Optimizer argument {where} has an empty element in its list.")
        return tuple(parse_value(p, item=item if item is not None else text) for p in parts)
    lowered = value.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    if lowered == "none":
        return None
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    if _INT_RE.match(value):
        return int(value)
    try:
        return float(value)  # also accepts 1e-3, inf, -inf
    except ValueError:
        pass
    raise ConfigError(
        f"Cannot parse optimizer argument {where}: '{value}' is not a bool, int, float, None or a "
        "comma-separated tuple. Quote it (e.g. key='text') if a string is really meant."
    )


def _split_string(text: str) -> list[str]:
    """Split the GUI's one-line form ``a=1 betas=0.9, 0.99`` into items.

    A token without ``=`` continues the previous value, so ``betas=0.9, 0.99`` survives the space.
    """
    items: list[str] = []
    for token in text.split():
        if "=" not in token and items:
            items[-1] += token
        else:
            items.append(token)
    return items


def parse_optim_args(args: OptimArgs) -> dict[str, Any]:
    """Return ``args`` as a ``{name: value}`` dict with typed values.

    * ``None`` / empty → ``{}``.
    * ``dict`` (TOML table): values are kept as typed; lists become tuples (``betas``).
    * ``list[str]`` (kohya ``optimizer_args``) or one ``str`` (GUI text box): each item is
      ``key=value`` parsed by :func:`parse_value`.

    Raises ``ConfigError`` naming the offending item for a missing ``=``, a bad key, a repeated key
    or an unparseable value.
    """
    if args is None:
        return {}
    if isinstance(args, Mapping):
        out: dict[str, Any] = {}
        for key, value in args.items():
            if not isinstance(key, str) or not _KEY_RE.match(key):
                raise ConfigError(f"Optimizer argument name {key!r} is not a valid identifier.")
            out[key] = tuple(value) if isinstance(value, list) else value
        return out
    items = _split_string(args) if isinstance(args, str) else list(args)
    out = {}
    for raw in items:
        if not isinstance(raw, str):
            raise ConfigError(f"Optimizer argument {raw!r} must be a 'key=value' string.")
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"Optimizer argument '{item}' is not of the form key=value (e.g. decouple=True).")
        if not _KEY_RE.match(key):
            raise ConfigError(f"Optimizer argument '{item}': '{key}' is not a valid argument name.")
        if key in out:
            raise ConfigError(f"Optimizer argument '{key}' is given twice (second time as '{item}').")
        out[key] = parse_value(value, item=item)
    return out


def accepted_args(fn: Callable[..., Any], skip: set[str]) -> list[str] | None:
    """Keyword names ``fn`` (a class: its ``__init__``) accepts, minus ``skip``; None for ``**kwargs``."""
    target = fn.__init__ if isinstance(fn, type) else fn
    params = inspect.signature(target).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name not in skip and p.kind is not inspect.Parameter.VAR_POSITIONAL]


def check_known_args(owner: str, args: Mapping[str, Any], accepted: list[str] | None) -> None:
    """Raise ``ConfigError`` for the first name in ``args`` that ``accepted`` lacks.

    Why: a typo (``decoupled=True``) would otherwise be a ``TypeError`` deep inside a library, or be
    swallowed by a ``**kwargs`` signature. The error names it, suggests the nearest, lists the rest.
    """
    if accepted is None:
        return
    for arg in args:
        if arg not in accepted:
            close = difflib.get_close_matches(arg, accepted, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{owner} does not accept argument '{arg}'.{hint} Accepted arguments: {', '.join(accepted) or 'none'}."
            )
