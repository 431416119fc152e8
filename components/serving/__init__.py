"""Serving: the categorizer, batch predict, search and the MLflow model flavour. Never imports training."""
