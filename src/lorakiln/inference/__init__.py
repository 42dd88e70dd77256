"""Generation: diffusers pipelines over loaded bundles (A1111 syntax, samplers and grids come later)."""
