"""The categorizer as an MLflow pyfunc model: what `registry register` logs and `mlflow models serve` serves.

The pyfunc flavour is the one place serving meets MLflow; runs, the registry and URIs live in
`components.mlflow_store`. The model is logged *from code* (`mlflow_entry.py`), not as a cloudpickled
object, and its artifacts are data only: torch weights (read with weights_only=True), JSON, and the TF-IDF
expert's arrays (`model.npz`, read without pickle).

Two ways to load it, and what each executes:
- `load_categorizer_uri` (the predict CLI, the DAGs, the promotion gate): the categorizer code is the
  *installed* package. Only the data artifacts are fetched, one by one, and each must match the md5 recorded
  in the version's `artifact_md5` tag at registration. Nothing stored with the model is imported, so whoever
  can write a model version or its artifacts cannot run code on our workers; they can publish bad weights,
  which the promotion gate and the tags are there to catch.
- `mlflow models serve` / `mlflow.pyfunc.load_model`: MLflow imports the stored copy of `mlflow_entry.py`
  and of the `components` package (`code_paths`). That path trusts the registry's storage like code: run it
  only where writing to the registry is as privileged as deploying code.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
import yaml

from components import mlflow_store
from components.atomic_io import read_json
from components.catalog import IMAGE, renames, to_internal
from components.checkpoint import CheckpointError
from components.config import CatalogSchema, Params, catalog_from_dict
from components.models.combiner import Combiner
from components.models.retrieval import load_towers, space_fingerprint
from components.serving.categorizer import Categorizer, load_images
from components.serving.stacked import StackedCategorizer, file_md5, is_stack, served_experts, stack_file

log = logging.getLogger(__name__)

# What a served model needs at inference (not the training or orchestration stack).
SERVING_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31", "pandas>=3.0,<3.1",
                        "numpy", "pillow", "scikit-learn", "tqdm", "pyyaml"]
# A model logged before it carried its catalog schema reads the Myntra export's columns.
INPUT_COLUMNS = ["id", "productDisplayName", "gender", "baseColour", "season", "year", "usage", "brandName",
                 "ageGroup", "colour1", "colour2", "price", "discountedPrice", "fashionType",
                 "articleAttributes", "image"]
NUMERIC_COLUMNS = ("year", "price", "discountedPrice")  # float: they may be missing (NaN)
CATALOG_ARTIFACT = "catalog"  # the catalog schema and input columns the model was logged with (catalog.json)
TOWERS_ARTIFACT = "retrieval_towers"  # search's retrieval towers (train_retrieval), when the pipeline has one
ENTRY = Path(__file__).with_name("mlflow_entry.py")
ARTIFACT_MD5_TAG = "artifact_md5"  # version tag: {artifact name: md5} of the files logged with the model


def input_columns(schema: CatalogSchema, frame_columns: list[str]) -> list[str]:
    """What the served model reads, in the export's own column names: the id, the title, the metadata the
    models use (in the order of the internal table's columns, `frame_columns`), the image."""
    exported = {internal: export for export, internal in renames(schema).items()}
    used = {*schema.categorical, *schema.numeric, *schema.attributes}
    named = [exported.get(c, c) for c in frame_columns]
    return [schema.id, schema.title, *(c for c in named if c in used), schema.image.column or IMAGE]


def serving_columns(schema: CatalogSchema, ingest: str | Path) -> list[str]:
    """input_columns of the model trained on ingest's table."""
    return input_columns(schema, list(pd.read_parquet(Path(ingest) / "products.parquet").columns))


def catalog_spec(schema: CatalogSchema, columns: list[str]) -> bytes:
    """catalog.json, logged with the model: the schema it reads and its input columns (the same bytes at
    publish and at registration, where their md5 is recorded)."""
    return (json.dumps({"catalog": dataclasses.asdict(schema), "columns": list(columns)}, indent=1) + "\n").encode()


def input_schema(schema: CatalogSchema, columns: list[str]):
    """Only the id is required: a product needs a title or an image, and every other field is optional, as
    for the batch CLI (a row with neither title nor image is answered with its status, not rejected)."""
    from mlflow.types import ColSpec, Schema

    def spec(c: str) -> ColSpec:
        if c == schema.id:
            return ColSpec("long" if schema.id_type == "int" else "string", c, required=True)
        return ColSpec("double" if c in schema.numeric else "string", c, required=False)

    return Schema([spec(c) for c in columns])


class CategorizerModel(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame of products (INPUT_COLUMNS; image as base64 or path) -> categories + confidences."""

    schema: CatalogSchema | None = None  # None: a model logged before it carried one (INPUT_COLUMNS)
    columns: list[str] = INPUT_COLUMNS
    numeric: tuple[str, ...] = NUMERIC_COLUMNS
    id_column = "id"

    def load_context(self, context: Any) -> None:
        arts = {k: Path(v) for k, v in context.artifacts.items()}
        self.load_from(arts.pop("combiner") if "combiner" in arts else arts["checkpoint"], arts)

    def load_from(self, model: Path, files: dict[str, Path] | None = None) -> None:
        """A stack's combiner.json (experts from `files` or the paths it records) or a fusion checkpoint, and
        the catalog schema it reads (files["catalog"]) when it was logged with one."""
        files = dict(files or {})
        spec = files.pop(CATALOG_ARTIFACT, None)
        towers = files.pop(TOWERS_ARTIFACT, None)
        if spec is not None:
            self.use_schema(**read_json(spec))
        if is_stack(model):
            self.categorizer = StackedCategorizer.load(stack_file(model), files or None, device="auto")
        else:
            self.categorizer = Categorizer.from_checkpoint(model, device="auto")
        self.categorizer.schema = self.schema
        if towers is not None:
            fitted = load_towers(towers)
            if fitted.fingerprint != space_fingerprint(self.categorizer.model):
                raise CheckpointError(f"{towers}: the retrieval towers were trained on another fusion network than "
                                      f"{model}'s; rerun `dvc repro train_retrieval` before publishing")
            # Search's, not the categorizer's: predictions never read it (components.serving.search.find_towers).
            self.categorizer.retrieval_towers = fitted

    def use_schema(self, catalog: dict, columns: list[str]) -> None:
        self.schema = catalog_from_dict(catalog)
        self.columns, self.numeric, self.id_column = columns, self.schema.numeric, self.schema.id

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input.copy()
        for c in self.columns:
            if c not in frame:
                frame[c] = ""
        for c in frame.columns:
            if c not in self.numeric and c != self.id_column:
                frame[c] = frame[c].fillna("")
        if self.schema is not None:
            frame = to_internal(frame, self.schema)
        h, w = self.categorizer.image_size
        # Paths only under DEEPFUSION_IMAGE_ROOT (trusted batch use); by default the served model takes base64.
        images = load_images(frame["image"].tolist(), h, w, root=os.environ.get("DEEPFUSION_IMAGE_ROOT") or None)
        pred, _ = self.categorizer.predict(frame, images)
        return pred


def model_artifacts(model: str | Path, towers: str | Path | None = None) -> dict[str, str]:
    """What the logged model carries: a stack's combiner.json, the expert files serving needs (the
    combiner's and the fusion network) and its int8 calibration images if it has them, or one checkpoint; and
    the retrieval towers search uses, when `towers` names an existing file."""
    extra = {TOWERS_ARTIFACT: str(towers)} if towers is not None and Path(towers).is_file() else {}
    if not is_stack(model):
        return {"checkpoint": str(model), **extra}
    spec = read_json(stack_file(model))
    needed = served_experts(Combiner.from_dict(spec["combiner"]))
    int8 = {"calibration": str(stack_file(model).parent / spec["int8"]["calibration"])} if spec.get("int8") else {}
    return {"combiner": str(stack_file(model)), **{e: str(f) for e, f in spec["files"].items() if e in needed},
            **int8, **extra}


def log_categorizer(model: str | Path, example: pd.DataFrame, schema: CatalogSchema, workdir: Path,
                    towers: str | Path | None = None) -> str:
    """Log a stack or a checkpoint as a pyfunc model (from code) in the active run, with the catalog schema it
    reads (catalog.json, written in `workdir`); its URI. The example is in the export's column names (see
    example_frame); the output signature comes from a real prediction of it.
    """
    from mlflow.models import ModelSignature, infer_signature

    spec = Path(workdir) / "catalog.json"
    spec.write_bytes(catalog_spec(schema, list(example.columns)))
    loaded = CategorizerModel()
    artifacts = {**model_artifacts(model, towers), CATALOG_ARTIFACT: str(spec)}
    # The towers is loaded too: one trained on another fusion network is refused before anything is logged.
    loaded.load_from(Path(model), {k: Path(v) for k, v in artifacts.items() if k in (CATALOG_ARTIFACT,
                                                                                     TOWERS_ARTIFACT)})
    out = loaded.predict(None, example)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(ENTRY), artifacts=artifacts,
        signature=ModelSignature(inputs=input_schema(schema, list(example.columns)),
                                 outputs=infer_signature(example, out).outputs),
        input_example=example,
        pip_requirements=SERVING_REQUIREMENTS,
        code_paths=[str(Path(__file__).parents[1])],  # the components package
    )
    return info.model_uri


def example_frame(frame: pd.DataFrame, image_root: Path, schema: CatalogSchema, n: int = 2) -> pd.DataFrame:
    """A small input example in the export's column names (image as base64), from real catalog rows (the
    internal table of ingest, whose column order the inputs follow)."""
    rows = frame[frame["has_image"]].head(n) if "has_image" in frame else frame.head(n)
    columns = input_columns(schema, list(frame.columns))
    internal = renames(schema)
    ex = pd.DataFrame({c: rows[internal.get(c, c)] if internal.get(c, c) in rows else ""
                       for c in columns[:-1]})
    ex[columns[-1]] = [base64.b64encode((image_root / p).read_bytes()).decode() for p in rows[IMAGE]]
    for c in schema.numeric:
        if c in ex:
            ex[c] = ex[c].astype(float)
    ex[schema.id] = ex[schema.id].astype("int64" if schema.id_type == "int" else str)
    for c in ex.columns:
        if ex[c].dtype == object:
            ex[c] = ex[c].astype(str)
    return ex.reset_index(drop=True)


def artifact_md5(model: str | Path, schema: CatalogSchema, columns: list[str], towers: str | Path | None = None
                 ) -> dict[str, str]:
    """md5 of every file `log_categorizer` logs with the model: recorded as a version tag at registration."""
    return {**{k: file_md5(Path(v)) for k, v in model_artifacts(model, towers).items()},
            CATALOG_ARTIFACT: hashlib.md5(catalog_spec(schema, columns)).hexdigest()}


MODEL_CACHE_ENV = "DEEPFUSION_MODEL_CACHE"  # a folder, or "off"; default ~/.cache/deepfusion/models
CACHE_KEEP = 40  # artifact files kept, least recently used removed first (a stack has about ten)


def model_cache() -> Path | None:
    """This machine's cache of registered models' artifacts, by md5: a worker loads `@champion` for every task,
    and downloading it through the MLflow server each time cost ~15 s of a ~50 s drift report (the load drill)."""
    env = os.environ.get(MODEL_CACHE_ENV, "")
    if env == "off":
        return None
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepfusion" / "models"


def cached_artifact(cache: Path | None, md5: str, name: str) -> Path | None:
    """The cached copy of the artifact whose registered md5 is `md5`, checked again (a damaged copy is removed
    and downloaded anew); None when there is none."""
    if cache is None:
        return None
    path = cache / md5 / name
    try:
        if not path.is_file():
            return None
        if file_md5(path) != md5:
            shutil.rmtree(path.parent, ignore_errors=True)
            return None
        os.utime(path.parent)  # recently used: pruned last
    except OSError as exc:  # another user's cache, a disk gone read-only: download instead
        log.warning("model cache %s not usable (%s); downloading", cache, exc)
        return None
    return path


def keep_artifact(cache: Path | None, md5: str, downloaded: Path) -> Path:
    """Put a downloaded, checked artifact into the cache (atomically: another task may load the same model) and
    prune the least recently used; on a cache that cannot be written the download itself is used."""
    if cache is None:
        return downloaded
    target = cache / md5 / downloaded.name
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{md5}.", dir=cache))
        shutil.copy2(downloaded, tmp / downloaded.name)
        try:
            tmp.rename(cache / md5)
        except OSError:  # another task cached it first
            shutil.rmtree(tmp, ignore_errors=True)
        entries = sorted((p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[CACHE_KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:  # a full or read-only disk: loading goes on from the download
        log.warning("model cache %s not written (%s); loading from the download", cache, exc)
        return downloaded
    return target if target.is_file() else downloaded


def load_categorizer_uri(model_uri: str, params: Params | None = None) -> Categorizer:
    """A registered categorizer (models:/NAME@ALIAS or models:/NAME/VERSION), run by the installed package:
    only its data artifacts are downloaded, each checked against the md5 recorded at registration."""
    if params is None and Path("params.yaml").is_file():
        from components.config import load_params

        params = load_params()
    if params is not None:
        mlflow_store.configure_registry(params)
    try:
        name, version = mlflow_store.resolve_version(model_uri)
        expected = json.loads(mlflow_store.registered_version_tags(name, version).get(ARTIFACT_MD5_TAG, "{}"))
        if not expected:
            raise CheckpointError(f"{model_uri}: v{version} has no {ARTIFACT_MD5_TAG} tag (registered before "
                                  "checksums were recorded); register it again from its pipeline outputs")
        with tempfile.TemporaryDirectory(prefix="deepfusion-model-") as tmp:
            spec = yaml.safe_load(mlflow_store.download_model_file(name, version, "MLmodel", Path(tmp)).read_text())
            stored = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
            if set(stored) != set(expected):
                raise CheckpointError(f"{model_uri}: the stored model holds artifacts {sorted(stored)}, the version "
                                      f"was registered with {sorted(expected)}; it was changed after registration")
            files, cache = {}, model_cache()
            for key, entry in stored.items():
                local = cached_artifact(cache, expected[key], Path(entry["path"]).name)
                if local is None:
                    local = mlflow_store.download_model_file(name, version, entry["path"], Path(tmp) / key)
                    if file_md5(local) != expected[key]:
                        raise CheckpointError(f"{model_uri}: artifact {key!r} ({entry['path']}) does not match the "
                                              "md5 recorded at registration; the stored model was changed afterwards")
                    local = keep_artifact(cache, expected[key], local)
                files[key] = local
            model = CategorizerModel()
            model.load_from(files.pop("combiner") if "combiner" in files else files["checkpoint"], files)
    except mlflow_store.RegistryError as exc:
        raise CheckpointError(str(exc)) from exc
    except mlflow.exceptions.MlflowException as exc:
        raise CheckpointError(f"{model_uri}: cannot load from MLflow at {mlflow.get_tracking_uri()}: {exc}") from exc
    return model.categorizer
