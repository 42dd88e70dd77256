"""Model families and base-model loading.

Modules (imported directly, so `import lorakiln.models` stays cheap for the CLI):
`family` (ModelFamily data: SD1, SDXL), `bundle` (ModelBundle), `loading` (`load_base_model`,
`load_vae`), `hub_id` (the one "is this `owner/name` a Hub id?" rule, torch-free), `hub_access`
(is the hub reachable, where is its cache: torch-free), `hub_download` (hub ids from the cache or
a download that fails fast), `detect` (family detection), `arch` (configs: bundled SD 1.5 / SDXL, shape
inference), `single_file` (LDM/SGM checkpoint → components), `open_clip` (SDXL's OpenCLIP
text-encoder layout), `ldm_export` (components → LDM/SGM checkpoint), `clip_tokenizer`
(bundled CLIP tokenizer), `tiny` / `tiny_sdxl` (tiny test models), `sd15_random` /
`sdxl_random` (full-size architectures with random weights, for benchmarks).
"""
