"""MLflow tracking and model packaging: the only module that imports mlflow for training runs.

Default store: the project's SQLite file (params.paths.mlflow_db); MLFLOW_TRACKING_URI overrides it.
"""
from __future__ import annotations

import base64
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd

from components.config import Params

log = logging.getLogger(__name__)

# What a served model needs at inference (not the training or orchestration stack).
SERVING_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31", "pandas>=3.0,<3.1",
                        "numpy", "pillow", "scikit-learn", "tqdm", "pyyaml"]
INPUT_COLUMNS = ["id", "productDisplayName", "gender", "baseColour", "season", "year", "usage", "brandName",
                 "ageGroup", "colour1", "colour2", "price", "discountedPrice", "fashionType",
                 "articleAttributes", "image"]


os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class CategorizerModel(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame of products (INPUT_COLUMNS; image as base64 or path) -> categories + confidences."""

    def load_context(self, context: Any) -> None:
        self.load_from(Path(context.artifacts["checkpoint"]))

    def load_from(self, checkpoint: Path) -> None:
        from components.inference import Categorizer

        self.categorizer = Categorizer.from_checkpoint(checkpoint, device="auto")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from components.inference import load_images

        frame = model_input.copy()
        for c in INPUT_COLUMNS:
            if c not in frame:
                frame[c] = ""
        frame = frame.fillna("")
        h, w = self.categorizer.image_size
        images = load_images(frame["image"].tolist(), h, w)
        pred, _ = self.categorizer.predict(frame, images)
        return pred


def tracking_uri(params: Params) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(params.paths.mlflow_db).resolve()}"


def configure(params: Params) -> Any:
    """Point MLflow at the project's store (or MLFLOW_TRACKING_URI) and the params experiment."""
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(params.tracking.experiment) is None:
        # Keep artifacts beside the SQLite file (git-ignored), not in ./mlruns of whatever cwd we run in.
        store = Path(params.paths.mlflow_db).resolve().parent / "mlartifacts"
        mlflow.create_experiment(params.tracking.experiment, artifact_location=store.as_uri())
    mlflow.set_experiment(params.tracking.experiment)
    return mlflow


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class TrainingRun:
    """Thin handle over an active MLflow run."""

    def __init__(self, mlflow: Any, run: Any) -> None:
        self.mlflow, self.run = mlflow, run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_params(self, params: dict) -> None:
        flat = {k: str(v)[:500] for k, v in flatten(params).items()}
        self.mlflow.log_params(flat)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
        self.mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path) -> None:
        self.mlflow.log_artifact(str(path))

    def log_pyfunc(self, checkpoint: str | Path, example: pd.DataFrame) -> str:
        """Log the checkpoint as a pyfunc model (DataFrame of products in, categories out)."""
        return log_categorizer(self.mlflow, checkpoint, example)


@contextlib.contextmanager
def training_run(params: Params, run_name: str, tags: dict[str, str]) -> Iterator[TrainingRun]:
    configure(params)
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        yield TrainingRun(mlflow, run)


def log_categorizer(mlflow: Any, checkpoint: str | Path, example: pd.DataFrame) -> str:
    from mlflow.models import infer_signature

    model = CategorizerModel()
    model.load_from(Path(checkpoint))
    out = model.predict(None, example)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=CategorizerModel(), artifacts={"checkpoint": str(checkpoint)},
        signature=infer_signature(example, out), input_example=example,
        pip_requirements=SERVING_REQUIREMENTS,
        code_paths=[str(Path(__file__).parent)],
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


def load_categorizer_uri(model_uri: str, params: Params | None = None):
    """Load a logged categorizer (models:/name@alias, runs:/…) and return its inference object."""
    if params is None and Path("params.yaml").is_file():
        from components.config import load_params

        params = load_params()
    if params is not None:
        configure_registry(params)
    try:
        loaded = mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        from components.checkpoint import CheckpointError

        raise CheckpointError(f"{model_uri}: cannot load from MLflow at {mlflow.get_tracking_uri()}: {exc}") from exc
    return loaded.unwrap_python_model().categorizer


# ---- Model registry primitives (aliases, tags); the promotion logic lives in components/registry.py ----

class RegistryError(RuntimeError):
    """The registry cannot be reached or refused an operation; nothing was changed by us."""


def client(params: Params) -> Any:
    configure_registry(params)
    return mlflow.MlflowClient(tracking_uri=tracking_uri(params), registry_uri=tracking_uri(params))


def configure_registry(params: Params) -> None:
    mlflow.set_tracking_uri(tracking_uri(params))
    mlflow.set_registry_uri(tracking_uri(params))


@contextlib.contextmanager
def registry_errors(params: Params, action: str) -> Iterator[None]:
    """Turn connection/registry failures into one clear RegistryError."""
    try:
        yield
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(f"{action} failed against {tracking_uri(params)}: {exc.message}") from exc
    except (ConnectionError, OSError) as exc:
        raise RegistryError(f"{action}: registry at {tracking_uri(params)} is unreachable ({exc}); "
                            "check MLFLOW_TRACKING_URI and that the server is up") from exc


def register_checkpoint(params: Params, checkpoint: Path, example: pd.DataFrame, tags: dict[str, str],
                        run_name: str = "register") -> Any:
    """Log the checkpoint as a pyfunc in a `register` run and create a new registered version."""
    with training_run(params, run_name, {"stage": "register"}) as run:
        run.log_metrics({k: float(v) for k, v in tags.items() if _is_number(v)})
        model_uri = run.log_pyfunc(checkpoint, example)
    mv = mlflow.register_model(model_uri, params.registry.model_name, tags=tags)
    return mv


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def alias_version(c: Any, name: str, alias: str) -> str | None:
    """Version number behind an alias, or None when the alias (or the model) does not exist."""
    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException as exc:
        if _missing(exc):
            return None
        raise


def _missing(exc: Exception) -> bool:
    code = str(getattr(exc, "error_code", ""))
    return "RESOURCE_DOES_NOT_EXIST" in code or "INVALID_PARAMETER_VALUE" in code and "not found" in str(exc)


def version_tags(c: Any, name: str, version: str) -> dict[str, str]:
    return dict(c.get_model_version(name, version).tags)


def set_version_tags(c: Any, name: str, version: str, tags: dict[str, Any]) -> None:
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, str(v))


def set_alias(c: Any, name: str, alias: str, version: str) -> None:
    c.set_registered_model_alias(name, alias, version)


def list_versions(c: Any, name: str) -> list[dict]:
    try:
        model = c.get_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if _missing(exc):
            return []
        raise
    aliases: dict[str, list[str]] = {}
    for alias, ver in (model.aliases or {}).items():
        aliases.setdefault(str(ver), []).append(alias)
    out = []
    for mv in c.search_model_versions(f"name='{name}'"):
        out.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                    "created": mv.creation_timestamp, "tags": dict(mv.tags)})
    return sorted(out, key=lambda d: int(d["version"]))


def model_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


def log_report(params: Params, run_name: str, folder: Path, metrics: dict) -> str:
    """Log a report folder (HTML + JSON) and its headline numbers as an MLflow run."""
    with training_run(params, run_name, {"stage": run_name.split("/")[0]}) as run:
        run.log_metrics(metrics)
        mlflow.log_artifacts(str(folder), artifact_path="report")
        return run.run_id
