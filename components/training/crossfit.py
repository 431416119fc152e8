"""Out-of-fold predictions: every product scored by a model that never saw it (K folds by product group).

One machinery for the catalog audit (every curated product) and the stacked categorizer's combiner.
A product group (same image bytes, perceptual twin or normalised title) never spans two folds, so a
listing's duplicate cannot vouch for its label.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

# fit_predict(train_rows, score_rows) -> per level, class probabilities (len(score_rows), n_classes[level])
FitPredict = Callable[[np.ndarray, np.ndarray], list[np.ndarray]]


def group_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold id (0..k-1) per row; all rows of a group share a fold; folds balanced by rows."""
    if k < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {k}")
    keys, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(keys) < k:
        raise ValueError(f"{len(keys)} product groups cannot fill {k} folds; lower the folds")
    order = np.random.default_rng(seed).permutation(len(keys))
    fold_of_group = np.empty(len(keys), dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    # Largest groups first, each to the lightest fold: sizes stay within one group of each other.
    for g in order[np.argsort(-counts[order], kind="stable")]:
        f = int(load.argmin())
        fold_of_group[g] = f
        load[f] += counts[g]
    return fold_of_group[inverse]


def out_of_fold(folds: np.ndarray, n_classes: list[int], fit_predict: FitPredict,
                rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Per level, (len(folds), n_classes) probabilities; row i comes from the model fitted without i's fold.

    `rows` (default: all) are the rows that may train a fold's model, e.g. only labelled ones.
    """
    rows = np.arange(len(folds)) if rows is None else rows
    out = [np.zeros((len(folds), n), dtype=np.float32) for n in n_classes]
    for f in np.unique(folds):
        held = np.flatnonzero(folds == f)
        train = rows[folds[rows] != f]
        for level, probs in enumerate(fit_predict(train, held)):
            out[level][held] = probs
        log.info("fold %d: trained on %d rows, scored %d", f, len(train), len(held))
    return out
