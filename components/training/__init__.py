"""Training: the loop (fit, optimisers) and one neural training as a stage step."""
