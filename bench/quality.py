"""Quality benchmark on the toy world: does a LoRA recipe teach "zwx", keep it adaptable, and
leave the rest of the model alone — with intervals wide enough to trust?

Trains each recipe on the same ten concept images (`lorakiln toy dataset --concept`, an orange
star the base model never saw as a pair) on the shipped toy model, with and without differential
output preservation (DOP, `--dop`), then measures every saved file at each strength with the
detectors (`lorakiln.toyworld.evaluate`), on two disjoint seed sets (`evaluate.SEED_SETS`):

* likeness — "a zwx" samples read as an orange star (`--n` per seed set);
* adaptability — "a <colour> zwx on a <background> background" read as a star of that colour on
  that background (7 colours, `--n` rounded up to whole colours per seed set); "colour only" is
  the same without a background asked or checked;
* drift — 14 fully specified prompts without the token (two trained pairs per shape), 3 seeds each
  per seed set: the share of samples whose detected shape/colour/background changes with the
  LoRA, the mean pixel change, and "base kept": of the samples the base draws right, the share
  still right with the LoRA;
* ceilings — the base model on trained orange shapes and on the adaptability prompts with "star".

Each cell is pooled over both seed sets (≥ 64 samples) with a Wilson 95 % interval; the
replication table gives each set's rate. The agreement table compares the run's recommended file
and strength (its per-file signals, `training/recommend.py`) with the detectors' best cell (the
highest mean of likeness, adaptability and base kept).

Recipes: the toy quickstart's config (`examples/toy-quickstart`); `kohya-community`, the kohya_ss
community table of the kohya_ss + AUTOMATIC1111 LoRA walkthrough (preset `kohya-character`: batch 1,
15 repeats, 5 epochs, AdamW8bit, TE 5e-5 / U-Net 1e-4, dim 128, no pivotal tuning);
`diffusers-advanced`, the diffusers advanced SDXL recipe (`train_dreambooth_lora_sdxl_advanced.py`;
preset `pivotal-prodigy`: Prodigy, pivotal tuning of "zwx" from random tokens, U-Net LoRA, min-SNR 5,
rank 32, 1000 steps at batch 4); and a plain diffusers `train_dreambooth_lora.py`-like default
(rank 4, U-Net only, AdamW 1e-4 constant, 500 steps, batch 1). Every recipe overrides the
quickstart config, so each names what it does not share.

    python bench/quality.py --recipes quickstart --dop both            # ~15 min on 2 CPU cores
    python bench/quality.py --recipes diffusers-advanced kohya-community --dop both --final-only \
        --work runs --report runs/report.md    # ~1.5 h (the kohya_ss table trains 11 min, 25 with DOP)
    python bench/quality.py --work runs --no-train                    # measure an earlier --work again
    python bench/quality.py --recipes quickstart --set train.unet_lr=5e-4   # try a change
"""

from __future__ import annotations

import argparse
import contextlib
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

#: Differential output preservation on: the class prompt is the caption with "zwx" → "star".
DOP = ["preservation.diff_output_preservation=true", 'preservation.preservation_class="star"']

#: Earlier recipe names, still accepted by `--recipes` (not listed in its choices).
RECIPE_ALIASES: dict[str, str] = {"seed-000": "kohya-community", "seed-003": "diffusers-advanced"}


def _kohya_repeats(data_dir: Path, repeats: int, work: Path) -> Path:
    """A copy of the concept folder renamed to `<repeats>_zwx` (kohya: repeats live in the name)."""
    import shutil

    src = next(p for p in data_dir.iterdir() if p.is_dir())
    dst = work / "data" / f"{repeats}_zwx"
    shutil.copytree(src, dst)
    return dst.parent


def variants(recipes: list[str], dop: str) -> list[tuple[str, list[str]]]:
    """(name, overrides) of every run: each recipe without and/or with DOP."""
    out = []
    for name in recipes:
        if dop in ("off", "both"):
            out.append((name, RECIPES[name]))
        if dop in ("on", "both"):
            out.append((f"{name}+dop", [*RECIPES[name], *DOP]))
    return out


def train_variant(name: str, recipe: list[str], work: Path, model: str, extra: list[str]) -> Path:
    """Train one variant; its output folder keeps `recommended.json` (the run's recommendation)."""
    from lorakiln.config.load import load_config
    from lorakiln.training.loop import train

    options = [*recipe, *extra]
    unset = [o.split("=")[0] for o in options if o.endswith("=None")]  # TOML has no null
    repeats = [int(o.split("=")[1]) for o in options if o.startswith("data.repeats=")]
    overrides = [o for o in options if not o.startswith("data.repeats=") and not o.endswith("=None")]
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
    heard: dict[str, Any] = {}
    signals: dict[str, Any] = {}

    def listen(event: str, info: dict[str, Any]) -> None:
        if event == "recommended":
            heard.update(info)
        elif event == "signals":
            signals[Path(info["file"]).stem] = {"val_loss": info.get("val_loss"), "step": info.get("step"),
                                                "drift": info.get("drift_by_strength")}

    started = time.time()
    result = train(cfg, [listen], progress=False)
    seconds = time.time() - started
    rec = {"file": Path(heard["file"]).stem, "strength": heard["strength"]} if heard else None
    (out / "recommended.json").write_text(json.dumps({"recommended": rec, "signals": signals, "seconds": seconds,
                                                      "steps": result.steps, "options": options}), encoding="utf-8")
    print(f"  {name}: {result.steps} steps in {seconds:.0f} s; recommended {rec}", file=sys.stderr)
    return out


def checkpoints(folder: Path, final_only: bool) -> list[str]:
    """LoRA stems in training order: epoch or step files, then the final one."""
    stems = sorted(p.stem for p in folder.glob("zwx-*.safetensors") if not p.stem.endswith("_emb"))
    return ["zwx"] if final_only else [*stems, "zwx"]


def recommend_again(info: dict[str, Any], threshold: float) -> dict[str, Any] | None:
    """The run's recommendation at another drift threshold, from the signals it recorded
    (`training/recommend.py`'s rule; files in saving order when a step was not recorded)."""
    from lorakiln.training.recommend import FileSignals, recommend

    rows = [FileSignals(stem, int(row.get("step") or i), row.get("val_loss"),
                        {float(k): float(v) for k, v in (row.get("drift") or {}).items()})
            for i, (stem, row) in enumerate((info.get("signals") or {}).items())]
    rec = recommend(rows, threshold)
    return {"file": rec.file, "strength": rec.strength} if rec else None


def _pct(t: Any) -> str:
    return f"{t.rate:.0%}" if t.total else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES),
                        type=lambda name: RECIPE_ALIASES.get(name, name))
    parser.add_argument("--dop", choices=["off", "on", "both"], default="off",
                        help="train each recipe without, with, or both without and with output preservation")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra config override for every run (repeatable), e.g. train.unet_lr=5e-4")
    parser.add_argument("--strengths", nargs="+", type=float, default=[1.0, 0.7])
    parser.add_argument("--n", type=int, default=32, help="likeness and adaptability samples per seed set")
    parser.add_argument("--seed-sets", nargs="+", type=int, default=None,
                        help="first seed of each seed set (default: evaluate.SEED_SETS, 1000 and 5000)")
    parser.add_argument("--final-only", action="store_true", help="measure only each run's final file (and the "
                        "recommended one)")
    parser.add_argument("--work", help="keep the trained LoRAs here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results as JSON to this file")
    parser.add_argument("--model", default="toy", help="toy base model (default: the shipped `toy`)")
    parser.add_argument("--no-train", action="store_true",
                        help="measure the runs' files already in --work instead of training them again")
    parser.add_argument("--reuse", action="store_true", help="skip training a run whose folder in --work "
                        "already holds a finished run with the same options (its recommended.json)")
    parser.add_argument("--report", help="write the Markdown tables to this file after every run (a long "
                        "bench stopped half-way keeps what it measured)")
    parser.add_argument("--drift-threshold", type=float, help="recommend again from each run's recorded "
                        "signals with this [validation] drift_threshold (default: the run's own recommendation)")
    args = parser.parse_args()

    from lorakiln.models.loading import load_base_model
    from lorakiln.toyworld import evaluate

    runs = variants(args.recipes, args.dop)
    if args.no_train:
        missing = [n for n, _ in runs if not args.work or not (Path(args.work) / n / "recommended.json").is_file()]
        if missing:
            parser.error(f"--no-train measures an earlier run's files: no <work>/<run>/recommended.json for "
                         f"{', '.join(missing)} (--work {args.work}); give that run's --work folder")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lorakiln-quality-"))
    seeds = tuple(args.seed_sets or evaluate.SEED_SETS)
    bundle = load_base_model(args.model)
    base_cache = evaluate.BaseSamples()

    heldout = evaluate.Tally()
    ceil = {"orange": evaluate.Tally(), "star": evaluate.Tally()}
    for seed in seeds:
        b = evaluate.base_accuracy(bundle, n=8, seed=seed)
        heldout += evaluate.Tally(round(b["accuracy"] * b["samples"]), b["samples"])
        for k, t in evaluate.ceilings(bundle, n=args.n, seed=seed).items():
            ceil[k] += t
    print(f"base model: held-out pairs {heldout} ({heldout.total} samples); ceilings: orange shapes "
          f"{ceil['orange']} ({ceil['orange'].total}), stars of the adaptability prompts {ceil['star']} "
          f"({ceil['star'].total})", file=sys.stderr)

    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    for name, recipe in runs:
        done = work / name / "recommended.json"
        reuse = args.reuse and done.is_file() and \
            json.loads(done.read_text(encoding="utf-8")).get("options") == [*recipe, *args.extra]
        folder = work / name if args.no_train or reuse else train_variant(name, recipe, work, args.model, args.extra)
        meta[name] = json.loads((folder / "recommended.json").read_text(encoding="utf-8"))
        if args.drift_threshold is not None:
            meta[name]["recommended"] = recommend_again(meta[name], args.drift_threshold)
        rec = meta[name]["recommended"]
        for stem in checkpoints(folder, args.final_only) + ([rec["file"]] if rec else []):
            strengths = list(args.strengths)
            if rec and stem == rec["file"] and rec["strength"] not in strengths:
                strengths.append(rec["strength"])
            for strength in strengths:
                if any(r["run"] == name and r["file"] == stem and r["strength"] == strength for r in rows):
                    continue
                per = [evaluate.lora_quality(bundle, stem, strength, folder, n=args.n, seed=s, base=base_cache)
                       for s in seeds]
                pooled = per[0]
                for q in per[1:]:
                    pooled = pooled + q
                rows.append({"run": name, "file": stem, "strength": strength, "pooled": pooled, "sets": per})
                print(f"  {name:22} {stem:18} {strength:4.2f}  likeness {pooled.likeness}  adaptability "
                      f"{pooled.adaptability}  changed {pooled.drift.changed}  kept {pooled.drift.kept}",
                      file=sys.stderr)
            if args.report:
                with open(args.report, "w", encoding="utf-8") as out, contextlib.redirect_stdout(out):
                    report(rows, meta, heldout, ceil, seeds)
    report(rows, meta, heldout, ceil, seeds)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seed_sets": seeds, "heldout": heldout.__dict__, "ceilings": {k: t.__dict__ for k, t in ceil.items()},
            "runs": meta,
            "rows": [{"run": r["run"], "file": r["file"], "strength": r["strength"], **r["pooled"].to_json(),
                      "sets": [q.to_json() for q in r["sets"]]} for r in rows]}, indent=2), encoding="utf-8")


def report(rows: list[dict[str, Any]], meta: dict[str, Any], heldout: Any, ceil: dict[str, Any],
           seeds: tuple[int, ...]) -> None:
    """The Markdown tables: base and ceilings, every cell pooled with its interval, each seed
    set's rates, the recommendation against the detectors, and the prompts that drift most."""
    print(f"\nBase model (seed sets {', '.join(map(str, seeds))}): held-out pairs {heldout} of {heldout.total}; "
          f"ceilings: trained orange shapes {ceil['orange']} of {ceil['orange'].total}, "
          f"stars as the adaptability prompts ask {ceil['star']} of {ceil['star'].total}.\n")
    print("| run | file | strength | likeness | adaptability (bg obeyed) | colour only | drift (changed) "
          "| base kept | pixels | drift signal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        q = r["pooled"]
        signal = ((meta[r["run"]].get("signals") or {}).get(r["file"]) or {}).get("drift") or {}
        value = signal.get(f"{r['strength']:g}")
        print(f"| {r['run']} | {r['file']} | {r['strength']:g} | {q.likeness} | {q.adaptability} | "
              f"{q.adapt_colour} | {q.drift.changed} | {q.drift.kept} | {q.drift.pixel:.3f} | "
              f"{'-' if value is None else f'{value:.4f}'} |")
    print("\nEach seed set on its own (likeness / adaptability / base kept):\n")
    print("| run | file | strength | " + " | ".join(f"seeds {s}…" for s in seeds) + " |")
    print("|---|---|---|" + "---|" * len(seeds))
    for r in rows:
        cells = [f"{_pct(q.likeness)} / {_pct(q.adaptability)} / {_pct(q.drift.kept)}" for q in r["sets"]]
        print(f"| {r['run']} | {r['file']} | {r['strength']:g} | " + " | ".join(cells) + " |")
    print("\nRecommendation (per-file signals) against the detectors' best cell (mean of likeness, "
          "adaptability and base kept):\n")
    print("| run | train s | recommended | its figures | detectors' best | its figures | agreement |")
    print("|---|---|---|---|---|---|---|")
    for name, info in meta.items():
        mine = [r for r in rows if r["run"] == name]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["pooled"].score())
        rec = info["recommended"]
        chosen = next((r for r in mine if rec and r["file"] == rec["file"] and r["strength"] == rec["strength"]), None)
        print(f"| {name} | {info['seconds']:.0f} | "
              + (f"{rec['file']} @ {rec['strength']:g} | {_figures(chosen)} | " if chosen else "- | - | ")
              + f"{best['file']} @ {best['strength']:g} | {_figures(best)} | {_agreement(chosen, best)} |")
    print("\nDrift prompts most changed (samples changed at strength 1, summed over each run's files):\n")
    for name in meta:
        counts: dict[str, int] = {}
        for r in rows:
            if r["run"] == name and r["strength"] == 1.0:
                for p, c in r["pooled"].drift.per_prompt.items():
                    counts[p] = counts.get(p, 0) + c
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
        print(f"- {name}: " + "; ".join(f"{p} ({c})" for p, c in top if c) if any(c for _, c in top)
              else f"- {name}: none")


def _figures(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    q = r["pooled"]
    return f"{_pct(q.likeness)} / {_pct(q.adaptability)} / {_pct(q.drift.kept)}"


def _agreement(chosen: dict[str, Any] | None, best: dict[str, Any]) -> str:
    """Same cell; or every figure of the recommended cell inside the best cell's interval
    (statistically as good); or the figures outside it."""
    if chosen is None:
        return "no recommendation"
    if chosen is best:
        return "same cell"
    a, b = chosen["pooled"], best["pooled"]
    outside = [label for label, x, y in (("likeness", a.likeness, b.likeness), ("adaptability", a.adaptability,
               b.adaptability), ("base kept", a.drift.kept, b.drift.kept)) if x.rate < y.wilson()[0]]
    return "within the best's intervals" if not outside else "worse in " + ", ".join(outside)


if __name__ == "__main__":
    main()
