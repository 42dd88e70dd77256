"""LoRA files as files: the safetensors header and key layout, the `lora info` report, reading and
writing kohya files, and kohya ⇄ diffusers conversion. Everything that opens a LoRA goes through here.

Imports nothing, so importing a submodule stays as light as that submodule.
"""
