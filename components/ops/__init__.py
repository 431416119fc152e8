"""Operations around the pipeline: MLflow publishing and registry, drift, replay, landing batches."""
