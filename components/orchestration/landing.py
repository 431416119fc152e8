"""New catalog batches in the landing area: validate, drift-report and categorize them (Airflow task bodies).

No Airflow imports: each function is idempotent and writes atomically. Every function takes the project
folder `home` and runs there, because params.yaml paths are relative.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import io
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic_io import atomic_dir, atomic_write_bytes, csv_bytes, read_json, write_json
from components.config import Params, load_params
from components.lifecycle.provenance import files_md5
from components.orchestration import batch_state

log = logging.getLogger(__name__)

# A batch is picked up once it holds READY (written last by the uploader: a half-copied folder is never read).
# Its life (validated, reported, categorized or failed, keyed on the md5 of its files) is kept by batch_state;
# <landing>/_failed/<batch>/ keeps a rejected batch with the reason, <landing>/_done/<batch>/ a categorized one.
READY = batch_state.READY
FAILED = "_failed"
# OSErrors that say something about the worker (space, memory, descriptors, the disk) rather than the batch.
TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EAGAIN}
BATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # one path component, never "." or ".."
# Batches one task handles (validation and drift report; scoring; merging). A task's start, the champion's load and
# its reference data cost more than a small upload's own work (the load drill: 100 uploads of 40 products took
# ~50 s a report, a few of them the report itself); groups of a few keep every worker busy on a burst of uploads.
# A constant, not a param: the typed config is a dependency of every pipeline stage.
BATCHES_PER_TASK = 8


class BatchRejected(RuntimeError):
    """A new catalog batch failed validation; it was moved to <landing>/_failed/ with its report."""


def _ready_folders(landing: Path) -> list[Path]:
    landing = Path(landing)
    if not landing.is_dir():
        return []
    out = []
    for p in sorted(landing.iterdir()):
        if p.is_symlink() or not p.is_dir() or p.name.startswith(("_", ".")):
            continue
        if not (p / READY).is_file():
            log.info("landing: %s has no %s marker yet (still uploading?): left for a later run", p.name, READY)
            continue
        out.append(p)
    return out


def pending_batches(landing: Path) -> list[dict]:
    """Ready batches whose content still needs validating and a drift report: [{"batch", "content_md5"}], the
    md5 taken here, before anything reads the files (a re-upload during the run is then processed again, never
    recorded as done). A batch already reported waits for categorize; content already categorized (the same
    files uploaded again) is archived without work."""
    out = []
    for p in _ready_folders(landing):
        md5 = files_md5(p)
        where = batch_state.status(landing, p.name, md5)
        if where == "reported":
            continue
        if where == "categorized":
            log.info("landing: %s holds content already categorized: archived again", p.name)
            batch_state.archive(landing, p.name)
            continue
        out.append({"batch": str(p), "content_md5": md5})
    return out


def in_groups(items: list, size: int = BATCHES_PER_TASK) -> list[list]:
    """Consecutive groups of at most `size` items, one task each."""
    return [items[k:k + size] for k in range(0, len(items), size)]


def awaiting_categorize(landing: Path) -> list[str]:
    """Names of reported batches still in the landing area: their categorize run failed or has not happened,
    so the drift DAG announces them again (categorize hashes the files itself before reading them)."""
    return [p.name for p in _ready_folders(landing)
            if (s := batch_state.read_state(landing, p.name)) is not None and s.state == "reported"]


def resolve_batch(landing: Path, name: str) -> Path:
    """A batch of the landing area by its folder name (what the categorize form and the asset events carry):
    one plain folder directly in the area (or archived in its _done/), so no name can reach a folder elsewhere."""
    from components.catalog import CatalogError

    if not isinstance(name, str) or not BATCH_NAME.fullmatch(name) or ".." in name:
        raise CatalogError(f"{name!r}: not a batch name; give the name of a folder in the landing area "
                           "(letters, digits, '.', '_', '-'; no path)")
    for path in (Path(landing) / name, Path(landing) / batch_state.DONE / name):  # new, else categorized before
        if path.is_dir() and not path.is_symlink():
            return path
    raise CatalogError(f"{name}: no such batch folder in the landing area {landing}")


def reject(batch_path: Path, failures: list[str]) -> Path:
    """Move a batch to <landing>/_failed/ with its report (a previous rejection of that name is replaced)."""
    dest = batch_path.parent / FAILED / batch_path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.move(str(batch_path), dest)
    write_json(dest / "validation_report.json", {"success": False, "failures": failures})
    return dest


def check_batch(home: Path, batch: str, content_md5: str | None = None) -> dict:
    """Validate a new batch with the row-level GX suite; `content_md5` is its files' md5 taken before reading
    (by pending_batches). A batch that fails, or that cannot be read at all for any reason, moves to _failed/
    with the reason (state `failed`): it never blocks the landing area."""
    from components.catalog import CatalogError, check_upload, read_catalog
    from components.pipeline.validate import validate_batch

    batch_path = Path(batch)
    landing = batch_path.parent
    content_md5 = content_md5 or files_md5(batch_path)
    with contextlib.chdir(home):
        params = load_params()
        try:
            check_upload(batch_path, params.landing.max_batch_mb * 2**20, params.landing.max_batch_rows,
                         params.catalog.files[0])
            frame = read_catalog(batch_path, params.catalog, require_labels=False).frame
            root = batch_path.resolve()
            # Only files inside the batch count (a `../` path would otherwise reveal files of the machine).
            frame["has_image"] = [(path := (root / str(p)).resolve()).is_relative_to(root) and path.is_file()
                                  for p in frame["image"].fillna("")]
            results = validate_batch(frame, params.catalog, labeled=False,
                                     max_missing_image_share=params.validate.max_missing_image_share)
            failures = [f for r in results for f in r.failures]
        except CatalogError as exc:
            failures = [str(exc)]
        except MemoryError:
            raise  # the worker's trouble, not the batch's: the task fails and retries, the batch stays
        except OSError as exc:
            if exc.errno in TRANSIENT_ERRNOS:
                raise  # disk full, I/O error, too many open files: retried, never a rejected batch
            log.exception("landing: %s could not be read", batch_path.name)
            failures = [f"unreadable batch ({type(exc).__name__}: {errno.errorcode.get(exc.errno, exc.errno)}); "
                        "the worker's log has the details"]
        except Exception as exc:  # noqa: BLE001 (whatever the file does to a reader, the batch gets a verdict)
            log.exception("landing: %s could not be validated", batch_path.name)
            # The exception's text may quote the file: the report (which the uploader reads) names only its kind.
            failures = [f"unreadable batch ({type(exc).__name__}); the worker's log has the details"]
    if failures:
        dest = reject(batch_path, failures)
        batch_state.advance(landing, batch_path.name, "failed", content_md5, reason="; ".join(failures)[:2000])
        raise BatchRejected(f"{batch_path.name}: {len(failures)} validation failure(s), batch moved to {dest}:\n  - "
                            + "\n  - ".join(failures))
    batch_state.advance(landing, batch_path.name, "validated", content_md5)
    return {"batch": batch, "content_md5": content_md5}


def model_loader(model: str) -> Callable:
    """`model` loaded on the first call, the same object on every next one (the batches or shards of one task)."""
    from components.serving.predict import load_categorizer

    return functools.cache(functools.partial(load_categorizer, model))


def report_group(home: Path, group: list[dict], model: str) -> list[dict]:
    """Validate, then drift-report, each batch of a group (pending_batches' dicts) with `model` loaded once.
    Every batch gets a result and none holds back another: a rejected batch (moved to _failed/) and a failure of
    any kind (the batch stays as it was, for the next run) come back as `error`."""
    categorizer = model_loader(model)  # loaded once a batch passed validation
    results = []
    for item in group:
        batch = item["batch"]
        try:
            check_batch(home, batch, item["content_md5"])
        except BatchRejected as exc:
            results.append({"batch": batch, "drift_detected": False, "rejected": True, "error": str(exc)[:2000]})
            continue
        except Exception as exc:  # noqa: BLE001 (disk full, memory: the batch is left for the next run)
            log.exception("landing: %s could not be validated on this worker", batch)
            results.append({"batch": batch, "drift_detected": False,
                            "error": f"not validated ({type(exc).__name__}: {str(exc)[:500]}); left for the next run"})
            continue
        results.append(drift_batch(home, batch, item["content_md5"], model, categorizer))
    return results


def serving_model(home: Path) -> str:
    """models:/<name>/<version> of @champion, resolved now, once per DAG run (every mapped task then scores
    with the same version even if a promotion moves the alias meanwhile); else the current pipeline
    result's fusion checkpoint."""
    from components import mlflow_store
    from components.orchestration.run_workspace import current

    home = current(home)
    with contextlib.chdir(home):
        params = load_params()
        c = mlflow_store.client(params)
        version = mlflow_store.alias_version(c, params.registry.model_name, "champion")
        if version:
            return mlflow_store.model_uri(params.registry.model_name, version)
        from components.checkpoint import fusion_checkpoint

        return str(Path(home) / fusion_checkpoint(params.paths.train_fusion))


def drift_batch(home: Path, batch: str, content_md5: str, model: str, categorizer: Callable | None = None) -> dict:
    """Drift report for one validated batch, logged to MLflow; the batch is then `reported` (not done: that
    waits for its predictions). A failure is returned (`error`), not raised: the batch stays `validated` for
    the next run and the other batches go on. `categorizer`: returns `model` loaded (shared by a group)."""
    try:
        return _drift_batch(home, batch, content_md5, model, categorizer)
    except Exception as exc:  # noqa: BLE001 (reported by the DAG's check_failures task, which fails the run)
        log.exception("landing: drift report of %s failed", batch)
        return {"batch": batch, "drift_detected": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}


def reference_data(home: Path, params: Params, model: str) -> Path:
    """The folder of the training data a batch is compared with: the current pipeline result's on this machine
    (the latest retrain run's workspace, else the project's), else, on a worker that shares no disk with the run
    that trained `model`, that version's own data pulled from the DVC remote `artifacts` by the md5s the registry
    recorded (REFERENCE_TAG)."""
    from components import mlflow_store
    from components.lifecycle.registry import REFERENCE_FILES, REFERENCE_TAG
    from components.orchestration.run_workspace import current, fetch_outputs

    local = current(home) / params.paths.ingest
    if all((local / f).is_file() for f in REFERENCE_FILES):
        return local
    outs = json.loads(mlflow_store.registered_tags(params, model).get(REFERENCE_TAG) or "{}") \
        if model.startswith("models:/") else {}
    if sorted(Path(p).name for p in outs) != sorted(REFERENCE_FILES):
        raise FileNotFoundError(f"{local}: no training data to compare the batch with on this worker, and {model} "
                                f"does not record where its own is ({REFERENCE_TAG}); register it again from its run "
                                "(retrain with mode register_only) or run the drift report where it was trained")
    return fetch_outputs(home, outs)


def _drift_batch(home: Path, batch: str, content_md5: str, model: str, categorizer: Callable | None = None) -> dict:
    from components import mlflow_store
    from components.monitoring import drift, workspace

    batch_path = Path(batch)
    with contextlib.chdir(home):
        params = load_params()
        ingest = reference_data(home, params, model)
        params = dataclasses.replace(params, paths=dataclasses.replace(params.paths, ingest=str(ingest)))
        out = Path(params.paths.drift) / batch_path.name
        summary = drift.run(params, batch_path, out, model, (categorizer or model_loader(model))())
        mlflow_store.log_report(params, f"drift/{batch_path.name}", out,
                                {"drift_detected": float(summary["drift_detected"]),
                                 "drifted_signals": float(len(summary["drifted"])),
                                 **{f"signal_{s['signal']}": s["value"] for s in summary["signals"]}})
        # The dashboard point first (its failure is only logged): once a batch reads `reported`, it is on the
        # dashboard (the platform test saw the state before the point once).
        _on_dashboard(params, workspace.DRIFT_TAG, batch_path.name, workspace.drift_values(summary),
                      str(Path(home) / out))
        batch_state.advance(batch_path.parent, batch_path.name, "reported", content_md5,
                            drift_detected=bool(summary["drift_detected"]), report=str(Path(home) / out))
    return {"batch": batch, "drift_detected": summary["drift_detected"], "reasons": summary["reasons"]}


def review_queue(pred: pd.DataFrame, labels: pd.DataFrame, threshold: float, finest: str) -> pd.DataFrame:
    """The rows a merchandiser should look at, each with its `review_reason`.

    - `unreadable`: the row was rejected or its image is corrupt (a prediction without its image);
    - `low_confidence`: the model is below the confidence that reached the auto-accept precision;
    - `suspected_mislabel`: the batch came labelled and the model, at least that confident, files the
      product elsewhere (`current_<finest level>` vs the suggested finest level).
    """
    df = pred.merge(labels.rename(columns={finest: f"current_{finest}"}), on="id", how="left")
    conf = df[f"{finest}_confidence"].fillna(0)
    current = df[f"current_{finest}"].fillna("").astype(str).str.strip()
    unreadable = (df["status"] != "ok") & (df["status"] != "no_image")
    low = ~unreadable & (conf < threshold)
    mislabel = ~unreadable & ~low & (current != "") & (current != df[finest])
    df["review_reason"] = np.select([unreadable, mislabel, low], ["unreadable", "suspected_mislabel", "low_confidence"],
                                    "")
    return df[df["review_reason"] != ""].reset_index(drop=True)


def _already_done(landing: Path, batch_path: Path, content_md5: str, model: str, out: Path) -> bool:
    done = batch_state.read_state(landing, batch_path.name)
    return bool(done and done.state == "categorized" and done.content_md5 == content_md5 and done.model == model
                and (out / "model.json").is_file())


def categorize_batch(home: Path, landing: Path, name: str, model: str) -> dict:
    """Predictions for a landing batch (by name) plus the review queue (uncertain predictions and, for a
    labelled batch, the products the model confidently files elsewhere), in one folder swapped in whole,
    with the model that made them. Then, and only then, the batch is `categorized` and moves to _done/.
    Content already categorized by this model is not scored twice (an event announced twice).
    One process; the categorize DAG splits a large batch into shards instead (shard_plan, score_shard, merge_shards)."""
    from components.catalog import check_upload, read_catalog
    from components.serving.predict import categorize, load_categorizer

    batch_path = resolve_batch(landing, name)
    content_md5 = files_md5(batch_path)  # before reading: the state records what was really scored
    with contextlib.chdir(home):
        params = load_params()
        out = Path(params.paths.categorize) / batch_path.name
        if _already_done(landing, batch_path, content_md5, model, out):
            log.info("landing: %s was already categorized by %s: nothing to do", name, model)
            _archive_if_new(landing, batch_path)
            return {"batch": str(batch_path), "already_categorized": True, "output": str(Path(home) / out)}
        check_upload(batch_path, params.landing.max_batch_mb * 2**20, params.landing.max_batch_rows,
                     params.catalog.files[0])
        read = read_catalog(batch_path, params.catalog, require_labels=False)  # once: predictions and labels
        pred, _ = categorize(batch_path, load_categorizer(model), progress=False, read=read)
    return _finish(home, landing, batch_path, content_md5, model, pred, read.frame)


# ---- a large batch in shards: any worker scores one; the landing area (the one area every worker shares) holds
# the parts until the batch's merge puts them together ----

SHARDS = "_shards"  # <landing>/_shards/<batch>/<content md5>/part-<k>-of-<n>.parquet


def _shard_dir(landing: Path, name: str, content_md5: str) -> Path:
    return Path(landing) / SHARDS / name / content_md5


def _part(k: int, n: int) -> str:
    return f"part-{k:05d}-of-{n:05d}.parquet"


def shard_plan(home: Path, landing: Path, names: list[str], model: str) -> list[list[dict]]:
    """The shards to score, over every batch of the run, in tasks: [[{"batch", "content_md5", "shard", "of",
    "rows"}, ...], ...]. A batch of more than `landing.shard_rows` accepted products is cut in ceil(rows / shard_rows)
    shards, any other is one; shards are packed into tasks of at most `shard_rows` products and BATCHES_PER_TASK
    shards (a burst of small uploads is a few tasks, not one per upload). A batch already categorized by this model
    gets none (its merge only archives it); a batch over the upload limits or unreadable gets none either, and its
    merge fails with the reason (the other batches go on)."""
    from components.catalog import CatalogError, check_upload, read_catalog

    plan = []
    with contextlib.chdir(home):
        params = load_params()
        for name in names:
            try:  # one bad batch holds back no other: its merge raises the same error for it
                batch_path = resolve_batch(landing, name)
                content_md5 = files_md5(batch_path)
                if _already_done(landing, batch_path, content_md5, model, Path(params.paths.categorize) / name):
                    continue
                check_upload(batch_path, params.landing.max_batch_mb * 2**20, params.landing.max_batch_rows,
                             params.catalog.files[0])
                rows = len(read_catalog(batch_path, params.catalog, require_labels=False).frame)
            except CatalogError as exc:
                log.error("landing: %s is not scored: %s", name, exc)
                continue
            n = max(1, -(-rows // params.landing.shard_rows))
            sizes = [len(r) for r in np.array_split(np.arange(rows), n)]  # as score_shard cuts them
            plan += [{"batch": name, "content_md5": content_md5, "shard": k, "of": n, "rows": sizes[k]}
                     for k in range(n)]
            log.info("landing: %s, %d product(s): %d shard(s)", name, rows, n)
    return pack(plan, params.landing.shard_rows)


def pack(shards: list[dict], max_rows: int, max_shards: int = BATCHES_PER_TASK) -> list[list[dict]]:
    """Consecutive shards into tasks of at most `max_rows` products and `max_shards` shards (a shard larger than
    `max_rows` alone)."""
    tasks: list[list[dict]] = []
    rows = 0
    for shard in shards:
        if not tasks or len(tasks[-1]) >= max_shards or rows + shard["rows"] > max_rows:
            tasks.append([])
            rows = 0
        tasks[-1].append(shard)
        rows += shard["rows"]
    return tasks


def score_shards(home: Path, landing: Path, specs: list[dict], model: str) -> list[dict]:
    """Score one task's shards (shard_plan) with `model` loaded once."""
    categorizer = model_loader(model)
    return [score_shard(home, landing, spec, model, categorizer) for spec in specs]


def score_shard(home: Path, landing: Path, spec: dict, model: str, categorizer: Callable | None = None) -> dict:
    """Score one shard (the k-th of n equal runs of the batch's accepted rows) and write it, atomically, into the
    batch's shard folder. A batch changed since the plan: nothing is written, its merge leaves it for the next run.
    `categorizer`: returns `model` loaded (shared by the shards of a task)."""
    from components.catalog import CatalogRead, read_catalog
    from components.serving.predict import categorize

    name, k, n = spec["batch"], int(spec["shard"]), int(spec["of"])
    batch_path = resolve_batch(landing, name)
    if files_md5(batch_path) != spec["content_md5"]:
        log.warning("landing: %s changed since the run planned its shards: not scored", name)
        return {"batch": name, "shard": k, "changed": True}
    # Scored even when a part is there already (a retry): the landing area is writable by uploaders, so a file
    # found there is never taken for ours.
    target = _shard_dir(landing, name, spec["content_md5"]) / _part(k, n)
    with contextlib.chdir(home):
        params = load_params()
        read = read_catalog(batch_path, params.catalog, require_labels=False)
        rows = np.array_split(np.arange(len(read.frame)), n)[k]
        # No rejected rows in a part (their ids may be text beside numeric ids): the merge adds them, once.
        part = CatalogRead(frame=read.frame.iloc[rows].reset_index(drop=True), main_file=read.main_file)
        pred, _ = categorize(batch_path, (categorizer or model_loader(model))(), progress=False, read=part)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = pred.to_parquet(index=False)
    atomic_write_bytes(target, data)
    # The merge checks the part against this digest (the task's XCom, which no uploader can write).
    return {"batch": name, "shard": k, "rows": len(pred), "sha256": hashlib.sha256(data).hexdigest()}


def merge_shards(home: Path, landing: Path, name: str, model: str, scored: list[dict]) -> dict:
    """Put a batch's scored shards together, in order, and finish it as categorize_batch does (predictions and
    review queue swapped in whole, state, archive); then its shard folder goes. `scored`: what the shard tasks
    returned (any batch's); a part whose bytes are not what its task wrote (the landing area is writable by
    uploaders) fails the merge like a missing one, with what to do, and the batch stays where it is: nothing
    half-merged is ever written."""
    batch_path = resolve_batch(landing, name)
    content_md5 = files_md5(batch_path)
    with contextlib.chdir(home):
        params = load_params()
        out = Path(params.paths.categorize) / batch_path.name
        if _already_done(landing, batch_path, content_md5, model, out):
            _archive_if_new(landing, batch_path)
            return {"batch": str(batch_path), "already_categorized": True, "output": str(Path(home) / out)}
        from components.catalog import check_upload

        check_upload(batch_path, params.landing.max_batch_mb * 2**20, params.landing.max_batch_rows,
                     params.catalog.files[0])  # a batch the plan refused: its own error, not "shards missing"
    folder = _shard_dir(landing, name, content_md5)
    parts = sorted(folder.glob("part-*-of-*.parquet")) if folder.is_dir() else []
    n = int(parts[0].stem.rsplit("-", 1)[1]) if parts else 0
    if not parts or [p.name for p in parts] != [_part(k, n) for k in range(n)]:
        have = ", ".join(p.name for p in parts) or "none"
        raise RuntimeError(f"{name}: its shards are not all scored (have: {have}); the batch stays in the landing "
                           "area: trigger categorize for it again (a batch changed during the run is scored then)")
    from components.catalog import read_catalog
    from components.serving.predict import with_rejected

    with contextlib.chdir(home):
        read = read_catalog(batch_path, params.catalog, require_labels=False)
    digests = {int(r["shard"]): r.get("sha256") for r in scored if r.get("batch") == name}
    blobs = [p.read_bytes() for p in parts]
    forged = [p.name for k, (p, b) in enumerate(zip(parts, blobs)) if hashlib.sha256(b).hexdigest() != digests.get(k)]
    if forged:
        raise RuntimeError(f"{name}: {', '.join(forged)} in {folder} not as its shard task wrote it (changed in the "
                           "landing area, or from another run); the batch stays in the landing area: trigger "
                           "categorize for it again")
    pred = with_rejected(pd.concat([pd.read_parquet(io.BytesIO(b)) for b in blobs], ignore_index=True), read)
    result = _finish(home, landing, batch_path, content_md5, model, pred, read.frame)
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # the batch's folder under _shards/, once no content of it is left
        folder.parent.rmdir()
    return {**result, "shards": n}


def merge_group(home: Path, landing: Path, names: list[str], model: str, scored: list[dict]) -> list[dict]:
    """merge_shards for each batch of a group; one batch's failure holds back no other, and the task fails
    afterwards naming every batch that failed (its retry merges those again; the others are done and skipped)."""
    results, failures = [], []
    for name in names:
        try:
            results.append(merge_shards(home, landing, name, model, scored))
        except Exception as exc:  # noqa: BLE001 (raised below, after the other batches of the group)
            log.exception("landing: %s not merged", name)
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(names)} batch(es) not categorized:\n  - "
                           + "\n  - ".join(failures))
    return results


def _finish(home: Path, landing: Path, batch_path: Path, content_md5: str, model: str, pred: pd.DataFrame,
            frame: pd.DataFrame) -> dict:
    """Predictions -> review queue, output folder, state `categorized`, archive, dashboard, review station."""
    from components.monitoring import workspace

    with contextlib.chdir(home):
        params = load_params()
        out = Path(params.paths.categorize) / batch_path.name
        threshold = review_threshold(params, model)
        # The levels are the model's: its predictions carry one <level>_confidence column per level.
        levels = [c.removesuffix("_confidence") for c in pred.columns if c.endswith("_confidence")]
        finest = levels[-1]
        review = review_queue(pred, frame.reindex(columns=["id", finest]), threshold, finest)
        try:
            with atomic_dir(out) as tmp:
                (tmp / "predictions.csv").write_bytes(csv_bytes(pred))
                (tmp / "review_queue.csv").write_bytes(csv_bytes(review))
                (tmp / "model.json").write_text(json.dumps({"model": model, "auto_accept_threshold": threshold,
                                                            "content_md5": content_md5}) + "\n")
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            # Still an OSError (the task retries, perhaps on another worker), now saying where and what to do.
            raise OSError(exc.errno, f"no space left on this worker's disk for {Path(home) / out}: free space there; "
                          "the task retries, and a batch still not categorized is announced again by every "
                          "catalog_drift run until its predictions exist") from exc
    batch_state.advance(landing, batch_path.name, "categorized", content_md5, predictions=str(Path(home) / out),
                        model=model)
    batch = str(_archive_if_new(landing, batch_path))
    counts = review["review_reason"].value_counts().to_dict()
    result = {"batch": batch, "products": len(pred), "to_review": len(review), "threshold": threshold,
              "review_reasons": counts, "output": str(Path(home) / out)}
    with contextlib.chdir(home):
        _on_dashboard(params, workspace.CATEGORIZE_TAG, batch_path.name, workspace.categorize_values(result),
                      result["output"])
        _to_review(params, review, frame, levels, batch_path.name, Path(batch), result["output"])
    return result


def _to_review(params: Params, review: pd.DataFrame, frame: pd.DataFrame, levels: list[str], name: str,
               batch: Path, output: str) -> None:
    """The batch's review queue into the review station (least confident first). Like the dashboard point, a
    failure loses nothing: review_queue.csv is written, and `deepfusion review import categorize` queues it."""
    from components.review import queues
    from components.review.store import open_store

    try:
        added, _ = open_store(params).enqueue(queues.categorize_items(review, levels, name, batch.resolve(), frame))
        log.info("landing: %d product(s) of %s queued for review", added, name)
    except Exception:  # noqa: BLE001 (the predictions and the queue file are safe on disk)
        log.exception("landing: %s's review queue is not in the review station; queue it with `deepfusion review "
                      "import categorize %s --batch %s`", name, output, batch)


def _on_dashboard(params: Params, tag: str, batch: str, values: dict[str, float], source: str) -> None:
    """One snapshot on the monitoring dashboard. A failure here loses no result (the report or predictions are
    written and the batch's state recorded), so it is logged with the way to add the point later."""
    from components.monitoring import workspace

    try:
        workspace.record(params.paths.monitoring, params.registry.model_name, values, tag=tag, batch=batch,
                         extra={"source": source})
    except Exception:  # noqa: BLE001 (the dashboard is a view of results that are safe on disk)
        log.exception("landing: the %s point of %s is not on the monitoring dashboard (its results are in %s%s)",
                      tag, batch, source, "; add it with `deepfusion monitor add` on that folder" if tag == "drift"
                      else "")


def _archive_if_new(landing: Path, batch_path: Path) -> Path:
    """A categorized batch still in the landing area moves to _done/ (unless its content changed meanwhile:
    a re-upload during the run stays, to be processed as the new content it is)."""
    if batch_path.parent != Path(landing):
        return batch_path  # already archived
    if batch_state.status(landing, batch_path.name, files_md5(batch_path)) != "categorized":
        log.warning("landing: %s changed while it was categorized: left for the next run", batch_path.name)
        return batch_path
    return batch_state.archive(landing, batch_path.name)


def review_threshold(params: Params, model: str) -> float:
    """The auto-accept cut-off of the model that scores the batch: a registered version's own tag (set at
    registration from its evaluation), else the evaluation of the pipeline result the checkpoint comes from."""
    from components.lifecycle.registry import REVIEW_PRECISION, auto_accept_threshold

    if model.startswith("models:/"):
        from components import mlflow_store

        tagged = mlflow_store.registered_tags(params, model).get("auto_accept_threshold")
        if tagged:
            return float(tagged)
        log.warning("landing: %s has no auto_accept_threshold tag (registered before it existed); using the "
                    "project's evaluation", model)
    metrics = Path(params.paths.evaluate) / "metrics.json"
    return auto_accept_threshold(read_json(metrics)) if metrics.is_file() else REVIEW_PRECISION
