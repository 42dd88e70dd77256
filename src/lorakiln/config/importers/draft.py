"""The run config under construction while a foreign config is imported, and its account.

Every source option ends in exactly one of four places, so none is dropped silently:

* **mapped**: a lorakiln key was set; the key remembers the option it came from, which the
  emitted TOML shows as a comment (`network_alpha = 32  # --rank=32 ...`);
* **noted**: nothing to set, because lorakiln does the same thing anyway or on its own (xformers
  → SDPA, the model family read from the weights), or the import had to interpret something;
* **unmapped**: lorakiln has no equivalent; the reason says why;
* **inactive**: the source had the feature switched off or empty (kohya_ss writes every field),
  so there is nothing to import — named in one line rather than one line each.

Values are validated and converted one key at a time against the schema (`"1e-4"` → 1e-4,
`"True"` → true), so a value lorakiln cannot take becomes an *unmapped* entry naming the
option and the schema's complaint, instead of a broken file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from lorakiln.config.schema import SECTIONS

#: Reasons shared by several importers.
LOGGING_SERVICE = "logging-service only; lorakiln writes TensorBoard logs (output.logging_dir)"
NO_UPLOAD = "lorakiln does not upload to the Hugging Face Hub; upload the output folder yourself"
LAUNCHER = "launcher/performance setting with no effect on the trained weights"
SECRET = "<redacted>"
#: Source keys whose values are credentials: shown as <redacted>, never written anywhere.
SECRET_KEYS = frozenset({"hub_token", "wandb_api_key", "huggingface_token"})


def is_off(value: Any) -> bool:
    """True for the values config dumps use for "not set / switched off"."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, str):
        return value.strip().lower() in ("", "0", "0.0", "none", "false")
    return value is None or value == [] or value == {}


@dataclass(frozen=True)
class Entry:
    """One source option that was not mapped to a key: how it was written, and why."""

    option: str
    reason: str


@dataclass
class Draft:
    """Sectioned lorakiln values plus the account of every source option."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    notes: list[Entry] = field(default_factory=list)
    unmapped: list[Entry] = field(default_factory=list)
    inactive: list[str] = field(default_factory=list)
    #: Problems with the source text itself (glued shell lines, unknown $VARIABLES).
    warnings: list[str] = field(default_factory=list)
    #: Relative paths kept as given (the emitted header explains how lorakiln resolves them).
    header: list[str] = field(default_factory=list)

    def has(self, dotted: str) -> bool:
        section, key = dotted.split(".")
        return key in self.values.get(section, {})

    def get(self, dotted: str, default: Any = None) -> Any:
        section, key = dotted.split(".")
        return self.values.get(section, {}).get(key, default)

    def put(self, dotted: str, value: Any, origin: str) -> bool:
        """Validate `value` for `dotted` and set it; an invalid value or a key this lorakiln
        does not have becomes an unmapped entry for `origin`. True when set."""
        section, key = dotted.split(".")
        model = SECTIONS.get(section)
        if model is None or key not in model.model_fields:
            self.skip(origin, f"this lorakiln has no setting {dotted}")
            return False
        probe = model.model_construct()
        try:
            setattr(probe, key, value)
        except ValidationError as err:
            msg = "; ".join(e["msg"] for e in err.errors())
            self.skip(origin, f"{dotted} cannot be {value!r}: {msg}")
            return False
        dumped = probe.model_dump(mode="json", include={key})[key]
        if isinstance(dumped, float) and dumped.is_integer() and (dumped >= 1 or dumped == 0):
            dumped = int(dumped)  # 32 rather than 32.0 (a float field takes the int back unchanged)
        self.values.setdefault(section, {})[key] = dumped
        self.origins[dotted] = origin
        return True

    def put_default(self, dotted: str, value: Any, origin: str) -> bool:
        """Set `dotted` only when no source option did: the source tool's default, where it
        differs from lorakiln's, so the run trains as the old command would have."""
        return False if self.has(dotted) else self.put(dotted, value, origin)

    def drop(self, dotted: str) -> None:
        section, key = dotted.split(".")
        self.values.get(section, {}).pop(key, None)
        self.origins.pop(dotted, None)

    def skip(self, option: str, reason: str) -> None:
        self.unmapped.append(Entry(option, reason))

    def note(self, option: str, text: str) -> None:
        self.notes.append(Entry(option, text))

    def idle(self, name: str) -> None:
        if name not in self.inactive:
            self.inactive.append(name)

    def raw(self) -> dict[str, Any]:
        """The values as a raw config dict (what `build_config` takes)."""
        return {section: dict(keys) for section, keys in self.values.items() if keys}
