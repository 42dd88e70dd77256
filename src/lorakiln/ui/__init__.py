"""The web UI (`lorakiln ui`): forms over the same run configs as the CLI, a run queue that
trains in separate processes, and the generation and LoRA tools — through the public API only."""
