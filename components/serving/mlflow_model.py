"""The categorizer as an MLflow pyfunc model: what `registry register` logs and `mlflow models serve` serves.

The pyfunc flavour is the one place serving meets MLflow; runs, the registry and URIs live in
`components.mlflow_store`.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd

from components import mlflow_store
from components.checkpoint import CheckpointError
from components.config import Params
from components.serving.categorizer import Categorizer, load_images

# What a served model needs at inference (not the training or orchestration stack).
SERVING_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31", "pandas>=3.0,<3.1",
                        "numpy", "pillow", "scikit-learn", "tqdm", "pyyaml"]
INPUT_COLUMNS = ["id", "productDisplayName", "gender", "baseColour", "season", "year", "usage", "brandName",
                 "ageGroup", "colour1", "colour2", "price", "discountedPrice", "fashionType",
                 "articleAttributes", "image"]


class CategorizerModel(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame of products (INPUT_COLUMNS; image as base64 or path) -> categories + confidences."""

    def load_context(self, context: Any) -> None:
        self.load_from(Path(context.artifacts["checkpoint"]))

    def load_from(self, checkpoint: Path) -> None:
        self.categorizer = Categorizer.from_checkpoint(checkpoint, device="auto")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input.copy()
        for c in INPUT_COLUMNS:
            if c not in frame:
                frame[c] = ""
        frame = frame.fillna("")
        h, w = self.categorizer.image_size
        images = load_images(frame["image"].tolist(), h, w)
        pred, _ = self.categorizer.predict(frame, images)
        return pred


def log_categorizer(checkpoint: str | Path, example: pd.DataFrame) -> str:
    """Log a checkpoint as a pyfunc model in the active run (signature from a real prediction); its URI."""
    from mlflow.models import infer_signature

    model = CategorizerModel()
    model.load_from(Path(checkpoint))
    out = model.predict(None, example)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=CategorizerModel(), artifacts={"checkpoint": str(checkpoint)},
        signature=infer_signature(example, out), input_example=example,
        pip_requirements=SERVING_REQUIREMENTS,
        code_paths=[str(Path(__file__).parents[1])],  # the components package
    )
    return info.model_uri


def example_frame(frame: pd.DataFrame, image_root: Path, n: int = 2) -> pd.DataFrame:
    """A small input example in the serving schema (image as base64), from real catalog rows."""
    rows = frame[frame["has_image"]].head(n) if "has_image" in frame else frame.head(n)
    ex = pd.DataFrame({c: rows[c] if c in rows else "" for c in INPUT_COLUMNS if c != "image"})
    ex["image"] = [base64.b64encode((image_root / p).read_bytes()).decode() for p in rows["image"]]
    for c in ("year", "price", "discountedPrice"):
        ex[c] = ex[c].astype(float)
    ex["id"] = ex["id"].astype("int64")
    for c in ex.columns:
        if ex[c].dtype == object:
            ex[c] = ex[c].astype(str)
    return ex.reset_index(drop=True)


def load_categorizer_uri(model_uri: str, params: Params | None = None) -> Categorizer:
    """Load a logged categorizer (models:/name@alias, runs:/…) and return its inference object."""
    if params is None and Path("params.yaml").is_file():
        from components.config import load_params

        params = load_params()
    if params is not None:
        mlflow_store.configure_registry(params)
    try:
        loaded = mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise CheckpointError(f"{model_uri}: cannot load from MLflow at {mlflow.get_tracking_uri()}: {exc}") from exc
    return loaded.unwrap_python_model().categorizer
