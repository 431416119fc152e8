"""Publish the pipeline's results to MLflow, once per output version: the step after `dvc repro`.

    python -m components.lifecycle.publish     # also run by the retrain DAG and by `registry register`

One MLflow run per trained model (the baselines, the fusion network and the stacked categorizer): its
params and per-epoch history (from the self-describing checkpoint), validation metrics, the run's timings
when the stage left them, the model file, and tags linking the DVC data version, the git commit and the
output's md5. The served model's run (the stack; the fusion network before `stack` ran) also carries the
evaluate stage's test metrics, plots and comparison table, and the servable pyfunc model that
`registry register` turns into a model version. Publishing the same outputs again finds the
earlier run instead of logging a duplicate.
"""
from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components import mlflow_store
from components.atomic_io import read_json
from components.checkpoint import read_blob
from components.config import Params, load_params, params_to_dict
from components.experts import EXPERTS
from components.lifecycle.provenance import data_md5, files_md5, git_commit, run_overrides_tag
from components.models.retrieval import towers_file
from components.serving.mlflow_model import example_frame, log_categorizer
from components.serving.stacked import COMBINER_FILE

log = logging.getLogger(__name__)

PUBLISHED = "deepfusion.published"  # tag: which pipeline result a run holds
OUTPUT_MD5 = "deepfusion.output_md5"  # tag: md5 of the files it was published from
MODEL_URI = "deepfusion.model_uri"  # tag: the logged pyfunc model (served model's run)


class PublishError(RuntimeError):
    """A pipeline output needed for publishing is missing."""


@dataclass(frozen=True)
class Result:
    """One trained model as the pipeline left it."""

    name: str  # MLflow run name, e.g. train_baseline/image
    model: Path  # model.pt, model.npz (TF-IDF) or combiner.json
    metrics: Path
    timings: Path  # written beside the DVC outputs; optional


def results(params: Params) -> list[Result]:
    """Every expert the pipeline trained (a neural baseline only if params.train_baseline.modalities has it),
    then the stack."""
    out = [Result(e.stage.replace("@", "/"), e.file(params.paths), *e.stage_files(params.paths)) for e in EXPERTS
           if e.linear or e.required or e.name in params.train_baseline.modalities]
    stack = Path(params.paths.stack)
    out.append(Result("stack", stack / COMBINER_FILE, stack / "metrics.json", stack / "timings.json"))
    return out


def served(params: Params) -> Result:
    """The result we register and serve: the stacked categorizer, or the fusion network before `stack` ran."""
    by_name = {r.name: r for r in results(params)}
    return by_name["stack"] if by_name["stack"].model.is_file() else by_name["train_fusion"]


def evaluate_files(params: Params) -> list[Path]:
    ev = Path(params.paths.evaluate)
    return [ev / "metrics.json", ev / "comparison.md", ev / "per_class.csv", ev / "plots"]


def corrections_used(params: Params) -> dict[str, int]:
    """How many reviewers' decisions the model was trained with (ingest applied them: its report.json)."""
    report = Path(params.paths.ingest) / "report.json"
    corr = read_json(report).get("corrections", {}) if report.is_file() else {}
    return {"label_corrections": int(corr.get("corrected_products", 0)),
            "label_corrected_levels": int(corr.get("corrected_levels", 0)),
            "label_confirmations": int(corr.get("confirmed_products", 0))}


def publish_result(params: Params, r: Result) -> str:
    """The run holding this result: found by its output md5, else logged now."""
    serves = r == served(params)
    sources = [r.model, r.metrics, *(evaluate_files(params) if serves else [])]
    missing = [str(p) for p in sources if not p.exists()]
    if missing:
        raise PublishError(f"{r.name}: {', '.join(missing)} not found; run `dvc repro` first")
    key = {PUBLISHED: r.name, OUTPUT_MD5: files_md5(*sources)}
    existing = mlflow_store.find_run(params, key)
    if existing:
        log.info("%s: already published as run %s", r.name, existing)
        return existing
    tags = {**key, "stage": r.name.split("/")[0], "data_md5": data_md5(), "git_commit": git_commit(),
            # A retrain run's own params over the tracked params.yaml (form, GPU profile); "{}" for none.
            "run_overrides": run_overrides_tag()}
    with mlflow_store.start_run(params, r.name, tags) as run:
        run.log_dataset("catalog", tags["data_md5"], str(Path(params.paths.raw).resolve()))
        run.log_params(corrections_used(params))
        if r.model.suffix == ".pt":
            meta = read_blob(r.model)["meta"]
            run.log_params({**meta["params"], "modalities": ",".join(meta["modalities"]), "seed": meta["seed"]})
            for row in meta["history"]:
                run.log_metrics(row, step=int(row["epoch"]))
        elif r.name == "stack":
            run.log_params({"stack": params_to_dict(params.stack), "experts": read_json(r.model)["md5"]})
        else:
            run.log_params({"tfidf": params_to_dict(params.train_baseline.tfidf)})
        run.log_metrics(read_json(r.metrics))
        if r.timings.is_file():
            run.log_metrics(read_json(r.timings))
            run.log_artifact(r.timings)
        run.log_artifact(r.model)
        if serves:
            evaluation = read_json(Path(params.paths.evaluate) / "metrics.json")
            test = {f"test.{k}": v for k, v in
                    mlflow_store.numeric(evaluation.get(evaluation.get("served_model", "fusion"), {})).items()}
            run.log_metrics(test)
            for p in evaluate_files(params):
                run.log_artifact(p, artifact_path="evaluate")
            df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
            with tempfile.TemporaryDirectory(prefix="deepfusion-publish-") as tmp:
                example = example_frame(df[df.split == "val"], Path(params.paths.raw), params.catalog)
                uri = log_categorizer(r.model, example, params.catalog, Path(tmp),
                                      towers_file(params.paths.train_retrieval))
            run.log_model_metrics(uri, test)
            mlflow_store.set_run_tag(MODEL_URI, uri)
        run_id = run.run_id
    log.info("%s: published as run %s", r.name, run_id)
    return run_id


def publish(params: Params) -> dict[str, str]:
    """Every trained model the pipeline has produced -> its MLflow run id."""
    # A model the pipeline did not train is skipped; the fusion model is required (publish_result says so).
    return {r.name: publish_result(params, r) for r in results(params)
            if r.model.exists() or r.name == "train_fusion"}


def served_model_uri(params: Params) -> tuple[str, str]:
    """(run id, logged model URI) of the published served model, publishing it first if needed."""
    run_id = publish_result(params, served(params))
    return run_id, mlflow_store.run_tag(params, run_id, MODEL_URI)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="deepfusion publish", description=__doc__.split("\n")[0])
    ap.parse_args(argv)  # before the params: --help works anywhere
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        for name, run_id in publish(load_params()).items():
            print(f"{name}: run {run_id}")
    except (PublishError, mlflow_store.RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
