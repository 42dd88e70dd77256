"""Quality benchmark on the toy world: does a LoRA recipe teach "zwx", keep it adaptable, and
leave the rest of the model alone?

Trains each recipe on the same ten concept images (`lorakiln toy dataset --concept`, an orange
star the base model never saw as a pair) on the shipped toy model, then measures with the
detectors (`lorakiln.toyworld.evaluate`) at every saved epoch and at strengths 1.0 and 0.7:

* likeness — "a zwx" samples read as an orange star;
* adaptability — "a <colour> zwx" samples read as a star of that colour (7 colours);
* drift — fully specified prompts without the token (one trained pair per shape, background
  named) whose detected shape/colour/background change with the LoRA at that strength, the
  mean pixel change, and "kept": the share of samples right without the LoRA still right with it.

Recipes: the toy quickstart's config (`examples/toy-quickstart`: pivotal tuning of "zwx" from
"star", TI 5e-3 for half the steps, U-Net LoRA dim 16 at 1e-3, 150 steps at batch 4);
`kohya-community`, the kohya_ss community table of the kohya_ss + AUTOMATIC1111 LoRA walkthrough
(preset `kohya-character`: batch 1, 15 repeats, 5 epochs, AdamW8bit, TE 5e-5 / U-Net 1e-4,
dim 128, no pivotal tuning); `diffusers-advanced`, the diffusers advanced SDXL recipe
(`train_dreambooth_lora_sdxl_advanced.py`; preset `pivotal-prodigy`: Prodigy, pivotal tuning of "zwx" from
random tokens, U-Net LoRA, min-SNR 5, rank 32, 1000 steps at batch 4); and a plain diffusers
`train_dreambooth_lora.py`-like default (rank 4, U-Net only, AdamW 1e-4 constant, 500 steps,
batch 1). Every recipe overrides the quickstart config, so each names what it does not share.
It also reports the base model's accuracy on the held-out shape–colour pairs.

    python bench/quality.py --n 8               # all recipes: ~1 h on 2 CPU cores (training 55-216 s per recipe;
                                                # each file at each strength ~1 min, 36 of them)
    python bench/quality.py --recipes quickstart --n 32
    python bench/quality.py --model toy-sd1.safetensors   # a model built by `lorakiln toy pretrain`
    python bench/quality.py --work runs --no-train        # measure the files an earlier `--work runs` kept
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "toy-quickstart" / "config.toml"

#: Overrides over the quickstart config (same data, model, resolution and output layout).
RECIPES: dict[str, list[str]] = {
    "quickstart": [],
    "kohya-community": ['preset="kohya-character"', "pivotal.train_text_encoder_ti=false",
                 "network.network_train_unet_only=false", "train.unet_lr=1e-4", "train.text_encoder_lr=5e-5",
                 "train.max_train_epochs=5", "train.train_batch_size=1", "data.repeats=15",
                 'train.optimizer_type="AdamW8bit"', 'train.lr_scheduler="polynomial"',
                 "network.network_dim=128", "network.network_alpha=128", "output.save_every_n_epochs=1"],
    "diffusers-advanced": ['preset="pivotal-prodigy"', 'pivotal.token_abstraction="zwx"', "train.max_train_steps=1000",
                 "train.train_batch_size=4", "train.learning_rate=1.0", "train.unet_lr=1.0",
                 "train.text_encoder_lr=1.0", 'train.optimizer_type="Prodigy"', 'train.lr_scheduler="constant"',
                 "network.network_dim=32", "network.network_alpha=32", "output.save_every_n_steps=250",
                 "output.save_every_n_epochs=None", "network.network_train_unet_only=true",
                 "pivotal.initializer_concept=None", "pivotal.text_encoder_ti_lr=None"],
    "diffusers-default": ["pivotal.train_text_encoder_ti=false", "network.network_dim=4", "network.network_alpha=4", "network.network_train_unet_only=true",
                          "train.unet_lr=1e-4", 'train.lr_scheduler="constant"', 'train.optimizer_type="AdamW"',
                          "train.max_train_steps=500", "train.train_batch_size=1", "output.save_every_n_steps=125",
                          "output.save_every_n_epochs=None"],
}

#: Earlier recipe names, still accepted by `--recipes` (not listed in its choices).
RECIPE_ALIASES: dict[str, str] = {"seed-000": "kohya-community", "seed-003": "diffusers-advanced"}


def _kohya_repeats(data_dir: Path, repeats: int, work: Path) -> Path:
    """A copy of the concept folder renamed to `<repeats>_zwx` (kohya: repeats live in the name)."""
    import shutil

    src = next(p for p in data_dir.iterdir() if p.is_dir())
    dst = work / "data" / f"{repeats}_zwx"
    shutil.copytree(src, dst)
    return dst.parent


def train_recipe(name: str, work: Path, model: str) -> Path:
    """Train one recipe; returns its output folder."""
    from lorakiln.config.load import load_config
    from lorakiln.training.loop import train

    unset = [o.split("=")[0] for o in RECIPES[name] if o.endswith("=None")]  # TOML has no null
    repeats = [int(o.split("=")[1]) for o in RECIPES[name] if o.startswith("data.repeats=")]
    overrides = [o for o in RECIPES[name] if not o.startswith("data.repeats=") and not o.endswith("=None")]
    out = work / name
    overrides += [f'output.output_dir="{out}"', 'output.output_name="zwx"', "validation.final_grid=false",
                  "output.save_state=false", f'model.pretrained_model="{model}"']
    cfg = load_config(QUICKSTART, overrides)
    for dotted in unset:
        section, key = dotted.split(".")
        setattr(getattr(cfg, section), key, None)
    if repeats:
        cfg.data.train_data_dir = str(_kohya_repeats(Path(cfg.data.train_data_dir or ""), repeats[0], out))
    cfg.validation.sample_prompts = None
    cfg.validation.sample_every_n_epochs = None
    started = time.time()
    result = train(cfg, progress=False)
    print(f"  {name}: {result.steps} steps in {time.time() - started:.0f} s", file=sys.stderr)
    return out


def checkpoints(folder: Path) -> list[str]:
    """LoRA stems in training order: epoch or step files, then the final one."""
    stems = sorted(p.stem for p in folder.glob("zwx-*.safetensors") if not p.stem.endswith("_emb"))
    return [*stems, "zwx"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES),
                        type=lambda name: RECIPE_ALIASES.get(name, name))
    parser.add_argument("--strengths", nargs="+", type=float, default=[1.0, 0.7])
    parser.add_argument("--n", type=int, default=16, help="samples per likeness measurement")
    parser.add_argument("--work", help="keep the trained LoRAs here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results as JSON to this file")
    parser.add_argument("--model", default="toy", help="toy base model (default: the shipped `toy`)")
    parser.add_argument("--no-train", action="store_true",
                        help="measure the recipes' files already in --work instead of training them again")
    args = parser.parse_args()

    from lorakiln.models.loading import load_base_model
    from lorakiln.toyworld import evaluate

    if args.no_train:
        missing = [n for n in args.recipes if not args.work or not (Path(args.work) / n / "zwx.safetensors").is_file()]
        if missing:
            parser.error(f"--no-train measures an earlier run's files: no <work>/<recipe>/zwx.safetensors for "
                         f"{', '.join(missing)} (--work {args.work}); give that run's --work folder")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lorakiln-quality-"))
    bundle = load_base_model(args.model)
    base = evaluate.base_accuracy(bundle, n=8)
    print(f"base model, held-out pairs: {base['accuracy']:.0%} correct (shape {base['shape']:.0%}, "
          f"colour {base['colour']:.0%}, {base['samples']} samples)")
    rows: list[dict[str, Any]] = []
    for name in args.recipes:
        folder = work / name if args.no_train else train_recipe(name, work, args.model)
        for stem in checkpoints(folder):
            for strength in args.strengths:
                q = evaluate.lora_quality(bundle, stem, strength, folder, n=args.n)
                rows.append({"recipe": name, "file": stem, "strength": strength, **q})
                print(f"  {name:18} {stem:22} {strength:4.1f}  likeness {q['likeness']:5.0%}  adaptability "
                      f"{q['adaptability']:5.0%}  drift {q['drift']:5.0%} ({q['drift_pixel']:.3f}, kept "
                      f"{q['base_kept']:.0%})", file=sys.stderr)
    print("\n| recipe | file | strength | likeness | adaptability | drift (changed) | drift (pixels) | base kept |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['file']} | {r['strength']:.1f} | {r['likeness']:.0%} | {r['adaptability']:.0%} "
              f"| {r['drift']:.0%} | {r['drift_pixel']:.3f} | {r['base_kept']:.0%} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"base": base, "rows": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
