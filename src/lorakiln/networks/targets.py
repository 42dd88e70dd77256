"""Which layers a LoRA adapts: the `network.target_modules` presets and include/exclude patterns.

Every trainer names its own target sets; lorakiln's four presets are graded, each adding a kind
of layer to the one before:

- ``attn``: the attention projections only — in the U-Net's transformer blocks ``attn1``/``attn2``
  ``to_q``/``to_k``/``to_v``/``to_out.0``, in each trained text encoder ``self_attn``
  ``q_proj``/``k_proj``/``v_proj``/``out_proj``. These are the targets of the diffusers training
  scripts (``train_dreambooth_lora.py``: ``["to_k", "to_q", "to_v", "to_out.0"]``), LyCORIS's
  ``attn-only`` and OneTrainer's "attn-only"; 128 U-Net layers on SD 1.5.
- ``attn-mlp``: ``attn`` plus the feed-forward layers (``ff.net.0.proj``, ``ff.net.2``; the text
  encoders' ``mlp.fc1``/``fc2``); 160 U-Net layers on SD 1.5.
- ``kohya`` (default): ``attn-mlp`` plus each transformer's ``proj_in``/``proj_out`` — every
  Linear and 1×1 conv inside ``Transformer2DModel``, sd-scripts' ``networks/lora.py`` default;
  192 U-Net layers on SD 1.5. LyCORIS and OneTrainer call this set "attn-mlp".
- ``full``: ``kohya`` plus the ResNet blocks and up/down-samplers (LoCon; ``conv_dim`` defaults
  to ``network_dim``), LyCORIS's "full" without its by-name extras that A1111 cannot map.

``target_include`` / ``target_exclude`` then narrow the preset: Python regular expressions
searched in a layer's kohya name (``lora_unet_…_attn2_to_k``) and in its diffusers path with the
part first (``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k``), as ai-toolkit's
``only_if_contains``/``ignore_if_contains`` and peft's ``target_modules`` regexes do.

The role of a layer is read from its name alone (no torch here), so `lora info` can name the
preset of any file and the dry run can compare a file to a config before a model is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lorakiln.errors import LorakilnError

#: Preset → the layer roles it adapts (see the module docstring).
PRESET_ROLES: dict[str, frozenset[str]] = {
    "attn": frozenset({"attn"}),
    "attn-mlp": frozenset({"attn", "mlp"}),
    "kohya": frozenset({"attn", "mlp", "proj"}),
    "full": frozenset({"attn", "mlp", "proj", "conv"}),
}
PRESETS = tuple(PRESET_ROLES)
DEFAULT_PRESET = "kohya"

PRESET_HELP = {
    "attn": "attention projections only (q/k/v/out), as the diffusers LoRA scripts",
    "attn-mlp": "attention and feed-forward layers",
    "kohya": "every Linear/1x1 conv of the transformer blocks, sd-scripts' default",
    "full": "kohya's set plus the ResNet convs and up/down-samplers (LoCon)",
}

# Roles by name; "." or "_" separators so the same rule reads diffusers paths and kohya keys.
_S = r"[._]"
_ROLE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("attn", re.compile(rf"{_S}attn\d+{_S}(to_q|to_k|to_v|to_out{_S}0)$")),
    ("attn", re.compile(rf"{_S}self_attn{_S}(q|k|v|out)_proj$")),
    ("mlp", re.compile(rf"{_S}ff{_S}net{_S}(0{_S}proj|2)$")),
    ("mlp", re.compile(rf"{_S}mlp{_S}fc[12]$")),
    ("proj", re.compile(rf"{_S}proj_(in|out)$")),
    ("conv", re.compile(rf"{_S}(resnets|downsamplers|upsamplers){_S}\d+{_S}")),
    ("conv", re.compile(rf"(^|{_S})(input_blocks|output_blocks|middle_block){_S}\d+({_S}\d+)?{_S}"
                        rf"(in_layers|out_layers|emb_layers|skip_connection|op|conv)")),  # SGM names
)
_TE_ATTENTION = re.compile(rf"^(?P<layer>.*{_S}self_attn){_S}(q|k|v|out)_proj$")


def layer_role(name: str) -> str:
    """"attn", "mlp", "proj", "conv" or "other" for a layer's diffusers path or kohya key."""
    for role, pattern in _ROLE_PATTERNS:
        if pattern.search(name):
            return role
    return "other"


def preset_of(names: Iterable[str]) -> str:
    """The smallest preset whose roles cover these layers (or "custom" when one is outside all)."""
    roles = {layer_role(n) for n in names}
    for preset, allowed in PRESET_ROLES.items():
        if roles <= allowed:
            return preset
    return "custom"


#: A repeated group that itself repeats, e.g. ``(a+)+`` or ``(.*)*``: Python's backtracking
#: matcher can take exponential time on such patterns, and a run's patterns may come from the web
#: UI (untrusted), so they are refused; layer names never need them.
_NESTED_REPEAT = re.compile(r"\([^()]*[*+}][^()]*\)\s*[*+{]")
MAX_PATTERN = 200


def compile_patterns(key: str, patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """Each pattern compiled; a bad one is a `ValueError` naming the config key and the pattern."""
    out = []
    for pattern in patterns:
        if len(pattern) > MAX_PATTERN or _NESTED_REPEAT.search(pattern):
            raise ValueError(f"{key}: {pattern!r} is too long (over {MAX_PATTERN} characters) or repeats a "
                             "repeated group (like '(a+)+'), which can take exponential time to match; "
                             "write it without nested repetition, e.g. 'attn2' or 'up_blocks\\.[12]'")
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"{key}: {pattern!r} is not a regular expression ({exc}); escape dots as "
                             r"'\.', e.g. 'attn2\.to_k'") from None
    return out


@dataclass(frozen=True)
class Candidate:
    """A layer the network could adapt: its kohya key, part (unet/text_encoder…) and module path."""

    key: str
    part: str
    path: str

    @property
    def names(self) -> tuple[str, str]:
        return self.key, f"{self.part}.{self.path}"


@dataclass(frozen=True)
class TargetRule:
    """A preset plus include/exclude patterns (`network.target_modules`, `target_include`, `target_exclude`)."""

    preset: str = DEFAULT_PRESET
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.preset not in PRESET_ROLES:
            raise ValueError(f"network.target_modules = {self.preset!r}: choose one of {', '.join(PRESETS)}")

    @property
    def convs(self) -> bool:
        """Whether the rule's preset adapts the ResNet convs (LoCon)."""
        return "conv" in PRESET_ROLES[self.preset]

    def describe(self) -> str:
        text = f"{self.preset} ({PRESET_HELP[self.preset]})"
        if self.include:
            text += f", only {' | '.join(self.include)}"
        if self.exclude:
            text += f", not {' | '.join(self.exclude)}"
        return text

    def select(self, candidates: Sequence[Candidate], with_convs: bool = False) -> list[Candidate]:
        """The candidates this rule adapts, in order (`with_convs`: also the ResNet convs, as
        kohya's ``conv_dim`` and LyCORIS's algorithms add them to ``kohya``'s set);
        `LorakilnError` for a pattern that matches
        nothing (a typo would otherwise train a different network silently) or a text-encoder
        attention layer left with only some of q/k/v/out (diffusers drops q/k/v without
        ``out_proj``; A1111 patches SDXL's second encoder's attention only with all four)."""
        roles = PRESET_ROLES[self.preset] | ({"conv"} if with_convs else set())
        pool = [c for c in candidates if layer_role(c.path) in roles]
        chosen = pool
        if self.include:
            keep = compile_patterns("network.target_include", self.include)
            self._check_matches("network.target_include", self.include, keep, pool)
            chosen = [c for c in chosen if any(p.search(n) for p in keep for n in c.names)]
        if self.exclude:
            drop = compile_patterns("network.target_exclude", self.exclude)
            self._check_matches("network.target_exclude", self.exclude, drop, chosen)
            chosen = [c for c in chosen if not any(p.search(n) for p in drop for n in c.names)]
        if pool and not chosen:
            raise LorakilnError(f"network.target_include/target_exclude leave no layer of preset "
                                f"{self.preset!r} to adapt ({len(pool)} before the patterns); loosen them")
        _check_te_attention(chosen)
        return chosen

    def _check_matches(self, key: str, patterns: Sequence[str], compiled: Sequence[re.Pattern[str]],
                       pool: Sequence[Candidate]) -> None:
        for text, pattern in zip(patterns, compiled, strict=True):
            if pool and not any(pattern.search(n) for c in pool for n in c.names):
                example = pool[0]
                raise LorakilnError(
                    f"{key} pattern {text!r} matches none of the {len(pool)} layers of preset {self.preset!r}; "
                    f"names look like {example.names[1]!r} or {example.key!r}")


def _check_te_attention(chosen: Sequence[Candidate]) -> None:
    layers: dict[str, set[str]] = {}
    for c in chosen:
        m = _TE_ATTENTION.match(c.path)
        if c.part != "unet" and m:
            layers.setdefault(f"{c.part}.{m['layer']}", set()).add(c.path)
    partial = sorted(name for name, members in layers.items() if len(members) != 4)
    if partial:
        raise LorakilnError(
            f"network.target_include/target_exclude keep only part of q/k/v/out_proj in {len(partial)} "
            f"text-encoder attention layer(s) (e.g. {partial[0]}): diffusers drops q/k/v without out_proj and "
            "AUTOMATIC1111 patches SDXL's second text encoder only with all four; keep or drop them together")


def file_modules(candidates: Sequence[Candidate], module_ranks: Mapping[str, int]) -> list[Candidate]:
    """The candidates a LoRA file has modules for (`dim_from_weights`); unknown file keys are an error."""
    known = {c.key for c in candidates}
    unknown = sorted(set(module_ranks) - known)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f", … ({len(unknown)} in all)" if len(unknown) > 5 else "")
        raise LorakilnError(
            f"network.dim_from_weights: the file has modules this model and config have no layer for: {shown}. "
            "Is it for another model family, or does it train a text encoder this run leaves alone "
            "(network_train_unet_only)?")
    return [c for c in candidates if c.key in module_ranks]
