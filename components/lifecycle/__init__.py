"""Model lifecycle: publishing trained models to MLflow, the registry with its promotion gate, provenance tags."""
