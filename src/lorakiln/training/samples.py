"""Sample prompts for renders while training: kohya's `sample_prompts` file format.

One prompt per line; options follow as ` --n <negative> --w <width> --h <height> --s <steps>
--l <cfg scale> --d <seed> --ss <sampler>` (sd-scripts' or A1111's sampler names); blank lines and lines starting with `#` are skipped (kohya
`train_util.sample_images`). The prompt itself may use A1111 emphasis, as generation does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lorakiln.errors import ConfigError
from lorakiln.inference.infotext import GenerationParams

_OPTIONS = {"n": "negative_prompt", "w": "width", "h": "height", "s": "steps", "l": "cfg_scale", "d": "seed",
            "ss": "sampler"}
_TYPES = {"width": int, "height": int, "steps": int, "cfg_scale": float, "seed": int, "negative_prompt": str,
          "sampler": str}


def parse_sample_line(line: str, defaults: GenerationParams, where: str = "") -> GenerationParams:
    """One kohya sample line → generation parameters over `defaults`."""
    prompt, *options = line.split(" --")
    params = replace(defaults, prompt=prompt.strip())
    for option in options:
        key, _, value = option.partition(" ")
        field = _OPTIONS.get(key.strip())
        if field is None:
            raise ConfigError(f"{where}: unknown sample option --{key.strip()} (valid: "
                              + ", ".join(f"--{k}" for k in _OPTIONS) + ")")
        try:
            params = replace(params, **{field: _TYPES[field](value.strip())})
        except ValueError:
            raise ConfigError(f"{where}: --{key.strip()} {value.strip()!r} is not a number") from None
    if params.sampler != defaults.sampler:
        from lorakiln.inference.samplers import resolve_sampler

        try:
            resolve_sampler(params.sampler)
        except ConfigError as exc:
            raise ConfigError(f"{where}: --ss: {exc}") from None
    return params


def read_sample_prompts(path: str | Path, defaults: GenerationParams) -> list[GenerationParams]:
    """All prompts of a kohya sample-prompts file, with errors naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"validation.sample_prompts: {path} does not exist")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(parse_sample_line(line, defaults, f"{path}:{number}"))
    if not out:
        raise ConfigError(f"{path} holds no prompt (blank lines and # comments only)")
    return out
