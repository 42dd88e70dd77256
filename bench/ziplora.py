"""ZipLoRA vs plain merges: how much of each input LoRA's effect the merged LoRA keeps.

Effect kept (`lorakiln.lora_tools.ziplora.train`): for LoRA i on held-out latents, timesteps and
noise, ``1 − Σ‖D_merge − D_i‖² / Σ‖D_base − D_i‖²`` on its own prompt — 1 = the merge
reproduces LoRA i exactly, 0 = no closer than the base model, < 0 = further away than the base.
Compared: the ZipLoRA merge (Shah et al. 2023) after its steps, the plain average
``0.5·ΔW_c + 0.5·ΔW_s`` and the plain sum ``ΔW_c + ΔW_s`` (ZipLoRA's starting point).

The input LoRAs are synthetic: rank 4 (alpha 2) with random non-zero ``up``s (scale 0.6), one
pair per seed pair, on two kinds of targets:

* ``text-path``: cross-attention (``attn2``) and text-encoder modules, both inputs on the same
  modules — their effect goes through the prompt, as a trigger-word LoRA's mostly does;
* ``all``: every default kohya target (self-attention and feed-forward too), at scale 0.3 (their
  effect is much stronger): an effect that shows on any prompt cannot be kept for one LoRA's
  prompts without showing on the other's, which is the hard case for any merge.

Models: tiny SD 1.x and tiny SDXL (random weights, 64 px) always; the toy-world model
(``pretrained_model = "toy"``, `lorakiln.toyworld`) when its weights file exists, else a message
says it is skipped (build one with `lorakiln toy pretrain --out FILE` and pass ``--toy FILE``).

    python bench/ziplora.py                      # the full table (~7 min on 2 CPU cores)
    python bench/ziplora.py --models tiny:sd1 --pairs 1,2 --steps 50
    python bench/ziplora.py --lambdas 0.01 0     # with and without the alignment term
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS = ("a sks dog", "a cat in oil painting style")
TOY_PROMPTS = ("a zwx on a grey background", "a red circle on a white background in szn style")
TARGETS = {"text-path": ("attn2|lora_te", 0.6), "all": (".", 0.3)}


def synthetic_lora(bundle: Any, path: Path, seed: int, pattern: str, scale: float) -> Path:
    """A kohya LoRA file for `bundle` with random non-zero ups on the keys matching `pattern`."""
    import json

    import torch
    from safetensors.torch import save_file

    from lorakiln.networks.export import kohya_state_dict
    from lorakiln.networks.network import create_lora_network

    net = create_lora_network(bundle.unet, bundle.text_encoders, bundle.family, dim=4, alpha=2)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in net.loras():  # both factors from `gen`: the file depends on `seed` alone
            down = m.lora_down.weight
            down.copy_(torch.randn(down.shape, generator=gen) * (3 * down[0].numel()) ** -0.5)  # kaiming std
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=gen) * scale)
    tensors = {k: v for k, v in kohya_state_dict(net, "float").items() if re.search(pattern, k)}
    net.remove()
    save_file(tensors, str(path), {"ss_base_model_version": bundle.family.base_model_version,
                                   "ss_tag_frequency": json.dumps({path.stem: {path.stem: 1}})})
    return path


def load_model(name: str) -> Any | None:
    """The bundle for `name`, or None (with a message) when the toy model's weights are missing."""
    from lorakiln.errors import ModelLoadError
    from lorakiln.models.loading import load_base_model

    try:
        return load_base_model(name)
    except ModelLoadError as err:
        if name != "toy":
            raise
        print(f"toy model skipped: {err}")
        return None


def run_case(bundle: Any, work: Path, pair: tuple[int, int], targets: str, lam: float,
             args: argparse.Namespace, prompts: tuple[str, str]) -> dict[str, Any]:
    from lorakiln.lora_tools.ziplora.ziplora import ZipLoRAOptions, ziplora_merge

    pattern, scale = TARGETS[targets]
    tag = f"{bundle.family.name}-{targets}-{pair[0]}-{pair[1]}"
    files = [synthetic_lora(bundle, work / f"{role}-{tag}.safetensors", seed, pattern, scale)
             for role, seed in zip(("subject", "style"), pair, strict=True)]
    options = ZipLoRAOptions(steps=args.steps, lr=args.lr, lam=lam, resolution=args.resolution,
                             latents=args.latents, seed=0)
    started = time.perf_counter()
    out = work / f"zip-{tag}-{lam}.safetensors"
    result = ziplora_merge(bundle, files[0], files[1], *prompts, out, options, force=True,
                           log=lambda _msg: None)
    return {"kept": result.effect_kept, "seconds": time.perf_counter() - started, "modules": result.shared}


def print_row(model: str, targets: str, pair: tuple[int, int], lam: float, row: dict[str, Any]) -> None:
    kept = row["kept"]
    cells = "  ".join(f"{kept[m]['subject']:>6.3f} {kept[m]['style']:>6.3f}"
                      for m in ("merged", "average", "sum"))
    print(f"{model:<10}{targets:<11}{pair[0]},{pair[1]:<5}{lam:<7g}{row['modules']:>5}  {cells}  "
          f"{row['seconds']:>5.0f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny:sd1", "tiny:sdxl", "toy"])
    parser.add_argument("--toy", default="toy", help="the toy model: `toy` (shipped weights) or a file")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--pairs", nargs="+", default=["1,2", "3,4"], help="LoRA seed pairs (subject,style)")
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.01])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--latents", choices=["generated", "random"], default="generated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    args = parser.parse_args()

    import torch

    # Intra-op threads beyond the free cores slow tiny ops down by orders of magnitude.
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="lorakiln-ziplora-"))
    pairs = [tuple(int(s) for s in p.split(",")) for p in args.pairs]
    print(f"effect kept (subject style) after {args.steps} steps, lr {args.lr:g}, {args.latents} latents, "
          f"{args.resolution} px; held-out latents, timesteps and noise")
    print(f"{'model':<10}{'targets':<11}{'pair':<7}{'λ':<7}{'mods':>5}  {'ZipLoRA':^13}  {'average':^13}  "
          f"{'sum':^13}  {'time':>6}")
    for model in args.models:
        name = args.toy if model == "toy" else model
        bundle = load_model(name)
        if bundle is None:
            continue
        prompts = TOY_PROMPTS if model == "toy" else PROMPTS
        for targets in args.targets:
            for pair in pairs:
                for lam in args.lambdas:
                    row = run_case(bundle, work, pair, targets, lam, args, prompts)
                    print_row(model, targets, pair, lam, row)
    print(f"(files in {work})", file=sys.stderr)


if __name__ == "__main__":
    main()
