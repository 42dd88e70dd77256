"""Where the toy world's base model lives, so `pretrained_model = "toy"` loads without the toy world.

The weights ship as package data under `lorakiln/toyworld/weights/` (built by `lorakiln toy
pretrain`), but the loader sits below the toy world: `models` may not import `toyworld`. The
location is therefore resolved from the `lorakiln` package itself, which imports nothing else.
"""

from __future__ import annotations

from pathlib import Path

from lorakiln.errors import ModelLoadError

#: `pretrained_model = "toy"` names the shipped weights.
TOY_SOURCE = "toy"
#: The shipped weights, relative to the `lorakiln` package folder.
TOY_WEIGHTS = "toyworld/weights/toy-sd1.safetensors"


def toy_model_path() -> Path:
    """The shipped toy model file; a clear error if this install lacks it."""
    from importlib import resources

    path = Path(str(resources.files("lorakiln").joinpath(TOY_WEIGHTS)))
    if not path.is_file():
        raise ModelLoadError(f"the toy model ({path}) is not in this install; build it with "
                             "`lorakiln toy pretrain --out <file>` and pass that file as the base model")
    return path
