"""kohya_ss GUI config JSON ("Save config" on the LoRA tab) → lorakiln.

The GUI writes every field of its form, then builds sd-scripts options from them when you press
"Train". We do the same translation for the fields whose meaning differs from sd-scripts'
(`max_resolution`, `epoch`, `lr_warmup` in percent, string-typed numbers, `optimizer_args` as
one string, sample prompts as text, the learning-rate zero rules), turn `LoRA_type` and its
knobs into the `network_module` + `network_args` the GUI passes (`network_map.GUI_LORA_TYPES`),
handle the GUI-only fields (launcher settings, `sdxl`), and hand the rest to the sd-scripts
mapping, so both importers share one table and one network mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorakiln.config.importers import kohya_tables as T
from lorakiln.config.importers.cmdline import parse_command
from lorakiln.config.importers.draft import LAUNCHER, LOGGING_SERVICE, Draft, is_off
from lorakiln.config.importers.network_map import GUI_LORA_TYPES, KOHYA_BLOCK_ARGS
from lorakiln.config.importers.sdscripts import map_sd_scripts, toml_label

#: GUI field → the sd-scripts option the GUI passes it as (same value).
RENAMES: dict[str, str] = {
    "max_resolution": "resolution",
    "optimizer": "optimizer_type",
    "lora_network_weights": "network_weights",
}

#: GUI-only fields.
GUI_NOTED: dict[str, str] = {
    "sdxl": "lorakiln tells SD 1.x from SDXL by the weights",
    "model_list": "the GUI's model picker; pretrained_model_name_or_path is what counts",
    "sdxl_cache_text_encoder_outputs": T.NOTED["cache_text_encoder_outputs"],
    "sdxl_no_half_vae": T.NOTED["no_half_vae"],
    "xformers": T.NOTED["xformers"],
}
GUI_LAUNCHER = ("num_cpu_threads_per_process", "num_processes", "num_machines", "multi_gpu", "gpu_ids",
                "main_process_port", "dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic",
                "extra_accelerate_launch_args")
GUI_LOGGING = ("use_wandb",)
#: Network knobs of the GUI form; each `LoRA_type` passes some of them as `network_args`
#: (`network_map.GUI_LORA_TYPES`) and ignores the rest.
NETWORK_KNOBS = frozenset({"LyCORIS_preset", "conv_dim", "conv_alpha", "factor", "use_cp", "use_tucker",
                           "use_scalar", "decompose_both", "train_norm", "rescaled", "constrain", "bypass_mode",
                           "dora_wd", "train_on_input", "unit", "rank_dropout_scale", *KOHYA_BLOCK_ARGS})
#: The GUI's own defaults for those knobs: left at them, an unused knob says nothing.
KNOB_DEFAULTS: dict[str, Any] = {"LyCORIS_preset": "full", "factor": -1, "train_on_input": True,
                                 "unit": 1, "conv_dim": 1, "conv_alpha": 1}
_HANDLED = {"LoRA_type", "epoch", "max_train_epochs", "lr_warmup", "lr_warmup_steps", "learning_rate",
            "unet_lr", "text_encoder_lr", "noise_offset_type", "sample_prompts", "additional_parameters",
            "stop_text_encoder_training", "lr_scheduler_num_cycles", "caption_extension"}


class _Translator:
    def __init__(self, gui: dict[str, Any], draft: Draft) -> None:
        self.gui, self.d = gui, draft
        self.show = toml_label(gui)
        self.args: dict[str, Any] = {}
        self.labels: dict[str, str] = {}
        #: `network_args` key → the GUI field it came from, as shown in the account.
        self.arg_labels: dict[str, str] = {}
        self.passed: set[str] = set()

    def idle(self, name: str) -> None:
        if name in self.gui:
            self.d.idle(name)

    def put(self, option: str, value: Any, label: str) -> None:
        self.args[option] = value
        self.labels[option] = label

    def run(self) -> tuple[dict[str, Any], dict[str, str]]:
        self._lora_type()
        for name, value in self.gui.items():
            if name in _HANDLED:
                continue
            if name in GUI_NOTED or name in GUI_LAUNCHER:
                self._noted(name, value, GUI_NOTED.get(name, LAUNCHER))
            elif name in GUI_LOGGING and value:
                self.d.skip(self.show(name), LOGGING_SERVICE)
            elif name in NETWORK_KNOBS:
                self._unused_knob(name, value)
            elif name in GUI_LOGGING:
                self.idle(name)
            elif name.startswith(("multires_noise", "adaptive_noise_scale", "noise_offset")):
                self._noise(name, value)
            else:
                self.put(RENAMES.get(name, name), value, self.show(name))
        self._epochs()
        self._warmup()
        self._learning_rates()
        self._misc()
        self._additional_parameters()
        return self.args, self.labels

    def _noted(self, name: str, value: Any, text: str) -> None:
        if is_off(value) or (name in ("num_processes", "num_machines") and str(value) == "1") or name == "model_list":
            self.idle(name)
        else:
            self.d.note(self.show(name), text)

    def _lora_type(self) -> None:
        """`LoRA_type` → the `network_module` and `network_args` the GUI passes to sd-scripts;
        the shared network mapping reads them as it reads any sd-scripts config."""
        kind = str(self.gui.get("LoRA_type", "Standard"))
        spec = GUI_LORA_TYPES.get(kind)
        if spec is None:
            self.d.skip(self.show("LoRA_type"), f"not a LoRA_type this importer knows (it knows "
                        f"{', '.join(GUI_LORA_TYPES)})")
            return
        items = []
        for field, arg in spec.fields + tuple((f, f) for f in spec.sparse):
            value = self.gui.get(field)
            if field not in self.gui or (field in spec.sparse and is_off(value)):
                continue
            items.append(f"{arg}={value}")
            self.arg_labels[arg] = self.show(field)
            self.passed.add(field)
        if spec.algo:
            items.append(f"algo={spec.algo}")
        runs = spec.module + (f" algo={spec.algo}" if spec.algo else "")
        self.put("network_module", spec.module, f"{self.show('LoRA_type')} (the GUI runs {runs})")
        if items:
            self.put("network_args", items, "network_args")

    def _unused_knob(self, name: str, value: Any) -> None:
        """A network knob the GUI passes for this LoRA_type is read with `network_args`; the others
        are not passed by the GUI, so they are named only when set away from the GUI's default."""
        if name in self.passed:
            return
        if is_off(value) or value == KNOB_DEFAULTS.get(name):
            self.idle(name)
        else:
            self.d.note(self.show(name), f"the GUI does not pass it for LoRA_type {self.gui.get('LoRA_type')!r}")

    def _noise(self, name: str, value: Any) -> None:
        """The GUI passes noise_offset/adaptive only for type Original, multires_* only for Multires."""
        multires = self.gui.get("noise_offset_type") == "Multires"
        if name.startswith("multires_noise") != multires or is_off(value):
            self.idle(name)
        else:
            self.put(name, value, self.show(name))

    def _epochs(self) -> None:
        """`max_train_epochs` if set; else `epoch`, from which the GUI computes the steps — unless
        `max_train_steps` is set, which the GUI then passes alone."""
        epochs = self.gui.get("max_train_epochs")
        if is_off(epochs) and not is_off(self.gui.get("max_train_steps")):
            self.idle("max_train_epochs")
            if "epoch" in self.gui:
                self.d.note(self.show("epoch"), "unused by the GUI: max_train_steps is set")
            return
        key = "max_train_epochs" if not is_off(epochs) else "epoch"
        if not is_off(self.gui.get(key)):
            self.put("max_train_epochs", self.gui[key], self.show(key))
        if key == "max_train_epochs" and "epoch" in self.gui:
            self.d.note(self.show("epoch"), "max_train_epochs is set and wins")
        elif key == "epoch":
            self.idle("max_train_epochs")

    def _warmup(self) -> None:
        steps, pct = self.gui.get("lr_warmup_steps"), self.gui.get("lr_warmup")
        if not is_off(steps):
            self.put("lr_warmup_steps", steps, self.show("lr_warmup_steps"))
            if not is_off(pct):
                self.d.note(self.show("lr_warmup"), "lr_warmup_steps is set and wins")
            return
        self.idle("lr_warmup_steps")
        if not is_off(pct):
            fraction = min(float(pct) / 100.0, 0.999)  # lorakiln reads a value below 1 as a fraction
            self.put("lr_warmup_steps", fraction, f"{self.show('lr_warmup')} (percent of the steps)")
        else:
            self.idle("lr_warmup")

    def _learning_rates(self) -> None:
        """The GUI's rules: U-Net/TE rates of 0 mean "not set" when both are 0 (learning_rate then
        serves both); TE 0 alone trains the U-Net only; U-Net 0 alone the text encoder only."""
        unet, te = self.gui.get("unet_lr"), self.gui.get("text_encoder_lr")
        if is_off(self.gui.get("learning_rate")):
            self.idle("learning_rate")
        else:
            self.put("learning_rate", self.gui["learning_rate"], self.show("learning_rate"))
        if is_off(unet) and is_off(te):
            self.idle("unet_lr")
            self.idle("text_encoder_lr")
            return
        if is_off(te):
            self.put("network_train_unet_only", True, f"{self.show('text_encoder_lr')} (the GUI then trains "
                     "the U-Net only)")
        else:
            self.put("text_encoder_lr", te, self.show("text_encoder_lr"))
        if is_off(unet):
            self.put("network_train_text_encoder_only", True, f"{self.show('unet_lr')} (the GUI then trains "
                     "the text encoder only)")
        else:
            self.put("unet_lr", unet, self.show("unet_lr"))

    def _misc(self) -> None:
        prompts = self.gui.get("sample_prompts")
        if prompts is not None:
            self.put("sample_prompts", f"inline:{prompts}" if prompts else "", self.show("sample_prompts"))
        ext = self.gui.get("caption_extension")
        if ext:
            self.put("caption_extension", ext, self.show("caption_extension"))
        elif ext is not None:
            self.d.note(self.show("caption_extension"), "empty in the GUI: sd-scripts then reads `.caption` "
                        "files; set data.caption_extension = \".txt\" if your captions are .txt")
        cycles = self.gui.get("lr_scheduler_num_cycles")
        if not is_off(cycles):
            self.put("lr_scheduler_num_cycles", cycles, self.show("lr_scheduler_num_cycles"))
        elif self.gui.get("lr_scheduler") == "cosine_with_restarts" and not is_off(self.gui.get("epoch")):
            self.put("lr_scheduler_num_cycles", self.gui["epoch"], f"{self.show('epoch')} (the GUI's "
                     "default number of restarts)")
        else:
            self.idle("lr_scheduler_num_cycles")
        self.idle("noise_offset_type")  # read by _noise: it picks which noise fields count
        stop = self.gui.get("stop_text_encoder_training")
        if is_off(stop):
            self.idle("stop_text_encoder_training")
        elif 0 < float(stop) < 100:
            self.d.put("train.train_text_encoder_frac", float(stop) / 100.0,
                       f"{self.show('stop_text_encoder_training')} (percent of the steps)")
        else:
            self.d.skip(self.show("stop_text_encoder_training"), "only a percentage between 0 and 100 imports")

    def _additional_parameters(self) -> None:
        """Free-text sd-scripts flags typed into the GUI: read them like a command line."""
        text = str(self.gui.get("additional_parameters") or "").strip()
        if not text:
            self.idle("additional_parameters")
            return
        for flag in parse_command(text).flags:
            value: Any = True if not flag.values else flag.values[0] if len(flag.values) == 1 else list(flag.values)
            self.put(flag.name, value, f"additional_parameters: {flag.text()}")


def map_kohya_gui(gui: dict[str, Any], draft: Draft, base_dir: Path, source_dir: Path | None = None) -> None:
    """Fill `draft` from a kohya_ss GUI config (already parsed JSON); `source_dir` is its folder
    (a `dataset_config` it names is looked for there)."""
    translator = _Translator(gui, draft)
    args, labels = translator.run()
    names = {option: gui_name for gui_name, option in RENAMES.items()}
    map_sd_scripts(args, draft, base_dir, lambda name: labels.get(name) or f"{name} = {json.dumps(args.get(name))}",
                   source_names=names, arg_labels=translator.arg_labels, source_dir=source_dir)
