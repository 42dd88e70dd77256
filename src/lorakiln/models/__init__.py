"""Model families and base-model loading.

Modules (imported directly, so `import lorakiln.models` stays cheap for the CLI):
`family` (ModelFamily data), `bundle` (ModelBundle), `loading` (`load_base_model`, `load_vae`),
`detect` (family detection), `arch` (configs: bundled SD 1.5, shape inference),
`single_file` (LDM checkpoint → components), `ldm_export` (components → LDM checkpoint),
`clip_tokenizer` (bundled SD 1.x tokenizer), `tiny` (tiny test models), `sd15_random`
(full-size SD 1.5 with random weights, for benchmarks).
"""
