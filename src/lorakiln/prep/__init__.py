"""Dataset preparation verbs: `dataset init` (import photos into a kohya folder) and
`dataset check` (everything the trainer would say about a folder, and more, before training)."""
