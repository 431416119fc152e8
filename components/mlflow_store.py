"""MLflow tracking and registry primitives: where runs and model versions live, and how we talk to them.

Default store: the project's SQLite file (params.paths.mlflow_db); MLFLOW_TRACKING_URI overrides it.
The model flavour (what a logged categorizer is) lives in `components.serving.mlflow_model`; what is
published and when is `components.lifecycle.publish` and `components.lifecycle.registry`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow

from components.config import Params

log = logging.getLogger(__name__)

MAX_TAG_CHARS = 4900  # under MLflow's 5,000-character tag value limit
MAX_PARAM_CHARS = 500  # MLflow's param value limit


class RegistryError(RuntimeError):
    """The registry cannot be reached or refused an operation; nothing was changed by us."""


def tracking_uri(params: Params) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(params.paths.mlflow_db).resolve()}"


def configure_registry(params: Params) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(tracking_uri(params))
    mlflow.set_registry_uri(tracking_uri(params))


def configure(params: Params) -> None:
    """Point MLflow at the project's store (or MLFLOW_TRACKING_URI) and the params experiment."""
    configure_registry(params)
    uri = tracking_uri(params)
    if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(params.tracking.experiment) is None:
        # Keep artifacts beside the SQLite file (git-ignored), not in ./mlruns of whatever cwd we run in.
        store = Path(params.paths.mlflow_db).resolve().parent / "mlartifacts"
        mlflow.create_experiment(params.tracking.experiment, artifact_location=store.as_uri())
    mlflow.set_experiment(params.tracking.experiment)


def client(params: Params) -> Any:
    configure_registry(params)
    return mlflow.MlflowClient(tracking_uri=tracking_uri(params), registry_uri=tracking_uri(params))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def numeric(metrics: dict) -> dict[str, float]:
    """The finite numbers of a (nested) metrics dict, flattened to dotted keys: what MLflow can log."""
    return {k: float(v) for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


class Run:
    """Thin handle over an active MLflow run."""

    def __init__(self, run: Any) -> None:
        self.run = run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_params(self, params: dict) -> None:
        mlflow.log_params({k: str(v)[:MAX_PARAM_CHARS] for k, v in flatten(params).items()})

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        mlflow.log_metrics(numeric(metrics), step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dataset(self, name: str, digest: str, source: str, context: str = "training") -> None:
        """The data the run learned from, as an MLflow dataset input (the Datasets column of the runs table):
        its name, its digest (the DVC md5 of the catalog version) and where it lives. Metadata only: the
        catalog itself stays in DVC."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        mlflow.log_input(MetaDataset(LocalArtifactDatasetSource(source), name=name, digest=digest or None),
                         context=context)

    def log_model_metrics(self, model_uri: str, metrics: dict) -> None:
        """Metrics on a logged model (models:/m-...): MLflow 3 shows them on the model's page."""
        mlflow.log_metrics(numeric(metrics), model_id=model_uri.removeprefix("models:/"))


@contextlib.contextmanager
def start_run(params: Params, run_name: str, tags: dict[str, str]) -> Iterator[Run]:
    configure(params)
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        yield Run(run)


def find_run(params: Params, tags: dict[str, str]) -> str | None:
    """The newest finished run of the experiment carrying all these tags, or None."""
    configure(params)
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow.search_runs(experiment_names=[params.tracking.experiment], filter_string=query,
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    runs = [r for r in runs if r.info.status == "FINISHED"]
    return runs[0].info.run_id if runs else None


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


RECIPE_TAG = "recipe_md5"  # provenance.recipe_md5 of the pipeline result a version comes from


def register_model(params: Params, model_uri: str, run_id: str, tags: dict[str, str]) -> str:
    """A version of params.registry.model_name for this run's model; the existing one if it was registered, or
    if a version carries the same non-empty RECIPE_TAG (the same data, params and code: an equivalent model)."""
    c = client(params)
    name = params.registry.model_name
    try:
        for mv in c.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
            log.info("%s: run %s is already version %s", name, run_id, mv.version)
            return str(mv.version)
        recipe = tags.get(RECIPE_TAG)
        # Filtered here, not in the search string: tag filters differ between the file, SQL and REST stores.
        same = [mv for mv in c.search_model_versions(f"name='{name}'") if recipe and mv.tags.get(RECIPE_TAG) == recipe]
        if same:
            first = min(same, key=lambda mv: int(mv.version))
            log.info("%s: version %s has the same recipe (data, params, code) as run %s: not registered again",
                     name, first.version, run_id)
            return str(first.version)
    except mlflow.exceptions.MlflowException as exc:
        # Only "no such model yet" means nothing is registered; anything else (a server error) must not lead
        # to registering the same run a second time: it fails the task, which retries.
        if not _missing(exc):
            raise
    return str(mlflow.register_model(model_uri, name, tags=tags).version)


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


def describe(c: Any, name: str, version: str, model_text: str, version_text: str) -> None:
    """Descriptions shown in the registry UI: the registered model's and one version's (its model card)."""
    c.update_registered_model(name, description=model_text)
    c.update_model_version(name, version, description=version_text)


def set_alias(c: Any, name: str, alias: str, version: str) -> None:
    c.set_registered_model_alias(name, alias, version)


def delete_alias(c: Any, name: str, alias: str) -> None:
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # already gone: nothing to do
        c.delete_registered_model_alias(name, alias)


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


def resolve_version(uri: str, c: Any = None) -> tuple[str, str]:
    """(name, version) behind models:/NAME@ALIAS or models:/NAME/VERSION (client `c`, default: the configured
    registry)."""
    ref = uri.removeprefix("models:/")
    if not uri.startswith("models:/") or not ref:
        raise RegistryError(f"{uri}: not a registered model; give models:/NAME@ALIAS or models:/NAME/VERSION")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = alias_version(c or mlflow.MlflowClient(), name, alias)
        if version is None:
            raise RegistryError(f"{uri}: no version of {name} has the alias @{alias}")
        return name, version
    name, _, version = ref.partition("/")
    if not version.isdigit():
        raise RegistryError(f"{uri}: expected models:/NAME/VERSION with a version number")
    return name, version


def registered_version_tags(name: str, version: str) -> dict[str, str]:
    return version_tags(mlflow.MlflowClient(), name, version)


def download_model_file(name: str, version: str, rel: str, dst: Path) -> Path:
    """One file of a registered model version's stored model (its MLmodel, an artifact), into `dst`. Nothing
    else of the stored model is fetched, and nothing fetched is imported or unpickled here."""
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}/{rel}",
                                                    dst_path=str(dst)))


def registered_tags(params: Params, uri: str) -> dict[str, str]:
    """Tags of the model version behind models:/NAME@ALIAS or models:/NAME/VERSION; {} for other URIs."""
    if not uri.startswith("models:/"):
        return {}
    c = client(params)
    try:
        name, version = resolve_version(uri, c)
    except RegistryError:  # no such alias: nothing registered to compare with
        return {}
    return version_tags(c, name, version)


def log_report(params: Params, run_name: str, folder: Path, metrics: dict) -> str:
    """Log a report folder (HTML + JSON) and its headline numbers as an MLflow run."""
    with start_run(params, run_name, {"stage": run_name.split("/")[0]}) as run:
        run.log_metrics(metrics)
        run.log_artifact(folder, artifact_path="report")
        return run.run_id


def set_run_tag(key: str, value: str) -> None:
    """Tag the active run."""
    mlflow.set_tag(key, value)


def run_tag(params: Params, run_id: str, key: str) -> str:
    value = client(params).get_run(run_id).data.tags.get(key)
    if not value:
        raise RegistryError(f"run {run_id} has no tag {key!r}; publish again (python -m components.lifecycle.publish)")
    return value
