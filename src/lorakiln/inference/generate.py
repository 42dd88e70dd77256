"""`lorakiln generate`: AUTOMATIC1111-style text-to-image with LoRAs, embeddings and infotext.

One request = A1111's generation parameters (prompt with `<lora:name:te[:unet]>` tags and
`(emphasis:1.2)`, negative prompt, steps, sampler, CFG, seed, size, batch count × size, clip
skip). LoRAs are found by file stem in `lora_dir` and hooked in for the request only; embeddings
by stem in `embeddings_dir`. Images are written as PNGs carrying the A1111 `parameters` text,
with A1111's `Lora hashes` and `TI hashes` for the files the prompt used and `Model hash` /
`Model` for a single-file base model (`_model_fields`), so PNG-Info readers (and `--params` here) read
them back.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorakiln.atomic import atomic_path
from lorakiln.errors import LorakilnError, OutputWriteError
from lorakiln.inference.embeddings import embedding_hashes, find_embeddings, load_embeddings
from lorakiln.inference.infotext import GenerationParams, model_fields, png_info
from lorakiln.inference.pipeline import build_pipeline
from lorakiln.inference.prompt_syntax import extract_extra_networks
from lorakiln.inference.samplers import make_scheduler
from lorakiln.inference.weighting import encode_prompt

if TYPE_CHECKING:
    from PIL.Image import Image

    from lorakiln.models.bundle import ModelBundle
    from lorakiln.networks.apply import AppliedLoRA

LORA_SUFFIXES = (".safetensors",)


@dataclass
class GeneratedImage:
    image: Image
    params: GenerationParams  # with the concrete seed of this image


def find_lora(name: str, lora_dir: str | Path | None) -> Path:
    """The file for `<lora:name:…>`: `<lora_dir>/<name>.safetensors` (A1111 looks up by stem)."""
    if not lora_dir:
        raise LorakilnError(f"the prompt uses <lora:{name}:…> but no --lora-dir was given")
    folder = Path(lora_dir)
    for suffix in LORA_SUFFIXES:
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    known = sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []
    raise LorakilnError(f"LoRA '{name}' not found in {folder}; available: {', '.join(known) or 'none'}")


class LoRASet:
    """The LoRAs of one session (a CLI call, a grid): each file is read once; per prompt the
    named ones are hooked in at their strengths and all others unhooked — switching epochs or
    strengths never reloads the base model or re-reads a file."""

    def __init__(self, bundle: ModelBundle, lora_dir: str | Path | None) -> None:
        self.bundle, self.lora_dir = bundle, lora_dir
        self.loaded: dict[str, AppliedLoRA] = {}
        self.active: list[str] = []  # the LoRAs of the last `activate`, in prompt order
        self._hashes: dict[str, str] = {}

    def activate(self, prompts: list[str]) -> list[str]:
        """Strip `<lora:…>` tags from `prompts`, hook exactly those LoRAs in; returns the texts."""
        from lorakiln.networks.apply import apply_lora_file

        texts, wanted = [], {}
        for prompt in prompts:
            text, calls = extract_extra_networks(prompt)
            texts.append(text)
            for call in calls:
                if call.kind != "lora":
                    raise LorakilnError(f"<{call.kind}:…> extra networks are not supported; only <lora:…>")
                wanted[call.name] = call
        for name, lora in self.loaded.items():
            if name not in wanted:
                lora.remove()
        for name, call in wanted.items():
            if name not in self.loaded:
                self.loaded[name] = apply_lora_file(self.bundle, find_lora(name, self.lora_dir), te=call.te,
                                                    unet=call.unet)
            self.loaded[name].attach()
            self.loaded[name].set_strength(call.te, call.unet)
        self.active = list(wanted)
        return texts

    def infotext_hashes(self) -> str | None:
        """A1111's ``Lora hashes`` value for the active LoRAs (``name: <12 hex>, …``, the short
        form of the tensor-data SHA-256 A1111 keys LoRAs by), or None when no LoRA is active."""
        for name in self.active:
            if name not in self._hashes:
                path = self.loaded[name].path
                stat = path.stat()
                self._hashes[name] = _short_hash(str(path), stat.st_mtime_ns, stat.st_size)
        return ", ".join(f"{name}: {self._hashes[name]}" for name in self.active) or None

    def close(self) -> None:
        for lora in self.loaded.values():
            lora.remove()
        self.loaded.clear()


@functools.lru_cache(maxsize=256)
def _short_hash(path: str, mtime_ns: int, size: int) -> str:
    """A LoRA's A1111 short hash, read once per file version (the UI builds a `LoRASet` per request;
    a changed file has a new mtime or size, so a rewritten LoRA is hashed again)."""
    from lorakiln.safetensors_check import tensor_data_sha256

    return tensor_data_sha256(path)[:12]


#: Infotext keys `generate` writes from the files it used, replacing pasted values.
_OWN_KEYS = ("Lora hashes", "TI hashes", "Model hash", "Model")


def _model_fields(bundle: ModelBundle) -> dict[str, str]:
    """A1111's `Model hash` / `Model` (`infotext.model_fields`) for a single-file checkpoint: its
    file stem and the sha256 the loader computed once (`loading.sha256_file`, cached per file and
    process). A1111 loads single files only, so for a diffusers folder, a hub id or a built-in
    model it would know neither a hash nor a file name: both are left out, not made up (a made-up
    hash would match nothing, or the wrong file, when A1111 or civitai look it up)."""
    if bundle.extra.get("format") == "single_file" and bundle.sha256:
        return model_fields(Path(bundle.source).stem, bundle.sha256)
    return {}


def generate(bundle: ModelBundle, params: GenerationParams, *, lora_dir: str | Path | None = None,
             embeddings_dir: str | Path | None = None, progress: bool = False,
             loras: LoRASet | None = None) -> list[GeneratedImage]:
    """Render `batch_count × batch_size` images; seeds are `seed, seed+1, …` as in A1111.
    Pass a `LoRASet` to keep LoRAs loaded across calls (grids); otherwise they are removed."""
    seed = params.seed if params.seed >= 0 else random.randrange(2**32)
    items = [(params.prompt, seed + i) for i in range(params.batch_count * params.batch_size)]
    return generate_many(bundle, params, items, lora_dir=lora_dir, embeddings_dir=embeddings_dir,
                         progress=progress, loras=loras)


def generate_many(bundle: ModelBundle, params: GenerationParams, items: list[tuple[str, int]], *,
                  lora_dir: str | Path | None = None, embeddings_dir: str | Path | None = None,
                  progress: bool = False, loras: LoRASet | None = None) -> list[GeneratedImage]:
    """One image per `(prompt, seed)` of `items`, `params.batch_size` at a time, whatever their
    prompts: evaluations draw many prompts a few seeds each, and a batch of 32 costs per image a
    fraction of a batch of 3 (a small U-Net on a CPU is bound by per-call overhead, not maths).
    Each image is what `generate` would give for its prompt and seed alone (the starting and the
    ancestral samplers' noise come from a generator per image, A1111's seed). Every prompt must
    name the same `<lora:…>` tags, which are hooked in once; `params.prompt` is not used."""
    if not items:
        return []
    scheduler = make_scheduler(params.sampler, bundle.noise_scheduler.config, params.schedule_type)
    pipe = build_pipeline(bundle, scheduler)
    pipe.set_progress_bar_config(disable=not progress)
    own = loras is None
    loras = loras if loras is not None else LoRASet(bundle, lora_dir)
    try:
        prompts = list(dict.fromkeys(prompt for prompt, _ in items))
        tags = {prompt: sorted(f"<{c.kind}:{':'.join(c.items)}>" for c in extract_extra_networks(prompt)[1])
                for prompt in prompts}
        if len({tuple(t) for t in tags.values()}) > 1:
            raise LorakilnError("generate_many: every prompt must name the same <lora:…> tags "
                                f"(got {sorted({', '.join(t) or 'none' for t in tags.values()})})")
        *texts, negative = loras.activate([*prompts, params.negative_prompt])
        embeddings = find_embeddings([*texts, negative], embeddings_dir)
        # Pasted `Lora hashes` / `TI hashes` / `Model hash` / `Model` may be stale: each is written
        # from the files this image really used (a pasted hash of another checkpoint is dropped).
        extra = {k: v for k, v in params.extra.items() if k not in _OWN_KEYS} | _model_fields(bundle)
        if hashes := loras.infotext_hashes():
            extra["Lora hashes"] = hashes
        if ti_hashes := embedding_hashes(embeddings, [*texts, negative]):
            extra["TI hashes"] = ti_hashes
        params = replace(params, extra=extra)
        load_embeddings(pipe, bundle, embeddings)
        encoded = {p: encode_prompt(pipe, bundle, t, params.clip_skip) for p, t in zip(prompts, texts, strict=True)}
        neg, neg_pooled = encode_prompt(pipe, bundle, negative, params.clip_skip)
        out: list[GeneratedImage] = []
        for start in range(0, len(items), params.batch_size):
            chunk = items[start:start + params.batch_size]
            pos = torch.cat([encoded[p][0] for p, _ in chunk])
            kwargs: dict[str, Any] = {"prompt_embeds": pos, "negative_prompt_embeds": neg.expand(len(chunk), -1, -1)}
            if bundle.family.uses_pooled_text:
                kwargs["pooled_prompt_embeds"] = torch.cat([encoded[p][1] for p, _ in chunk])
                kwargs["negative_pooled_prompt_embeds"] = neg_pooled.expand(len(chunk), -1)
            with torch.no_grad():
                images = pipe(num_inference_steps=params.steps, guidance_scale=params.cfg_scale,
                              width=params.width, height=params.height,
                              generator=[torch.Generator().manual_seed(s) for _, s in chunk], **kwargs).images
            out += [GeneratedImage(img, replace(params, prompt=p, seed=s, batch_size=1, batch_count=1))
                    for img, (p, s) in zip(images, chunk, strict=True)]
        return out
    finally:
        if own:
            loras.close()


def save_images(images: list[GeneratedImage], folder: str | Path) -> list[Path]:
    """A1111 naming, `00000-<seed>.png`, continuing the folder's numbering; infotext embedded."""
    from lorakiln.io_guard import check_output

    folder = check_output(folder, [], verb="generate --output-dir", force=True, folder_output=True)
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name.split("-", 1)[0]) for p in folder.glob("*.png") if p.name.split("-", 1)[0].isdigit()]
    start = max(numbers, default=-1) + 1
    paths = []
    for i, item in enumerate(images):
        path = folder / f"{start + i:05d}-{item.params.seed}.png"
        try:
            with atomic_path(path) as tmp:
                item.image.save(tmp, format="PNG", pnginfo=png_info(item.params))
        except OSError as err:  # a full disk or read-only folder: one message, the images before it kept
            if err.errno not in OutputWriteError.ERRNOS:
                raise
            raise OutputWriteError.from_os_error(path, err) from None
        paths.append(path)
    return paths
