"""Header notes on the paths an imported config keeps as written.

Configs travel: a kohya_ss GUI preset saved on Windows names `E:\\froggy\\img`, a blog's command
names `./3d_icon` relative to wherever it ran. lorakiln keeps every path as written (it cannot
know the new location) and says in the header what will happen to it, so a user is not left to
find out from a "folder not found" at training time:

* a Windows path on another system is not a path at all there (lorakiln would look for a folder
  literally named `E:\\froggy\\img` next to the TOML): replace it;
* a relative path resolves against the TOML's folder in lorakiln, against the folder the old
  tool ran in: keep the TOML there, or make it absolute.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lorakiln.config.importers.draft import Draft

#: Keys holding paths.
PATH_KEYS = ("model.pretrained_model", "model.vae", "model.config_dir", "data.train_data_dir",
             "prior.class_data_dir", "network.network_weights", "train.resume", "validation.sample_prompts",
             "output.output_dir", "output.logging_dir")
_DRIVE = re.compile(r"^[A-Za-z]:([\\/]|$)")


def is_windows_path(value: str) -> bool:
    """`E:\\x`, `E:/x` or any path with a backslash: written on Windows."""
    return bool(_DRIVE.match(value)) or "\\" in value


def path_notes(draft: Draft, search: list[Path]) -> None:
    """Add header lines for Windows paths (on other systems) and relative paths. `search` are the
    folders a relative path may already exist in (the source's, the output's)."""
    from lorakiln.models.hub_id import looks_like_hub_id

    windows, relative = [], []
    for dotted in PATH_KEYS:
        value = draft.get(dotted)
        if not isinstance(value, str) or not value or value.startswith(("tiny:", "random:", "~")):
            continue
        shown = f"{dotted} = {value!r}"
        if is_windows_path(value):
            if os.name != "nt":
                windows.append(shown)
            continue
        if Path(value).is_absolute():
            continue
        local = any((folder / value).exists() for folder in search)
        if dotted.startswith("model.") and looks_like_hub_id(value) and not local:
            continue
        relative.append(shown)
    if windows:
        draft.header.append("Windows paths are kept as written (" + ", ".join(windows) + "). On this system they "
                            "are not paths (lorakiln would look for a folder of that name next to this file): "
                            "replace them with this machine's folders and files.")
    if relative:
        draft.header.append("Relative paths are kept as written (" + ", ".join(relative) + "). lorakiln "
                            "resolves them against this file's folder, the old tool against the folder it "
                            "ran in: keep this file there, or make them absolute.")
