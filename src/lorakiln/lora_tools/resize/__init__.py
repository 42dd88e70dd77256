"""The rank-changing file tools: `resize` lowers an existing LoRA's rank, `extract` makes a LoRA
from the difference of two checkpoints, both by truncated SVD from `lowrank`.

Imports nothing, so importing a submodule stays as light as that submodule.
"""
