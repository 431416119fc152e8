"""DVC stages: one module per stage in dvc.yaml, each `python -m components.pipeline.<stage>`."""
