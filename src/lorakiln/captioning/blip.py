"""BLIP captions: one English sentence per image (kohya_ss "Utilities → BLIP Captioning").

kohya_ss runs sd-scripts' `finetune/make_captions.py` (Salesforce's original BLIP code and the
`model_large_caption.pth` weights) and then adds the prefix/postfix. We run the same weights as
converted to transformers (`Salesforce/blip-image-captioning-large`) and reproduce what that
script does around `generate`:

* the decoder is primed with BLIP's training prompt "a picture of " and the prompt is cut from
  the output (BLIP's `blip_decoder.generate`). Without it the transformers model often starts
  captions with the nonsense word "arafed";
* `min_length` / `max_length` are passed to `generate` unchanged, so — as in kohya — they count
  the primed tokens too ([DEC] a picture of = 4);
* beam search uses `repetition_penalty=1.0`, nucleus sampling `repetition_penalty=1.1`
  (BLIP's defaults for the two modes);
* defaults are the kohya_ss GUI's: 1 beam, min length 5, max length 75, top-p 0.9.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakiln.captioning.files import CaptionSummary, OutputOptions, caption_folder, join_caption
from lorakiln.captioning.model_source import (
    ModelSource,
    ModelUnavailable,
    hub_endpoint,
    hub_error,
    offline_reason,
    resolve_caption_model,
)
from lorakiln.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from PIL import Image

#: The weights kohya_ss's BLIP captioning uses (`model_large_caption.pth`), in transformers form.
DEFAULT_BLIP_MODEL = "Salesforce/blip-image-captioning-large"
#: BLIP's captioning prompt (`blip_decoder(prompt='a picture of ')`); cut from every caption.
BLIP_PROMPT = "a picture of"
_BLIP_FILES = "config.json, model.safetensors, the tokenizer files and preprocessor_config.json"
#: What must be in the Hugging Face cache for a hub id to count as present. Only the config: the
#: weights' and processor files' names vary (transformers ≥ 4.5x saves processor_config.json,
#: the hub repo has preprocessor_config.json); a snapshot missing them fails the offline load,
#: which is then finished online or reported as `ModelUnavailable`.
_BLIP_CACHED = ("config.json",)
#: Makes a local copy without the repo's duplicate PyTorch-pickle and TensorFlow weights.
BLIP_DOWNLOAD = 'hf download {repo} --exclude "*.bin" --exclude "*.h5" --local-dir models/{name}'


@dataclass(frozen=True)
class BlipOptions:
    """Generation settings; defaults are the kohya_ss GUI's BLIP tab."""

    model: str = DEFAULT_BLIP_MODEL
    prefix: str = ""
    postfix: str = ""
    num_beams: int = 1
    min_length: int = 5
    max_length: int = 75
    sample: bool = False
    top_p: float = 0.9
    seed: int | None = None
    text_prompt: str = BLIP_PROMPT
    batch_size: int = 1
    device: str = "auto"

    def validate(self) -> None:
        """Raise a `ConfigError` naming the flag for a value `generate` would reject or ignore."""
        if self.num_beams < 1:
            raise ConfigError(f"--num-beams must be at least 1, got {self.num_beams}")
        if self.min_length < 0:
            raise ConfigError(f"--min-length must be 0 or more, got {self.min_length}")
        if self.max_length < max(self.min_length, 1):
            raise ConfigError(f"--max-length {self.max_length} is below --min-length {self.min_length}; "
                              "raise --max-length (kohya's default is 75)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")


def resolve_device(device: str) -> str:
    """"auto" → "cuda" when PyTorch sees a GPU, else "cpu"; an unusable request is an error."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for but PyTorch sees no CUDA GPU; use --device cpu "
                          "or install a CUDA build of PyTorch")
    if device != "cpu" and not device.startswith(("cuda", "mps", "xpu")):
        raise ConfigError(f"--device {device!r} is not one of auto, cpu, cuda")
    return device


class BlipCaptioner:
    """A loaded BLIP model + processor; `caption(images)` returns the bare sentences."""

    def __init__(self, model: Any, processor: Any, device: str) -> None:
        self.model, self.processor, self.device = model, processor, device

    def caption(self, images: Sequence[Image.Image], options: BlipOptions) -> list[str]:
        """One caption per image, without prefix/postfix; `options.seed` makes sampling repeatable."""
        import torch

        prompt = options.text_prompt.strip()
        inputs = self.processor(images=list(images), text=[prompt] * len(images) if prompt else None,
                                return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        # The decoder sees [DEC] + prompt tokens (BLIP drops the tokenizer's trailing [SEP]);
        # they come back at the start of every output sequence and are cut off below.
        primed = inputs["input_ids"].shape[1] - 1 if "input_ids" in inputs else 1
        kwargs = generate_kwargs(options)
        with torch.inference_mode(), _seeded(options.seed, self.device):
            output = self.model.generate(**inputs, **kwargs)
        texts = self.processor.batch_decode(output[:, primed:], skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]


def generate_kwargs(options: BlipOptions) -> dict[str, Any]:
    """The `generate` arguments of `make_captions.py` for beam search or nucleus sampling."""
    kwargs: dict[str, Any] = {"num_beams": options.num_beams, "min_length": options.min_length,
                              "max_length": options.max_length}
    if options.sample:
        kwargs.update(do_sample=True, top_p=options.top_p, repetition_penalty=1.1)
    else:
        kwargs.update(do_sample=False, repetition_penalty=1.0)
    return kwargs


@contextlib.contextmanager
def _seeded(seed: int | None, device: str) -> Iterator[None]:
    """Seed torch's RNG for one `generate` call without disturbing the caller's RNG state."""
    if seed is None:
        yield
        return
    import torch

    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def load_blip(model: str = DEFAULT_BLIP_MODEL, device: str = "auto") -> BlipCaptioner:
    """Load a BLIP captioning model from a local folder, the Hugging Face cache or the hub (once per run).

    The source is resolved first (`resolve_caption_model`), before transformers is imported, so
    a hub id that is neither cached nor downloadable fails within seconds as `ModelUnavailable`
    instead of after minutes of retries. Every other failure — a typo'd folder, a folder missing
    the processor files, a hub error — is a `ModelLoadError` that names the model and says how to
    pass a local folder.
    """
    source = resolve_caption_model(model, what="BLIP", needs=_BLIP_CACHED, files=_BLIP_FILES,
                                   download=BLIP_DOWNLOAD)
    from transformers import BlipForConditionalGeneration, BlipProcessor

    device = resolve_device(device)
    cache = str(source.cache_dir) if source.cache_dir is not None else None

    def load(local_only: bool) -> tuple[Any, Any]:
        kwargs = {"local_files_only": local_only, "cache_dir": cache}
        return (BlipProcessor.from_pretrained(source.location, **kwargs),
                BlipForConditionalGeneration.from_pretrained(source.location, **kwargs))

    try:
        processor, blip = load(source.local_only)
    except Exception as exc:  # OSError (missing file, no network), ValueError (bad config)...
        if not source.cached:
            raise _load_error(model, source, exc) from exc
        # a hub id only partly in the cache (an interrupted download): finish it online, if possible
        reason = offline_reason()
        if reason is not None:
            raise ModelUnavailable(repo_id=str(source.repo_id), what="BLIP", files=_BLIP_FILES,
                                   reason=f"{reason}, and the cache holds only part of the model",
                                   download=BLIP_DOWNLOAD, cache_dir=source.cache_dir or Path(),
                                   endpoint=hub_endpoint()) from exc
        try:
            processor, blip = load(False)
        except Exception as again:
            raise _load_error(model, source, again) from again
    return BlipCaptioner(blip.to(device).eval(), processor, device)


def _load_error(model: str, source: ModelSource, exc: Exception) -> ModelLoadError:
    """Why loading failed: the hub's answer for a hub id, a not-a-BLIP-folder message for a folder."""
    if source.repo_id is not None:
        return hub_error(source.repo_id, exc, what="BLIP", files=_BLIP_FILES, download=BLIP_DOWNLOAD)
    return ModelLoadError(f"--model {model!r} is not a BLIP captioning model folder ({type(exc).__name__}: "
                          f"{exc}); it must hold {_BLIP_FILES}, as saved by `save_pretrained`")


def caption_with_blip(root: str | os.PathLike[str], options: BlipOptions | None = None,
                      output: OutputOptions | None = None, *, captioner: BlipCaptioner | None = None,
                      log: Callable[[str], None] | None = None) -> CaptionSummary:
    """Caption the images under `root` with BLIP; see `OutputOptions` for where captions go.

    Pass a loaded `captioner` to reuse it across folders; otherwise the model is loaded once,
    and only if some image still needs a caption.
    """
    options = options or BlipOptions()
    output = output or OutputOptions()
    options.validate()

    def load() -> Callable[[list[Image.Image]], list[str]]:
        blip = captioner
        if blip is None:
            if log:
                log(f"loading BLIP {options.model!r}")
            blip = load_blip(options.model, options.device)

        def run(images: list[Image.Image]) -> list[str]:
            return [join_caption(options.prefix, text, options.postfix, " ")
                    for text in blip.caption(images, options)]

        return run

    return caption_folder(Path(root), output, load, batch_size=options.batch_size, log=log)
