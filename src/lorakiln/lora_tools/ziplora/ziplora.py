"""`lorakiln lora ziplora`: merge a subject LoRA and a style LoRA by learned column mergers.

ZipLoRA (Shah et al. 2023, "ZipLoRA: Any Subject in Any Style by Effectively Merging LoRAs",
arXiv 2311.13600, method section) keeps both inputs' effects where a plain average halves them and a plain
sum lets aligned columns interfere: for every module both LoRAs patch, merger vectors m_c, m_s
(init 1) scale the columns of ΔW_c and ΔW_s, ``ΔW_m = m_c ⊗ ΔW_c + m_s ⊗ ΔW_s``, and ~100 Adam
steps on the base model fit D_m to each LoRA on its own prompts while pushing m_c ⊥ m_s. The
maths lives in `modules` (adapters, column axis) and `train` (loss, latents,
text encoders, effect kept); this module checks the inputs, runs the steps and writes the file.

**Output.** Column scaling of ``ΔW = scale · up @ down`` is scaling ``down``'s input columns, so
each merged module is the exact rank concatenation ``up = [s_c·up_c, s_s·up_s]``, ``down =
[down_c·diag(m_c); down_s·diag(m_s)]`` with alpha = rank (scale 1): an ordinary kohya
LoRA/LoCon file of rank r_c + r_s that AUTOMATIC1111, ComfyUI and diffusers
load. Modules only one input has are copied as they are. Metadata records the inputs (name,
hash, prompt), base model, steps, lr, λ, latents, the final loss terms and the effect-kept table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lorakiln.errors import LorakilnError
from lorakiln.lora_tools.files.lorafile import KohyaLoRA, check_lora_output, read_kohya_lora, write_kohya_lora
from lorakiln.lora_tools.ziplora.modules import ZipSet
from lorakiln.lora_tools.ziplora.train import (
    METHODS,
    Concept,
    Setup,
    effect_kept,
    generated_latents,
    latent_shape,
    native_resolution,
    optimise,
    random_latents,
)

if TYPE_CHECKING:
    from lorakiln.models.bundle import ModelBundle

LATENT_SOURCES = ("generated", "random")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class ZipLoRAOptions:
    """Settings of one merge; defaults follow the paper (method: Adam, lr 1e-2, 100 steps, λ 0.01)."""

    steps: int = 100
    lr: float = 1e-2
    lam: float = 0.01
    resolution: int | None = None  # None: the U-Net's own size (512 SD 1.5, 1024 SDXL, 64 toy)
    seed: int = 0
    latents: str = "generated"  # see train's docstring
    num_latents: int = 4  # clean latents per concept that the steps cycle through
    batch_size: int = 1  # latents per concept per step (mkshing/ziplora-pytorch: 1)
    eval_latents: int = 2  # held-out latents per concept for the effect-kept measurement
    sample_steps: int = 20  # sampler steps per generated latent
    device: str | None = None  # None: cuda when available
    mixed_precision: str = "no"
    save_precision: str | None = None  # None: the inputs' (fp32 if they differ)

    def check(self) -> None:
        """`LorakilnError` naming the first value out of range (before anything is loaded)."""
        rules = [(self.steps >= 0, f"--steps must be >= 0, got {self.steps}"),
                 (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
                 (self.lam >= 0, f"--lambda must be >= 0, got {self.lam}"),
                 (self.latents in LATENT_SOURCES, f"--latents must be one of {', '.join(LATENT_SOURCES)}, "
                                                   f"got {self.latents!r}"),
                 (min(self.num_latents, self.eval_latents, self.batch_size) >= 1,
                  "--num-latents, --eval-latents and --batch-size must be >= 1"),
                 (self.sample_steps >= 1, f"--sample-steps must be >= 1, got {self.sample_steps}"),
                 (self.mixed_precision in MIXED_PRECISION, f"--mixed-precision must be one of "
                                                           f"{', '.join(MIXED_PRECISION)}")]
        for ok, message in rules:
            if not ok:
                raise LorakilnError(message)


@dataclass
class ZipLoRAResult:
    """What a merge wrote, learned and measured."""

    path: Path
    family: str
    shared: int  # modules both inputs patch (merged with learned vectors)
    only_subject: int
    only_style: int
    mergers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    history: list[dict[str, float]]
    #: ``{method: {"subject": x, "style": y}}`` for ZipLoRA ("merged"), "average" and "sum".
    effect_kept: dict[str, dict[str, float]]
    notes: list[str] = field(default_factory=list)


def _header_family(path: Path) -> str | None:
    """The family the file's header says (None: unknown); diffusers-format files are refused with
    the command that converts them, since the merge reads and writes kohya keys."""
    from lorakiln.lora_tools.files.header import read_header
    from lorakiln.lora_tools.files.modules import detect_format, group_modules
    from lorakiln.networks.file_family import detect_family

    header = read_header(path)
    modules = group_modules(list(header.tensors))[0]
    if detect_format(modules).startswith("diffusers"):
        raise LorakilnError(f"{path.name} is a diffusers/PEFT-format LoRA; convert it first: "
                            f"lorakiln lora convert {path} {path.stem}-kohya.safetensors --to kohya")
    return detect_family(modules, header.metadata)[0]


def _check_paths(subject: Path, style: Path, output: Path, force: bool, model: str | None) -> None:
    for p in (subject, style):
        if not p.is_file():
            raise LorakilnError(f"{p}: no such LoRA file")
        if p.suffix != ".safetensors":
            raise LorakilnError(f"{p}: ZipLoRA reads .safetensors LoRA files only (pickles can run code)")
    if subject.resolve() == style.resolve():
        raise LorakilnError(f"--subject and --style are the same file ({subject}); pass two different LoRAs")
    check_lora_output(output, [subject, style, model], verb="lora ziplora", force=force)


def _check_plain(lora: KohyaLoRA) -> None:
    """Refuse modules without up/down factors: they have no columns to scale."""
    for key, (algo, parts) in lora.modules.items():
        if algo != "lora" or "lora_mid.weight" in parts:
            kinds = {"lora": "LoCon Tucker (lora_mid)", "loha": "LoHa", "lokr": "LoKr"}
            raise LorakilnError(f"{lora.path.name}: {key} is a {kinds.get(algo, algo)} module; ZipLoRA "
                                "merges plain LoRA/LoCon modules (lora_down/lora_up), whose columns the "
                                "merger vectors scale — use a plain LoRA/LoCon file for this input")


def load_inputs(subject: str | Path, style: str | Path, output: str | Path, *, force: bool = False,
                family: str | None = None, model: str | None = None) -> tuple[KohyaLoRA, KohyaLoRA] | None:
    """Check paths, families and module kinds before any model is loaded.

    Returns both files read, or None when neither says its family (they are then read with the
    base model's family once it is loaded, `family`)."""
    subject, style, output = Path(subject), Path(style), Path(output)
    _check_paths(subject, style, output, force, model)
    families = {p: _header_family(p) for p in (subject, style)}
    known = {f for f in families.values() if f is not None}
    if len(known) > 1:
        raise LorakilnError(f"{subject.name} is a {families[subject]} LoRA but {style.name} is a "
                            f"{families[style]} LoRA; ZipLoRA merges two LoRAs for the same base model")
    name = family or (known.pop() if known else None)
    if name is None:
        return None
    loras = (read_kohya_lora(subject, name), read_kohya_lora(style, name))
    for lora in loras:
        _check_plain(lora)
    return loras


def _device(options: ZipLoRAOptions) -> torch.device:
    if options.device:
        try:
            return torch.device(options.device)
        except RuntimeError:
            raise LorakilnError(f"--device {options.device!r} is not a torch device "
                                "(cpu, cuda, cuda:1, mps)") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _prepare_bundle(model: str | ModelBundle, options: ZipLoRAOptions, device: torch.device
                    ) -> tuple[ModelBundle, torch.dtype | None]:
    """Load (or take) the base model, frozen on `device`; half weights only on a GPU, as the trainer."""
    from lorakiln.training.context import autocast_dtype_for

    autocast = autocast_dtype_for(options.mixed_precision, device)
    if isinstance(model, str):
        from lorakiln.models.configured import load_configured_model

        bundle = load_configured_model(model)
    else:
        bundle = model
    weight_dtype = autocast if autocast is not None and device.type == "cuda" else None
    for module in (bundle.unet, *bundle.text_encoders):
        module.requires_grad_(False).eval()
        module.to(device) if weight_dtype is None else module.to(device, dtype=weight_dtype)
    bundle.vae.requires_grad_(False).eval().to(device)  # the pipeline takes its device from the VAE
    return bundle, autocast


def _file_dtype(subject: KohyaLoRA, style: KohyaLoRA, wanted: str | None) -> torch.dtype | str:
    if wanted:
        return wanted
    dtypes = {parts["lora_down.weight"].dtype
              for lora in (subject, style) for _, parts in lora.modules.values()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _tag_frequency(subject: KohyaLoRA, style: KohyaLoRA) -> dict[str, str]:
    """Both inputs' ``ss_tag_frequency`` (A1111 shows it as trigger words), datasets prefixed."""
    merged: dict[str, object] = {}
    for role, lora in (("subject", subject), ("style", style)):
        try:
            tags = json.loads(lora.metadata.get("ss_tag_frequency", "{}"))
        except json.JSONDecodeError:
            continue
        if isinstance(tags, dict):
            merged |= {f"{role}: {name}": counts for name, counts in tags.items()}
    return {"ss_tag_frequency": json.dumps(merged)} if merged else {}


def _metadata(subject: KohyaLoRA, style: KohyaLoRA, prompts: tuple[str, str], bundle: ModelBundle,
              options: ZipLoRAOptions, history: list[dict[str, float]],
              kept: dict[str, dict[str, float]]) -> dict[str, str]:
    inputs = {role: {"file": lora.path.name, "sshs_model_hash": lora.metadata.get("sshs_model_hash", ""),
                     "prompt": prompt}
              for role, lora, prompt in (("subject", subject, prompts[0]), ("style", style, prompts[1]))}
    record = {"method": "ZipLoRA (Shah et al. 2023, arXiv 2311.13600)", "inputs": inputs,
              "base_model": bundle.name,
              "options": {k: v for k, v in asdict(options).items() if k not in ("device",)},
              "final_loss": history[-1] if history else None,
              "effect_kept": {name: kept[mode] for mode, name in METHODS.items()}}
    comment = (f"ZipLoRA merge of {subject.path.name} (\"{prompts[0]}\") and {style.path.name} "
               f"(\"{prompts[1]}\"), {len(history)} steps")
    return {"ss_training_comment": comment, "ss_sd_model_name": bundle.name,
            "lorakiln_ziplora": json.dumps(record, allow_nan=True), **_tag_frequency(subject, style)}


def ziplora_merge(model: str | ModelBundle, subject: str | Path, style: str | Path, subject_prompt: str,
                  style_prompt: str, output: str | Path, options: ZipLoRAOptions = ZipLoRAOptions(), *,
                  force: bool = False, progress: bool = False, log: Callable[[str], None] = print
                  ) -> ZipLoRAResult:
    """Learn the ZipLoRA merge of `subject` and `style` on `model` and write it to `output`.

    `model` is anything `load_configured_model` takes (folder, file, hub id, ``tiny:sd1``,
    ``toy``) or an already loaded bundle (moved to the device; its hooks are removed after).
    """
    options.check()
    if not subject_prompt.strip() or not style_prompt.strip():
        raise LorakilnError("--subject-prompt and --style-prompt must not be empty: the loss compares each "
                            "LoRA on its own prompt (e.g. \"a sks dog\", \"a cat in szn style\")")
    loras = load_inputs(subject, style, output, force=force, model=model if isinstance(model, str) else None)
    device = _device(options)
    bundle, autocast = _prepare_bundle(model, options, device)
    fam = bundle.family.name
    if loras is None:
        loras = load_inputs(subject, style, output, force=force, family=fam)
        assert loras is not None
    for lora in loras:
        if lora.family.name != fam:
            raise LorakilnError(f"{lora.path.name} is a {lora.family.name} LoRA, but the base model is "
                                f"{fam}; pass a {lora.family.name} base model with --model")
    resolution = options.resolution or native_resolution(bundle)
    zips = ZipSet(bundle, loras[0], loras[1], device)
    try:
        setup = Setup(bundle, zips, [], device, resolution, autocast, options.seed)
        setup.concepts = _concepts(setup, (subject_prompt, style_prompt), options, log)
        history = _run_steps(setup, options, progress, log)
        kept = effect_kept(setup)
        modules = zips.merged_factors()
        mergers = zips.mergers()
    finally:
        zips.remove()
    md = _metadata(loras[0], loras[1], (subject_prompt, style_prompt), bundle, options, history, kept)
    path = write_kohya_lora(output, modules, bundle.family, extra_metadata=md, force=force,
                            dtype=_file_dtype(loras[0], loras[1], options.save_precision),
                            inputs=[loras[0].path, loras[1].path, model if isinstance(model, str) else None],
                            verb="lora ziplora")
    only = [sum(1 for m in zips.modules.values() if m.inputs[i] is not None and not m.learns) for i in (0, 1)]
    return ZipLoRAResult(path, fam, len(mergers), only[0], only[1], mergers, history, kept)


def _concepts(setup: Setup, prompts: tuple[str, str], options: ZipLoRAOptions,
              log: Callable[[str], None]) -> list[Concept]:
    """Each concept's training and held-out latents (`generated` by its own LoRA, or `random`)."""
    try:
        shape = latent_shape(setup.bundle, setup.resolution)
    except ValueError as err:
        raise LorakilnError(str(err)) from None
    n, k = options.num_latents, options.eval_latents
    if options.latents == "generated":
        log(f"sampling {n + k} latents per LoRA ({options.sample_steps} steps, {setup.resolution} px)")
    concepts = []
    for index, (name, prompt) in enumerate(zip(("subject", "style"), prompts, strict=True)):
        seeds = [options.seed + 10_000 * index + i for i in range(n + k)]  # last k are held out
        if options.latents == "generated":
            pool = generated_latents(setup.bundle, setup.zips, name, prompt, seeds, setup.resolution,
                                     options.sample_steps)
        else:
            pool = torch.cat([random_latents(shape, 1, s) for s in seeds])
        concepts.append(Concept(name, prompt, pool[:n], pool[n:]))
    return concepts


def _run_steps(setup: Setup, options: ZipLoRAOptions, progress: bool,
               log: Callable[[str], None]) -> list[dict[str, float]]:
    from tqdm.auto import tqdm

    if not setup.zips.learned:
        log("no module is patched by both LoRAs: nothing to learn, the merge is both LoRAs side by side")
        return []
    bar = tqdm(total=options.steps, desc="ziplora", unit="step", dynamic_ncols=True, disable=not progress)

    def on_step(step: int, terms: dict[str, float]) -> None:
        bar.update(1)
        mean_cos = terms["alignment"] / len(setup.zips.learned)
        bar.set_postfix(loss=f"{terms['loss']:.4g}", cos=f"{mean_cos:.3f}")

    try:
        return optimise(setup, options.steps, options.lr, options.lam, options.batch_size, on_step)
    finally:
        bar.close()


def format_report(result: ZipLoRAResult) -> str:
    """The written file, what was merged, the final loss terms and the effect-kept table."""
    lines = [f"ZipLoRA written: {result.path}",
             f"  modules: {result.shared} merged with learned mergers, {result.only_subject} subject-only "
             f"and {result.only_style} style-only kept as they are"]
    if result.history:
        last = result.history[-1]
        mean_cos = last["alignment"] / max(result.shared, 1)
        lines.append(f"  final step: subject mse {last['subject_mse']:.4g}, style mse "
                     f"{last['style_mse']:.4g}, mean |cos(m_c, m_s)| {mean_cos:.3f}")
    lines += ["", "effect kept, held-out seeds and timesteps (1 = the merge reproduces the LoRA on its own "
              "prompt,", "0 = no closer than the base model)", f"  {'':<15}{'subject':>9}{'style':>9}"]
    for mode, name in METHODS.items():
        row = result.effect_kept[mode]
        lines.append(f"  {name:<15}{row['subject']:>9.3f}{row['style']:>9.3f}")
    kept = result.effect_kept
    behind = [c for c in ("subject", "style") if kept["merged"][c] < kept["average"][c]]
    if behind and result.history:
        lines.append(f"note: ZipLoRA kept less of the {' and '.join(behind)} LoRA's effect than a plain "
                     "average; more --steps, or a smaller --lambda (the orthogonality term trades effect for "
                     "disjoint mergers), usually helps")
    return "\n".join(lines)
