"""kohya sd-scripts options (a `--config_file` TOML, or a `train_network.py` command line) →
lorakiln. The kohya_ss GUI importer translates its JSON into these options and calls this too.

sd-scripts' config file is its argparse options by name, flat or in any sections (it flattens
one level), so both spellings are read. Options absent from the source take sd-scripts'
defaults where those differ from lorakiln's (no bucketing, `.caption` files, rank 4, ...), so
the imported run trains as the original did; those keys say `sd-scripts default`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorakiln.config.importers import kohya_tables as T
from lorakiln.config.importers.draft import SECRET, SECRET_KEYS, Draft, is_off
from lorakiln.config.importers.network_map import adapter_of, map_network, put_dim, split_args
from lorakiln.errors import ConfigError

Label = Callable[[str], str]
_PROMPT_OPTION = re.compile(r"\s+--([a-z]+)\s+")
_SAMPLE_KEYS = {"n": "validation_negative_prompt", "s": "validation_inference_steps",
                "l": "validation_guidance_scale", "d": "validation_seed"}


def toml_label(args: dict[str, Any]) -> Label:
    """`name = value` as written in a TOML/JSON file (secrets redacted)."""
    import json

    return lambda name: f"{name} = {SECRET if name in SECRET_KEYS else json.dumps(args.get(name))}"


def flatten_sections(raw: dict[str, Any]) -> dict[str, Any]:
    """sd-scripts reads `[any_section] key = v` as `key = v` (one level), as here."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _neutral(name: str, value: Any) -> bool:
    return is_off(value) or value in T.NEUTRAL.get(name, ())


#: kohya_ss GUI's caption_extension choice "no caption files: caption each image with its
#: folder's <token> [class]" (a sentinel no file has; sd-scripts then falls back to the folder name).
FOLDER_NAME_SENTINEL = ".none-use-foldername"


class _Mapper:
    def __init__(self, args: dict[str, Any], draft: Draft, base_dir: Path, label: Label,
                 source_names: dict[str, str], arg_labels: dict[str, str]) -> None:
        self.args, self.d, self.base_dir, self.label = args, draft, base_dir, label
        self.source_names, self.arg_labels = source_names, arg_labels
        self.optimizer_seen = False
        self.network_seen = False
        self.dataset_only = False

        self.special: dict[str, Callable[[str, Any], None]] = {
            "unet_lr": self._unet_lr, "text_encoder_lr": self._text_encoder_lr,
            "optimizer_type": self._optimizer, "use_8bit_adam": self._optimizer,
            "use_lion_optimizer": self._optimizer, "optimizer_args": self._optimizer_args,
            "lr_scheduler": self._scheduler, "network_module": self._network_module,
            "network_args": self._network_args, "reg_data_dir": self._reg_data_dir,
            "prior_loss_weight": self._prior_loss_weight, "sample_prompts": self._samples,
            "sample_every_n_epochs": self._samples, "sample_every_n_steps": self._samples,
            "sample_sampler": self._samples, "multires_noise_discount": self._gated("multires_noise_iterations"),
            "huber_c": self._gated("loss_type"), "huber_schedule": self._gated("loss_type"),
            "random_crop": self._random_crop, "network_dim": self._rank, "caption_extension": self._caption_ext,
            "caption_extention": self._caption_ext,
        }

    def idle(self, name: str) -> None:
        """Off in the source: named (as the source spells it) in the inactive list."""
        self.d.idle(self.source_names.get(name, name))

    def run(self) -> None:
        for name, value in self.args.items():
            if name in self.special:
                self.special[name](name, value)
            elif name in T.DIRECT:
                self._direct(name, value)
            elif name in T.UNSUPPORTED:
                self._unsupported(name, value, T.UNSUPPORTED[name])
            elif name in T.NOTED and not is_off(value):
                self.d.note(self.label(name), T.NOTED[name])
            elif is_off(value):
                self.idle(name)
            else:
                self.d.skip(self.label(name), "not an option this importer knows")
        self._epochs_win()
        self._defaults()

    def _epochs_win(self) -> None:
        """sd-scripts computes the steps from max_train_epochs when both are set; lorakiln lets
        max_train_steps win, so the steps are dropped to keep sd-scripts' meaning."""
        if self.d.has("train.max_train_epochs") and self.d.has("train.max_train_steps"):
            origin = self.d.origins["train.max_train_steps"]
            self.d.drop("train.max_train_steps")
            self.d.note(origin, "sd-scripts lets max_train_epochs override max_train_steps; so does this import")

    def given(self, name: str) -> bool:
        return name in self.args and not (is_off(self.args[name]) and not isinstance(self.args[name], bool))

    def _direct(self, name: str, value: Any) -> None:
        if value is None or value == "" or (name in T.ZERO_IS_UNSET and is_off(value)):
            self.idle(name)
        else:
            self.d.put(T.DIRECT[name], value, self.label(name))

    def _unsupported(self, name: str, value: Any, reason: str) -> None:
        if _neutral(name, value):
            self.idle(name)
        else:
            self.d.skip(self.label(name), reason)

    def _gated(self, switch: str) -> Callable[[str, Any], None]:
        """Options that only matter while another one is on (multires discount, huber_c)."""
        def handle(name: str, value: Any) -> None:
            if _neutral(switch, self.args.get(switch)) or is_off(value):
                self.idle(name)
            else:
                self.d.skip(self.label(name), T.UNSUPPORTED.get(switch, "not supported"))
        return handle

    def _unet_lr(self, name: str, value: Any) -> None:
        if value is None or value == "":
            self.idle(name)
        elif is_off(value):
            self.d.skip(self.label(name), "a frozen U-Net LoRA (unet_lr = 0) is not supported")
        else:
            self.d.put("train.unet_lr", value, self.label(name))

    def _text_encoder_lr(self, name: str, value: Any) -> None:
        if value is None or value == "":
            self.idle(name)
        else:
            self.d.put("train.text_encoder_lr", value, self.label(name) + (" (0 freezes the text-encoder "
                       "LoRA)" if is_off(value) else ""))

    def _optimizer(self, name: str, value: Any) -> None:
        if self.optimizer_seen:  # optimizer_type, use_8bit_adam and use_lion_optimizer are read together
            return
        self.optimizer_seen = True
        wanted = str(self.args.get("optimizer_type") or "")
        if not wanted:
            wanted = "AdamW8bit" if self.args.get("use_8bit_adam") else "Lion" if self.args.get(
                "use_lion_optimizer") else ""
        if not wanted:
            return self.idle(name)
        from lorakiln.config.optimizer_names import validate_optimizer_name

        origin = self.label("optimizer_type") if "optimizer_type" in self.args else self.label(name)
        try:
            self.d.put("train.optimizer_type", validate_optimizer_name(wanted.rsplit(".", 1)[-1]), origin)
        except ConfigError as err:
            self.d.skip(origin, f"{err} lorakiln's default AdamW applies")

    def _optimizer_args(self, name: str, value: Any) -> None:
        items = value.replace('"', "").split() if isinstance(value, str) else list(value or [])
        if items:
            self.d.put("train.optimizer_args", items, self.label(name))
        else:
            self.idle(name)

    def _scheduler(self, name: str, value: Any) -> None:
        from lorakiln.config.optimizer_names import validate_scheduler_name

        if not value:
            return self.idle(name)
        try:
            validate_scheduler_name(str(value))
        except ConfigError as err:
            return self.d.skip(self.label(name), f"{err} lorakiln's default constant applies")
        self.d.put("train.lr_scheduler", value, self.label(name))

    def _network_module(self, name: str, value: Any) -> None:
        """`network_module` and `network_args` are read together by the shared mapping."""
        if self.network_seen:
            return
        self.network_seen = True
        items = split_args(self.args.get("network_args"))
        module = self.args.get("network_module")
        shown = self.label("network_module") if "network_module" in self.args else "(no network_module)"
        map_network(self.d, module, shown, items, self._arg_label)
        if not items and "network_args" in self.args:
            self.idle("network_args")

    _network_args = _network_module

    def _arg_label(self, key: str, raw: str) -> str:
        return self.arg_labels.get(key) or f"network_args: {key}={raw}"

    def _rank(self, name: str, value: Any) -> None:
        """`network_dim`: a LoKr rank above lorakiln's limit keeps LyCORIS's full-matrix meaning."""
        if value is None or value == "":
            return self.idle(name)
        algo, _ = adapter_of(self.args.get("network_module"), split_args(self.args.get("network_args")))
        put_dim(self.d, "network.network_dim", value, self.label(name), algo)

    def _caption_ext(self, name: str, value: Any) -> None:
        if str(value).strip().lower() != FOLDER_NAME_SENTINEL:
            return self._direct(name, value)
        self.d.note(self.label(name), "the kohya_ss GUI's \"use the folder name\" choice")
        self.d.header.append(f"caption_extension = \"{FOLDER_NAME_SENTINEL}\" is the kohya_ss GUI's choice \"no "
                             "caption files: caption each image with its folder's <token> [class]\". lorakiln "
                             "does that for every image without a caption file, so data.caption_extension stays "
                             "\".txt\": move any .txt files that are not captions out of the image folders.")

    def _reg_data_dir(self, name: str, value: Any) -> None:
        if not value:
            return self.idle(name)
        self.d.put("prior.with_prior_preservation", True, self.label(name))
        self.d.put("prior.class_data_dir", value, self.label(name))
        from lorakiln.data.class_images import count_class_images

        found = count_class_images(self.base_dir / Path(str(value)).expanduser())
        if found:
            self.d.put("prior.num_class_images", found, f"{self.label(name)} (its {found} images, all "
                       "used as kohya does)")
        else:
            self.d.note(self.label(name), "folder not found from here: set prior.num_class_images to its image "
                        "count (kohya uses them all; lorakiln would generate missing ones with class_prompt)")
        self.d.note(self.label(name), "kohya interleaves regularisation images as extra samples (doubling the "
                    "steps); lorakiln adds class images to every batch (DreamBooth prior preservation)")

    def _prior_loss_weight(self, name: str, value: Any) -> None:
        if self.args.get("reg_data_dir"):
            self.d.put("prior.prior_loss_weight", value, self.label(name))
        else:
            self.idle(name)

    def _random_crop(self, name: str, value: Any) -> None:
        if value and self.args.get("cache_latents"):
            self.d.skip(self.label(name), "cannot be combined with cache_latents (sd-scripts refuses it too)")
        else:
            self._direct(name, value)

    def _samples(self, name: str, value: Any) -> None:
        if name != "sample_prompts":
            if not self.args.get("sample_prompts") or is_off(value):
                self.idle(name)
            elif name == "sample_sampler":
                self.d.put("validation.sample_sampler", str(value), self.label(name))
            else:
                key = "validation_epochs" if name.endswith("epochs") else "validation_steps"
                self.d.put(f"validation.{key}", value, self.label(name))
            return
        text = self._prompt_text(value)
        if text is None:
            return
        if not (self.given("sample_every_n_epochs") or self.given("sample_every_n_steps")):
            return self.d.skip(self.label(name), "sampling is off in the source (no sample_every_n_epochs/steps)")
        map_prompt_lines(self.d, text, self.label(name))

    def _prompt_text(self, value: Any) -> str | None:
        """sd-scripts takes a prompt file; the GUI importer passes the text (`inline:` prefix)."""
        if not value:
            self.idle("sample_prompts")
            return None
        text = str(value)
        if text.startswith("inline:"):
            return text[len("inline:"):]
        path = self.base_dir / Path(text).expanduser()
        if path.suffix.lower() == ".txt" and path.is_file():
            return path.read_text(encoding="utf-8")
        self.d.skip(self.label("sample_prompts"), "prompt file not found from here, or not a .txt prompt list; "
                    "copy its prompts into validation.validation_prompt")
        return None

    def _defaults(self) -> None:
        """sd-scripts' defaults where lorakiln's differ; a dataset config alone has only the data's
        (its training options are still to come, so none are invented)."""
        if self.dataset_only:
            for name in ("enable_bucket", "caption_extension"):
                if not self.given(name):
                    self.d.put_default(T.DIRECT[name], T.DEFAULTS[name], f"sd-scripts default {name} = "
                                       f"{T.DEFAULTS[name]!r}")
            return
        for name, value in T.DEFAULTS.items():
            if not self.given(name) and not (name == "learning_rate" and self._both_part_lrs()):
                self.d.put_default(T.DIRECT[name], value, f"sd-scripts default {name} = {value!r}")
        if not (self.given("max_train_epochs") or self.given("max_train_steps")):
            self.d.put_default("train.max_train_steps", 1600, "sd-scripts default max_train_steps = 1600")
        if not self.given("seed"):
            self.d.note("(no seed)", "sd-scripts drew a random seed; lorakiln uses train.seed = 42")

    def _both_part_lrs(self) -> bool:
        return self.d.has("train.unet_lr") and self.d.has("train.text_encoder_lr")


def map_prompt_lines(draft: Draft, text: str, origin: str) -> None:
    """kohya prompt lines (`a photo of zwx --n blurry --s 28 --l 7 --w 512 --h 512 --d 1`) →
    [validation]. lorakiln has one setting for all prompts: the first prompt's options."""
    prompts: list[str] = []
    options: list[dict[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = _PROMPT_OPTION.split(" " + line + " ")
        prompts.append(parts[0].strip())
        options.append({k: v.strip() for k, v in zip(parts[1::2], parts[2::2], strict=False)})
    if not prompts:
        return draft.idle("sample_prompts")
    draft.put("validation.validation_prompt", prompts, origin)
    draft.put("validation.num_validation_images", 1, origin + " (kohya renders one image per prompt)")
    first = options[0]
    if any(o != first for o in options[1:]):
        draft.note(origin, "per-prompt options differ; lorakiln uses the first prompt's for all")
    for letter, value in first.items():
        if letter in _SAMPLE_KEYS:
            draft.put(f"validation.{_SAMPLE_KEYS[letter]}", value, f"{origin} --{letter} {value}")
        elif letter not in ("w", "h"):
            draft.skip(f"{origin} --{letter} {value}", "prompt option not supported")
    if "w" in first or "h" in first:
        size = f"{first.get('w', first.get('h'))},{first.get('h', first.get('w'))}"
        draft.put("validation.validation_resolution", size, f"{origin} --w/--h {size}")


def map_sd_scripts(args: dict[str, Any], draft: Draft, base_dir: Path, label: Label, *,
                   source_names: dict[str, str] | None = None, arg_labels: dict[str, str] | None = None,
                   source_dir: Path | None = None, dataset_only: bool = False) -> None:
    """Fill `draft` from flat sd-scripts options. `label(name)` shows an option as written;
    `source_names` maps option names back to the source's own (the GUI's) for the account, and
    `arg_labels` shows `network_args` keys the source wrote as its own fields. A `dataset_config`
    is read from `source_dir` (the referencing file's folder), else `base_dir` or the current one.
    `dataset_only`: the source is a dataset config alone, so no training defaults are replayed."""
    args = dict(args)
    labels: dict[str, str] = {}
    if args.get("dataset_config"):
        from lorakiln.config.importers.dataset_config import follow_reference

        search = [p for p in (source_dir, base_dir, Path.cwd()) if p is not None]
        follow_reference(args, labels, draft, label("dataset_config"), search)
    shown: Label = (lambda name: labels.get(name) or label(name)) if labels else label
    mapper = _Mapper(args, draft, base_dir, shown, source_names or {}, arg_labels or {})
    mapper.dataset_only = dataset_only
    mapper.run()
