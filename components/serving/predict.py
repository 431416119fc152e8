"""Batch categorization of new products.

    python -m components.predict CATALOG_DIR --output PRED.csv [--model PATH|models:/NAME@ALIAS]
                                            [--embeddings OUT.npz] [--workers N]

CATALOG_DIR is an export in the shape params.catalog declares (the model's own catalog schema when it carries one).
Category columns may be missing; labels present are never used as input. Bad rows are reported in the
output's `status`, never fatal; an unusable folder is a clear error (exit 2).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from components.atomic_io import atomic_write_bytes, csv_bytes
from components.catalog import CatalogError, CatalogRead, ids_array, read_catalog
from components.checkpoint import CheckpointError, fusion_checkpoint
from components.config import CatalogSchema, ConfigError
from components.serving.categorizer import Categorizer, load_images
from components.serving.stacked import COMBINER_FILE, StackedCategorizer, is_stack, stack_file

log = logging.getLogger(__name__)

CHUNK = 512  # products one worker decodes and predicts together


def default_model() -> str:
    """The stacked categorizer the pipeline produced (the fusion network before `stack` ran), located
    through params.yaml (paths are written once)."""
    from components.config import load_params  # raises ConfigError outside the project root

    paths = load_params().paths
    stack = Path(paths.stack) / COMBINER_FILE
    return str(stack if stack.is_file() else fusion_checkpoint(paths.train_fusion))


def refuse_overwriting_input(catalog_dir: Path, outputs: list[Path | None]) -> None:
    """An output may not replace a file of the catalog being read (styles.csv, an image...), even via a
    symlink: the input would be lost and a rerun would read our own predictions."""
    root = Path(catalog_dir).resolve()
    for out in filter(None, outputs):
        target = Path(out).resolve()
        if target == root or (target.is_relative_to(root) and target.exists()):
            raise CatalogError(f"{out}: is {'the catalog folder' if target == root else 'a file of the catalog'} "
                               f"{catalog_dir} being read; write the output elsewhere")


def load_categorizer(model: str) -> Categorizer:
    """A stack (combiner.json or its folder), a checkpoint path, or an MLflow model URI (models:/name@alias,
    runs:/…) of a logged categorizer."""
    if model.startswith(("models:/", "runs:/", "mlflow-artifacts:")):
        from components.serving.mlflow_model import load_categorizer_uri

        return load_categorizer_uri(model)
    if is_stack(model):
        return StackedCategorizer.load(stack_file(model))
    return Categorizer.from_checkpoint(model)


def can_fork() -> bool:
    """Whether chunks may run in forked worker processes: a platform with fork, and not a daemonic process
    (a Celery/multiprocessing pool worker may not have children)."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


_CHILD: dict[str, Callable] = {}  # a forked worker's job, inherited at fork (never pickled)


def _start_child(threads: int, job: Callable) -> None:
    torch.set_num_threads(threads)
    _CHILD["job"] = job


def _child_chunk(chunk: pd.DataFrame) -> object:
    return _CHILD["job"](chunk)


@contextmanager
def chunk_pool(device: torch.device, job: Callable, workers: int = 0, processes: bool = False
               ) -> Iterator[tuple[Executor, Callable]]:
    """The workers `categorize` runs chunks on, each decoding and predicting a whole chunk with `job`, and the
    callable to map over the chunks.

    CPU, `workers` 0 (default): one worker per torch thread, each running its kernels on one thread. A chunk's
    Python-bound steps (JPEG decoding, the TF-IDF expert's n-grams) then overlap another worker's
    convolutions, where one OpenMP team over every core stalls at each barrier while a decoding thread holds
    a core (`benchmark.py predict` prints both). Otherwise `workers` share torch's threads. Each worker sets
    its own count: OpenMP keeps it per OS thread, and a new thread would start a team of every core for
    oneDNN's convolutions. GPU: two workers (unless given), one decoding while the other's batch runs.

    `processes` (CPU, where `can_fork`): the workers are forked processes instead of threads. They inherit
    the loaded model (copy-on-write, nothing pickled but the chunks and their predictions) and each has its
    own interpreter, so one worker's Python-bound steps never hold up the other's kernels on the GIL:
    1.10-1.13x the products/s of threads on 2 cores (`benchmark.py predict`). The predict CLI uses them.
    """
    threads = torch.get_num_threads()
    workers = workers or (threads if device.type == "cpu" else 2)
    per_worker = max(1, threads // workers)
    if device.type != "cpu":
        pool, fn = ThreadPoolExecutor(max_workers=workers), job
    elif processes and can_fork() and workers > 1:
        pool, fn = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                                       initializer=_start_child, initargs=(per_worker, job)), _child_chunk
    else:
        pool, fn = ThreadPoolExecutor(max_workers=workers, initializer=torch.set_num_threads,
                                      initargs=(per_worker,)), job
    try:
        yield pool, fn
    finally:  # after a failed chunk the chunks not started are dropped, not predicted
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)  # a worker thread's setting is also torch's process-wide one


def catalog_schema(cat: Categorizer) -> CatalogSchema:
    """The shape of the exports `cat` reads: the schema it was logged with, else the project's params."""
    from components.config import load_params  # raises ConfigError outside the project root

    return getattr(cat, "schema", None) or load_params().catalog


def prediction_columns(levels) -> list[str]:
    return ["id", *[c for lvl in levels for c in (lvl, f"{lvl}_confidence")], "status"]


def with_rejected(pred: pd.DataFrame, read: CatalogRead) -> pd.DataFrame:
    """The predictions plus one row per product the reader rejected, its reason as the status: one row per input
    row. (The categorize DAG scores a large batch in shards and adds these once, when it merges them.)"""
    cols = list(pred.columns)
    rejected = pd.DataFrame([{"id": p["id"], "status": f"rejected: {p['reason']} (row {p['row']})"}
                             for p in read.problems if p["file"] == read.main_file and not p.get("kept")],
                            columns=["id", "status"])
    return pd.concat([pred, rejected], ignore_index=True)[cols]


def categorize(folder: Path, cat: Categorizer, embeddings: bool = False, progress: bool = True,
               read: CatalogRead | None = None, workers: int = 0, processes: bool = False,
               schema: CatalogSchema | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Predict every product of a catalog folder; rows the reader rejected keep their reason as status.

    `read`: the folder already read by the caller (else it is read here, in the shape `schema` declares;
    default: catalog_schema(cat)). `workers`: chunks worked on at once (`chunk_pool`; 0 = one per torch
    thread on CPU); `processes`: in forked worker processes.
    """
    schema = schema or (None if read else catalog_schema(cat))
    read = read or read_catalog(folder, schema, require_labels=False)
    frame = read.frame
    h, w = cat.image_size
    parts, embs = [], {"image": [], "text": []}
    bar = tqdm(total=len(frame), desc="categorize", unit="product", disable=not progress, mininterval=2)
    chunks = [frame.iloc[start : start + CHUNK] for start in range(0, len(frame), CHUNK)]

    def run(chunk: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        return cat.predict(chunk, load_images(list(chunk["image"]), h, w, folder), embeddings=embeddings)

    with chunk_pool(cat.device, run, workers, processes) as (pool, job):
        # Results come back in chunk order; only the running chunks' images are decoded at any time.
        for chunk, (pred, emb) in zip(chunks, pool.map(job, chunks)):
            parts.append(pred)
            if embeddings:
                for k in embs:
                    embs[k].append(emb.get(k, np.full((len(chunk), cat.model.cfg.embed_dim), np.nan, np.float32)))
            bar.update(len(chunk))
    bar.close()
    cols = prediction_columns(cat.levels)
    out = with_rejected(pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols), read)
    arrays = {}
    if embeddings:
        # The ids of every chunk, in the vectors' order (the loop's `pred` is the last chunk's alone).
        arrays = {"ids": ids_array(np.concatenate([part["id"].to_numpy() for part in parts]) if parts else []),
                  **{k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in embs.items()}}
    return out, arrays


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ap = argparse.ArgumentParser(prog="deepfusion predict", description=__doc__.split("\n")[0])
    ap.add_argument("catalog_dir", type=Path,
                    help="a batch folder in the export layout: styles.csv, optional products.csv and images/")
    ap.add_argument("--output", type=Path, required=True,
                    help="predictions CSV to write: id, each level with its confidence, status")
    ap.add_argument("--model", help="artifacts/stack, a checkpoint path or models:/NAME@ALIAS "
                                    "(default: the pipeline's stacked categorizer)")
    ap.add_argument("--embeddings", type=Path, help="also write the image/text embeddings to this .npz")
    ap.add_argument("--workers", type=int, default=0,
                    help="chunks predicted at once (default 0: on CPU one forked worker process per core torch uses, "
                         "single-threaded each)")
    args = ap.parse_args(argv)
    if args.workers < 0:
        ap.error(f"--workers {args.workers}: give 0 (one per core) or a positive number")
    try:
        refuse_overwriting_input(args.catalog_dir, [args.output, args.embeddings])
        cat = load_categorizer(args.model or default_model())
        t0 = time.perf_counter()
        out, arrays = categorize(args.catalog_dir, cat, embeddings=args.embeddings is not None,
                                 progress=True, workers=args.workers, processes=True)
        seconds = time.perf_counter() - t0
    except (CatalogError, CheckpointError, ConfigError) as exc:
        print(f"error: {exc} (or pass --model)" if isinstance(exc, ConfigError) else f"error: {exc}",
              file=sys.stderr)
        return 2
    except BrokenProcessPool as exc:  # killed (out of memory?) or crashed in native code; nothing was written
        print(f"error: a worker process died while predicting ({exc}); nothing was written. Rerun with "
              "--workers 1 (one worker, in this process) to see the failure, or with more memory", file=sys.stderr)
        return 1
    atomic_write_bytes(args.output, csv_bytes(out))
    if args.embeddings is not None:
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(args.embeddings, buf.getvalue())
    counts = out["status"].str.split(":").str[0].value_counts().to_dict()
    print(f"categorized {len(out)} products in {seconds:.1f} s ({len(out) / max(seconds, 1e-9):.0f} products/s, "
          f"image decoding included); status: {counts}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
