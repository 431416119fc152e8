"""Towers (image, text, metadata), the fusion model, its losses, the TF-IDF baseline and how to run them."""
