"""Class images for DreamBooth prior preservation: generate the missing ones with the base model,
then scan the folder.

They must come from the base model before any adapter exists (they show what the model draws
for the class prompt without training), so `prepare` calls `class_images` right after loading
the model. Generated images are recorded in the folder's manifest with the model's name, so a
later run with the same model and prompt reuses them; kohya regularisation folders work as they
are. Folder reading and writing is `data.class_images`'s; this module adds the generation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from lorakiln.config.schema import RunConfig
from lorakiln.errors import ConfigError

if TYPE_CHECKING:
    from lorakiln.data.dataset import Dataset
    from lorakiln.models.bundle import ModelBundle

Log = Callable[[str], None] | None


def class_images(cfg: RunConfig, bundle: ModelBundle, log: Log) -> Dataset:
    """Generate missing class images with the base model (once; later runs reuse them) and scan
    them (DreamBooth prior preservation; kohya regularisation folders work as they are)."""
    from lorakiln.data import count_class_images, missing_class_images, scan_class_images

    p, d = cfg.prior, cfg.data
    folder = p.class_data_dir or ""
    missing = missing_class_images(folder, p.num_class_images, prompt=p.class_prompt, base_model=bundle.name)
    if missing:
        if not p.class_prompt:
            raise ConfigError(f"{folder} holds fewer than prior.num_class_images = {p.num_class_images} "
                              "images and prior.class_prompt is empty: set class_prompt so the missing "
                              "class images can be generated, or add images to the folder")
        generate_class_images(cfg, bundle, missing, count_class_images(folder), log)
    return scan_class_images(folder, p.class_prompt, caption_extension=d.caption_extension,
                             num_class_images=p.num_class_images)


def generate_class_images(cfg: RunConfig, bundle: ModelBundle, count: int, start: int, log: Log) -> None:
    """`count` images of `prior.class_prompt`, numbered from `start`; image i is seeded with
    `train.seed + i`, and the global RNG is left as it was, so the training run's randomness does
    not depend on whether class images had to be made."""
    from tqdm.auto import tqdm

    from lorakiln.data import write_class_images
    from lorakiln.inference.pipeline import build_pipeline

    p = cfg.prior
    width, height = cfg.data.resolution
    pipe = build_pipeline(bundle)
    done = 0
    with torch.random.fork_rng(devices=[]), torch.no_grad(), tqdm(total=count, desc="class images",
                                                                   disable=log is None) as bar:
        while done < count:
            n = min(p.sample_batch_size, count - done)
            gen = torch.Generator().manual_seed(cfg.train.seed + start + done)
            images = pipe([p.class_prompt] * n, num_inference_steps=p.class_inference_steps, width=width,
                          height=height, generator=gen).images
            write_class_images(p.class_data_dir or "", images, p.class_prompt or "", start + done,
                               base_model=bundle.name)
            done += n
            bar.update(n)
