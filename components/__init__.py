"""DeepFusion: multi-modal product categorization (image + title + metadata)."""
