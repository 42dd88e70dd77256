"""Every translation of module and key names between the ecosystem's naming schemes, in one place.

* `kohya` — kohya sd-scripts LoRA module keys (``lora_unet_*``, ``lora_te*_*``) ⇄ diffusers /
  PEFT module paths, A1111's rules for resolving them, LyCORIS and SGM-named variants;
* `ldm` — diffusers U-Net paths ⇄ the original LDM/SGM checkpoint paths (``input_blocks.1.1…``),
  used by single-file loading, checkpoint export and the kohya keys of SDXL;
* `open_clip` — OpenCLIP text-encoder names (SDXL's second encoder, SD 2.x) ⇄ transformers' CLIP.

Nothing else in lorakiln rewrites a module name; code that needs another naming asks here.
"""
