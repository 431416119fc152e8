"""Towers (image, text, metadata), the fusion model and its losses."""
from components.models.fusion import FusionModel, ModelConfig, build_model

__all__ = ["FusionModel", "ModelConfig", "build_model"]
