"""lorakiln: train LoRAs for Stable Diffusion 1.x and SDXL that load everywhere."""

__version__ = "0.1.0"
