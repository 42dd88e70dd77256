"""The web UI's words for what the package says in the CLI's words.

The library's messages are written for the command line: "pass --force to overwrite it",
"--max-length 10 is below --min-length 50", "start `lorakiln ui` with --lora-dir …". A person in
the browser has no command line, so every message a tab shows goes through `ui_words`, which
names the tab's field, tick box or button instead of the flag (and the server's folders instead
of the flags that set them when the UI was started). The rules live here, in one table, so the
CLI keeps its precise messages and every tab words them the same way; a flag this table does not
know still becomes a quoted field-like name, so no ``--flag`` ever reaches the browser.

`missing_model_words` turns `captioning.model_source.ModelUnavailable` (a hub model that is not
on this machine, which cannot download it) into the UI's instructions: which model, why it
cannot be fetched, and which of the server's folders to copy it into.

Every tab of the UI may import these (the Train tab's owner applies `ui_words` too).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lorakiln.captioning.model_source import ModelUnavailable

__all__ = ["FLAG_WORDS", "FOLDER_WORDS", "missing_model_words", "no_flags", "ui_words"]

_STARTED = "(set when the UI was started)"
#: ``lorakiln ui`` folder flags → the folders as the UI user knows them.
FOLDER_WORDS: dict[str, str] = {
    "--models-dir": "the server's models folders", "--vae-dir": "the server's VAE folders",
    "--lora-dir": "the server's LoRA folders", "--embeddings-dir": "the server's embeddings folders",
    "--data-dir": "the server's photo folders", "--project": "the project folder",
}
#: CLI flag → the UI's field, tick box or button (the tabs' labels, in quotes).
FLAG_WORDS: dict[str, str] = {
    # every tab
    "--force": 'tick "overwrite"', "--overwrite": 'tick "overwrite existing captions"',
    "--resume": "the resume button", "--allow-pickle": "pickle loading allowed (an option the UI server is started "
    "with)", "--set": "the form", "--config": "the run TOML", "--dry-run": '"count steps"',
    # Dataset tab
    "--token": "the trigger word", "--class": "the class word", "--repeats": '"repeats"',
    "--dest": "the dataset folder (<project>/train)",
    # Caption tab
    "--method": '"method"', "--prefix": '"prefix"', "--postfix": '"postfix"', "--batch-size": '"batch size"',
    "--num-beams": '"beams"', "--min-length": '"min length"', "--max-length": '"max length"',
    "--sample": '"nucleus sampling"', "--top-p": '"top p"', "--text-prompt": '"text prompt"',
    "--threshold": '"threshold"', "--character-threshold": '"character threshold"', "--exclude-tags": '"exclude tags"',
    "--tag-separator": '"tag separator"', "--no-underscore-replace": '"long_hair → long hair" unticked',
    "--include-rating": '"rating tag first"', "--sort-by-confidence": '"most confident first"',
    "--device": "the device (the UI uses the GPU when there is one)",
    # Test tab
    "--seed": '"seed"', "--steps": '"steps"', "--sampler": '"sampler"', "--schedule-type": '"schedule type"',
    "--prompt": '"prompt"', "--negative-prompt": '"negative prompt"', "--params": '"paste A1111 parameters"',
    # Tools tab
    "--rank": '"rank"', "--conv-rank": '"conv rank"', "--dynamic": '"dynamic"', "--dynamic-param": '"dynamic param"',
    "--save-precision": '"save precision"', "--family": '"family"', "--to": '"to"', "--density": '"density"',
    "--lora": '"LoRAs"', "--modules": '"every module"',
} | {flag: f"{words} {_STARTED}" for flag, words in FOLDER_WORDS.items()}


def _folder_hint(match: re.Match[str]) -> str:
    return f"or into one of {FOLDER_WORDS.get(match[1], 'the folders of the server')} {_STARTED}"


#: Whole CLI phrases whose flag-by-flag translation would read badly; applied first, in order.
_PHRASES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = tuple(
    (re.compile(pattern), replacement) for pattern, replacement in (
        # the Sandbox's refusal hint: the folders are already listed earlier in the message
        (r"or start `lorakiln ui` with (--[a-z-]+) [^\n]*", _folder_hint),
        (r"restart the UI with --allow-pickle", "restart the UI server with pickle loading allowed"),
        (r"pass --force to overwrite it", 'tick "overwrite" to replace it'),
        (r"\(use --overwrite to replace\)", '(tick "overwrite existing captions" to replace them)'),
        (r"([Cc])hoose another --dest", r"\1hoose another trigger word, class word or repeats"),
        (r"`lorakiln dataset init --repeats auto`", 'repeats "auto" (Dataset tab)'),
        (r"--repeats (auto|\d+)\b", r'repeats "\1"'),
        (r"`lorakiln dataset edit [^`]*?--add (\"[^\"]*\")`", r"adding \1 to each caption (Dataset tab, or the "
         r"Caption tab's prefix with overwrite ticked)"),
        (r"`lorakiln dataset edit [^`]*?--remove ('[^']*'|\"[^\"]*\")`", r"removing \1 from each caption in the "
         r"Dataset tab"),
        (r"`?lorakiln lora convert (?:\S+ )*?--to (\w+)`?", r"""the Tools tab's convert ("to": \1)"""),
        (r"`lora (convert|resize|merge|info)`", r"the Tools tab's \1"),
        (r"run `hf download (\S+)[^`]*`", r"download the files of \1 from its Hugging Face page (Files tab)"),
        (r"no --lora-dir was given", "no LoRA folder was picked"),
        (r"pass at least one --lora FILE\[:STRENGTH\]", "pick at least one LoRA"),
        (r"pass --model BASE", 'pick a "base model"'),
        (r"--model BASE", '"base model"'),
        (r"add --to (\w+)", r'set "to" to \1'),
        (r" \(--batch-size\)", ""),
    ))
#: A flag where a word starts: `--rank`, `(--model)`, `"--x"`; not `a--b` inside a file name.
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def ui_words(message: str, *, model_field: str = "caption model") -> str:
    """`message` with every CLI flag replaced by the UI's words for it.

    `model_field` is the label of the tab's model field, which ``--model`` means there
    ("caption model" in the Caption tab, "base model" in the Test and Tools tabs). A flag the
    tables do not know becomes its name in quotes (``--foo-bar`` → ``"foo bar"``)."""
    text = str(message)
    for pattern, replacement in _PHRASES:
        text = pattern.sub(replacement, text)

    def word(match: re.Match[str]) -> str:
        flag = match[0]
        if flag == "--model":
            return f"the {model_field} field"
        return FLAG_WORDS.get(flag, f'"{match[1].replace("-", " ")}"')

    return _FLAG.sub(word, text)


def no_flags(message: str) -> bool:
    """True when `message` names no CLI flag (what the tests and `ui_words` promise)."""
    return _FLAG.search(message) is None


def missing_model_words(err: ModelUnavailable, folders: Sequence[Path | str], *,
                        field: str = "caption model") -> str:
    """The UI's message for a model that is not on this machine, which cannot download it: the
    model's hub id, why the hub is out of reach, and how to bring it here — download the model
    folder on another computer, copy it into one of the server's model `folders`, pick it in
    `field`. No CLI flag or command: the person reading it may have only the browser."""
    where = ", ".join(str(f) for f in folders) or "the project folder"
    text = (f"the {err.what} model {err.repo_id} is not on this machine, and this machine cannot reach the Hugging "
            f"Face hub ({err.host}): {err.reason}. To use it, download the model folder on a computer with "
            f"internet (all files of {err.page}; it must hold {err.files}), copy that folder into one of the "
            f"server's model folders: {where}. Then pick it in the {field} field (refresh models first).")
    return ui_words(text, model_field=field)
