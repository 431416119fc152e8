"""Stage stack: the trained experts + the validation split -> artifacts/stack/ (combiner.json, calibration.npy,
metrics.json).

Fits the combiner of the stacked categorizer (`models.combiner`, served by `serving.stacked`) on
predictions of products no expert trained on: the validation split, as given and as every degraded input
variant (cut title, no title, no image, no metadata). Its setting (L2 strength, class balance) and then its
set of experts (backward elimination) are chosen by group K-fold cross-validation inside that data (never
the test split), and the out-of-fold predictions of the choice give an honest validation score of the stack
next to each expert's. Combiners with one chosen expert left out, or one dropped expert put back, are
fitted too, for evaluate's ablation rows. On CPU the image towers run in int8 (`models.quantize`), calibrated
on train images written beside the combiner, so the combiner learns the experts exactly as they are served.

Bias, said plainly: the neural experts chose their stopping epoch on this validation split, so their
validation predictions are slightly better than on new products and the combiner may trust them a little
more than it should; the test split (evaluate) is the unbiased judge.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import metrics as M
from components.atomic_io import atomic_dir, write_json
from components.catalog import FINEST
from components.config import Params, StackParams, load_params
from components.data import cached_products
from components.encoders import Encoders, encode_labels
from components.experts import files as expert_files
from components.models.combiner import CONDITIONS, Combiner, StackInputs, path_index
from components.serving.stacked import CALIBRATION_FILE, COMBINER_FILE, FORMAT, Experts, file_md5
from components.training.crossfit import group_folds

log = logging.getLogger(__name__)


def taxonomy_paths(enc: Encoders) -> np.ndarray:
    """(P, levels) class ids of every label path of the training data."""
    index = [{c: i for i, c in enumerate(enc.labels[lvl])} for lvl in enc.levels]
    return np.array([[index[lvl][name] for lvl, name in enumerate(path)] for path in enc.taxonomy], dtype=np.int64)


def variant_inputs(experts: Experts, frame: pd.DataFrame, images, variants: tuple[str, ...], cut_words: int,
                   paths: np.ndarray) -> tuple[dict[str, StackInputs], dict[str, dict[str, list[np.ndarray]]]]:
    """Per input variant: the combiner's inputs and every expert's probabilities (an expert the variant leaves
    untouched is not run again once the full input is scored)."""
    inputs, probs = {}, {}
    for v in sorted(variants, key=lambda v: v != "full"):
        _, probs[v], inputs[v] = experts.on_variant(frame, images, v, cut_words, paths, experts.names,
                                                    full=probs.get("full"))
    return {v: inputs[v] for v in variants}, {v: probs[v] for v in variants}


def cross_validate(x: StackInputs, y: np.ndarray, folds: np.ndarray, make: Callable[[], Combiner]) -> np.ndarray:
    """Out-of-fold path probabilities of the combiner `make()` builds (each row from a fit without its fold)."""
    out = np.zeros((len(x), len(make().paths)), dtype=np.float32)
    for f in np.unique(folds):
        held, train = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
        out[held] = make().fit(x.subset(train), y[train]).path_probs(x.subset(held))
    return out


def _article_truth(y: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """Finest-level class id of each row's true path; -1 where its path is unknown (rows y < 0)."""
    return np.where(y >= 0, paths[np.maximum(y, 0), FINEST], -1)


def variant_scores(oof: np.ndarray, truth: np.ndarray, article: np.ndarray, variants: int) -> np.ndarray:
    """(variants,) out-of-fold finest-level macro-F1 of each input variant (rows are variant-major)."""
    pred, n = article[oof.argmax(1)], len(truth) // variants
    per_variant = []
    for j in range(variants):
        t, q = truth[j * n:(j + 1) * n], pred[j * n:(j + 1) * n]
        per_variant.append(M.classification(t[t >= 0], q[t >= 0])["macro_f1"])
    return np.asarray(per_variant)


def _variant_macro_f1(oof: np.ndarray, truth: np.ndarray, article: np.ndarray, variants: int) -> float:
    """Out-of-fold articleType macro-F1 averaged over the input variants (rows are variant-major)."""
    return float(variant_scores(oof, truth, article, variants).mean())


def fit_stack(x: StackInputs, y: np.ndarray, folds: np.ndarray, names: tuple[str, ...], paths: np.ndarray,
              p: StackParams) -> tuple[Combiner, dict[str, float], np.ndarray]:
    """The combiner setting (L2, class balance) of best out-of-fold finest-level macro-F1, averaged over the
    input variants (returned unfitted: the caller fits its chosen experts); the score per setting; its
    out-of-fold probs.
    """
    scores, oof = {}, {}
    article, truth = paths[:, FINEST], _article_truth(y, paths)
    for l2 in p.l2_grid:
        for balance in p.balance_grid:
            key = f"l2_{l2:g}_balance_{balance:g}"
            oof[key] = cross_validate(x, y, folds, functools.partial(Combiner, names, paths, l2=l2, fit_bias=True,
                                                                     balance=balance, group_weight=p.group_weight))
            scores[key] = _variant_macro_f1(oof[key], truth, article, len(p.variants))
            log.info("stack: %s -> out-of-fold finest-level macro-F1 %.4f (mean over input variants)", key, scores[key])
    best = max(scores, key=scores.get)
    l2, balance = float(best.split("_")[1]), float(best.split("_")[3])
    return (Combiner(names, paths, l2=l2, fit_bias=True, balance=balance, group_weight=p.group_weight), scores,
            oof[best])


def set_key(experts: tuple[str, ...]) -> str:
    """An expert set as a metrics key (MLflow metric names allow no "+")."""
    return "_".join(experts)


def expert_to_drop(without: dict[str, np.ndarray], current: np.ndarray) -> str | None:
    """The expert whose removal raises the mean of the per-variant scores most while lowering none of them
    (`without`: expert -> per-variant score of the pool without it; `current`: the pool's own); None if no
    removal does both."""
    allowed = {e: float(v.mean()) for e, v in without.items() if np.all(v >= current) and v.mean() > current.mean()}
    return max(allowed, key=allowed.get) if allowed else None


def select_experts(x: StackInputs, y: np.ndarray, folds: np.ndarray, start: Combiner, start_oof: np.ndarray,
                   variants: int) -> tuple[Combiner, np.ndarray, dict[str, float]]:
    """Backward elimination by cross-validation: while dropping one expert raises the out-of-fold score (the
    same criterion as the setting's) and lowers no input variant's own out-of-fold macro-F1, drop the one
    whose removal raises the score most. An expert that only repeats what the others know, or that the
    validation split rewards but new products do not, adds variance to the pool; whether it does is decided
    here, inside the validation split, never on test. The fusion network stays loaded for embeddings and
    search whether or not its votes are kept.

    Why every variant must hold: the mean over variants can rise by noise while one input loses the expert it
    needs. In a retrain on a new machine (2026-12-02) dropping the text tower raised the mean from 0.9261 to
    0.9263 while the no-metadata input fell from 0.952 to 0.940 (accuracy 97.2 -> 96.5 %), the one input
    where the text tower is the best single expert; we promise "at least as good on every input".

    Returns the chosen (unfitted) combiner, its out-of-fold probs and the score of every expert set tried.
    """
    article, truth = start.paths[:, FINEST], _article_truth(y, start.paths)
    names = start.experts
    current, oof = start, start_oof
    per_variant = variant_scores(oof, truth, article, variants)
    score = float(per_variant.mean())
    tried = {set_key(names): score}
    while len(current.experts) > 1:
        trials = {}  # expert dropped -> (combiner without it, its out-of-fold probs, its score, per variant)
        for e in current.experts:
            cand = current.without(e)
            cols = [names.index(k) for k in cand.experts]
            cand_oof = cross_validate(x.columns(cols), y, folds, functools.partial(cand.over, cand.experts))
            cand_variants = variant_scores(cand_oof, truth, article, variants)
            trials[e] = (cand, cand_oof, float(cand_variants.mean()), cand_variants)
            tried[set_key(cand.experts)] = trials[e][2]
            log.info("stack: without %s -> out-of-fold macro-F1 %.4f (change per variant %s)", e, trials[e][2],
                     " ".join(f"{d:+.4f}" for d in cand_variants - per_variant))
        drop = expert_to_drop({e: t[3] for e, t in trials.items()}, per_variant)
        if drop is None:
            break
        current, oof, score, per_variant = trials[drop]
    return current, oof, tried


def article_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    res = M.classification(y, pred)
    return {"accuracy": round(res["accuracy"], 4), "macro_f1": round(res["macro_f1"], 4)}


def calibration_images(ingest_dir: str | Path, split: np.ndarray, has_image: np.ndarray, n: int, seed: int
                       ) -> np.ndarray | None:
    """A seeded sample of `n` train products' images (uint8, N x H x W x 3) for the int8 image towers; None
    when `n` is 0 (fp32 towers). Products without an image are left out: their zeros set no useful range."""
    if n <= 0:
        return None
    pool = np.flatnonzero((split == "train") & has_image)
    if not len(pool):
        raise ValueError("stack.int8_calibration: the train split has no product with an image to calibrate the "
                         "int8 image towers on; set stack.int8_calibration: 0")
    idx = np.sort(np.random.default_rng(seed).choice(pool, min(n, len(pool)), replace=False))
    return np.ascontiguousarray(cached_products(ingest_dir, idx)[1].pixels)


def run(params: Params) -> dict:
    p = params.stack
    torch.manual_seed(params.seed)
    files = {e: f for e, f in expert_files(params.paths).items() if e in p.experts and f.is_file()}
    for e in p.experts:
        if e not in files:
            log.warning("stack: no %s expert at %s; the stack goes without it", e, expert_files(params.paths)[e])
    table = pd.read_parquet(Path(params.paths.ingest) / "products.parquet", columns=["split", "has_image"])
    split = table["split"].to_numpy()
    calibration = calibration_images(params.paths.ingest, split, table["has_image"].to_numpy(bool),
                                     p.int8_calibration, params.seed)
    # int8 kernels are CPU-only: with int8 on, the experts run here on CPU (also on a GPU worker), as served.
    experts = Experts.load(files, device="auto" if calibration is None else "cpu", calibration=calibration)
    enc = experts.encoders
    frame, images = cached_products(params.paths.ingest, np.flatnonzero(split == "val"))
    paths = taxonomy_paths(enc)
    labels = encode_labels(frame, enc)
    y1 = path_index(labels, paths)
    inputs, probs = variant_inputs(experts, frame, images, p.variants, p.cut_title_words, paths)
    k = len(p.variants)
    groups = frame["group"].to_numpy()
    x = StackInputs.concat([inputs[v] for v in p.variants])
    x.group = np.tile(groups, k)  # the combiner weighs near-duplicate listings as one (stack.group_weight)
    y = np.tile(y1, k)
    # A product's variants share its fold: no variant of a held-out product helps fit its own prediction.
    folds = np.tile(group_folds(groups, p.folds, params.seed), k)
    start, cv, oof = fit_stack(x, y, folds, experts.names, paths, p)
    combiner, tried = start, {}
    if p.select_experts:
        combiner, oof, tried = select_experts(x, y, folds, start, oof, k)
    chosen = [experts.names.index(e) for e in combiner.experts]
    combiner.fit(x.columns(chosen), y)
    # Evaluate's ablation rows: each chosen expert left out ("-e") and each dropped one put back ("+e").
    ablations = {}
    for e in experts.names:
        sign, over = ("-", tuple(c for c in combiner.experts if c != e)) if e in combiner.experts else \
            ("+", tuple(c for c in experts.names if c in combiner.experts or c == e))
        if over:
            ablations[sign + e] = combiner.over(over).fit(x.columns([experts.names.index(c) for c in over]),
                                                          y).to_dict()

    n = len(frame)
    per_variant = {}
    for j, v in enumerate(p.variants):
        stacked = paths[oof[j * n:(j + 1) * n].argmax(1), FINEST]
        per_variant[v] = {"stacked_out_of_fold": article_scores(labels[:, FINEST], stacked),
                          **{e: article_scores(labels[:, FINEST], probs[v][e][FINEST].argmax(1))
                             for e in experts.names}}
    conds = np.eye(len(CONDITIONS), dtype=np.float32)
    conds[:, 0] = 1.0  # the bias alone, then the bias plus each poor-input condition
    weights = combiner.weights(conds)  # (C, E, L)
    metrics = {"val_products": n, "rows": len(x), "int8_experts": list(experts.int8), "l2": combiner.l2,
               "balance": combiner.balance, "group_weight": combiner.group_weight,
               "cv_macro_f1": cv, "experts": list(combiner.experts), "expert_sets_cv_macro_f1": tried,
               "unknown_paths": int((y1 < 0).sum()), f"val_{enc.levels[FINEST]}": per_variant,
               "article_weight_by_condition": {c: {e: round(float(weights[ci, ei, FINEST]), 3)
                                                   for ei, e in enumerate(combiner.experts)}
                                               for ci, c in enumerate(CONDITIONS)}}
    spec = {"format": FORMAT, "combiner": combiner.to_dict(), "ablations": ablations,
            "files": {e: str(f) for e, f in files.items()}, "md5": {e: file_md5(f) for e, f in files.items()},
            "variants": list(p.variants), "cut_title_words": p.cut_title_words}
    with atomic_dir(params.paths.stack) as tmp:
        # Written also when int8 is off (no images, no "int8" entry): dvc.yaml declares the file.
        np.save(tmp / CALIBRATION_FILE, calibration if experts.int8 else np.zeros((0, 0, 0, 3), np.uint8),
                allow_pickle=False)
        if experts.int8:
            spec["int8"] = {"calibration": CALIBRATION_FILE, "md5": file_md5(tmp / CALIBRATION_FILE),
                            "images": len(calibration), "experts": list(experts.int8)}
        write_json(tmp / COMBINER_FILE, spec)
        write_json(tmp / "metrics.json", metrics)
    log.info("stack: experts %s, l2 %g; validation (out-of-fold) %s", ", ".join(combiner.experts), combiner.l2,
             {v: r["stacked_out_of_fold"] for v, r in per_variant.items()})
    return metrics


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(load_params())


if __name__ == "__main__":
    main()
