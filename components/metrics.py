"""Pure metric functions: classification with bootstrap CIs, calibration, auto-accept coverage,
hierarchy consistency and cross-modal retrieval with several correct items per query."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score


def classification(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float((y == pred).mean()) if len(y) else float("nan"),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, average="weighted", zero_division=0)),
    }


def bootstrap_ci(y: np.ndarray, pred: np.ndarray, n: int, seed: int, alpha: float = 0.05
                 ) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over test rows for each classification metric."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        for k, v in classification(y[idx], pred[idx]).items():
            draws.setdefault(k, []).append(v)
    return {k: (float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2)))
            for k, v in draws.items()}


def paired_bootstrap_diff(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n: int, seed: int,
                          alpha: float = 0.05) -> dict[str, dict[str, float]]:
    """Accuracy and macro-F1 of model a minus model b on the same rows: the point difference and a percentile
    bootstrap CI that resamples rows once for both models (so the CI is of the difference, not of each score).

    `macro_f1` is sklearn's default, as in every table: the mean over the classes in the truth *or* a model's
    predictions, so one product put into a class the rows do not hold adds a class of F1 0 to that model's mean
    alone (about a point with ~90 classes). `macro_f1_truth_classes` averages both models over the same
    classes, those of the rows' truth: a difference of the models, not of their denominators.
    """
    def diff(idx: np.ndarray) -> dict[str, float]:
        t, a, b = y[idx], pred_a[idx], pred_b[idx]
        held = np.unique(t)
        return {"accuracy": float((t == a).mean() - (t == b).mean()),
                "macro_f1": float(f1_score(t, a, average="macro", zero_division=0)
                                  - f1_score(t, b, average="macro", zero_division=0)),
                "macro_f1_truth_classes": float(f1_score(t, a, labels=held, average="macro", zero_division=0)
                                                - f1_score(t, b, labels=held, average="macro", zero_division=0))}

    rng = np.random.default_rng(seed)
    draws = [diff(rng.integers(0, len(y), len(y))) for _ in range(n)]
    point = diff(np.arange(len(y)))
    return {k: {"diff": point[k], "ci_low": float(np.quantile([d[k] for d in draws], alpha / 2)),
                "ci_high": float(np.quantile([d[k] for d in draws], 1 - alpha / 2))} for k in point}


def frequency_bands(train_counts: dict[int, int], head: int, tail: int) -> dict[int, str]:
    """Class id -> 'head' (>= head train rows), 'tail' (< tail) or 'torso'."""
    return {c: "head" if n >= head else ("tail" if n < tail else "torso") for c, n in train_counts.items()}


def band_f1(y: np.ndarray, pred: np.ndarray, bands: dict[int, str]) -> dict[str, float]:
    """Macro-F1 over the classes of each band (only classes present in y)."""
    per_class = f1_score(y, pred, labels=sorted(set(y.tolist())), average=None, zero_division=0)
    out: dict[str, list[float]] = {}
    for c, f in zip(sorted(set(y.tolist())), per_class):
        out.setdefault(bands.get(c, "tail"), []).append(float(f))
    return {b: float(np.mean(v)) for b, v in out.items()}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (confidence > lo) & (confidence <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - confidence[m].mean())
    return float(ece)


def coverage_at_precision(confidence: np.ndarray, correct: np.ndarray, target: float) -> dict[str, float]:
    """Largest share of products auto-accepted (highest confidence first) with precision >= target."""
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    precision = hits / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(precision >= target)
    if len(ok) == 0:
        return {"coverage": 0.0, "threshold": 1.0, "review_per_10k": 10000.0}
    k = int(ok[-1]) + 1
    coverage = k / len(order)
    return {"coverage": float(coverage), "threshold": float(confidence[order][k - 1]),
            "review_per_10k": float(round((1 - coverage) * 10000))}


def hierarchy_consistency(paths: list[tuple[str, str, str]], taxonomy: set[tuple[str, str, str]]) -> float:
    """Share of predicted (master, sub, article) triples that exist in the taxonomy."""
    if not paths:
        return float("nan")
    return float(np.mean([p in taxonomy for p in paths]))


def retrieval(queries: np.ndarray, items: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...]
              ) -> dict[str, float]:
    """Recall@K and MRR. queries (Q, D), items (N, D) unit vectors; relevant (Q, N) bool.

    Recall@K is the share of queries with at least one relevant item in the top K.
    """
    scores = queries @ items.T  # (Q, N)
    out = {f"recall_at_{k}": 0.0 for k in ks}
    rr = []
    for q in range(len(queries)):
        rel = relevant[q]
        # Rank of the best relevant item = 1 + number of items scoring strictly higher than it.
        best = scores[q][rel].max()
        rank = int((scores[q] > best).sum()) + 1
        rr.append(1.0 / rank)
        for k in ks:
            out[f"recall_at_{k}"] += rank <= k
    n = max(len(queries), 1)
    out = {k: v / n for k, v in out.items()}
    out["mrr"] = float(np.mean(rr)) if rr else float("nan")
    return out


def relevance(title_keys: np.ndarray, image_keys: np.ndarray) -> np.ndarray:
    """(N, N) bool: products with an identical normalised title or identical image bytes match."""
    same_title = title_keys[:, None] == title_keys[None, :]
    same_image = (image_keys[:, None] == image_keys[None, :]) & (image_keys[:, None] != "")
    return same_title | same_image | np.eye(len(title_keys), dtype=bool)


def key_retrieval(queries: np.ndarray, gallery: np.ndarray, query_keys: np.ndarray, gallery_keys: np.ndarray,
                  ks: tuple[int, ...], chunk: int = 256) -> dict[str, float]:
    """Retrieval whose relevance is an identical key (Marqo's KAGL protocol: the lower-cased product title).

    queries (Q, D) and gallery (N, D) unit vectors. Per query: hit@k (a relevant item in the top k), recall@k
    (the share of its relevant items that are in the top k) and the reciprocal rank of its first relevant item
    (1 + items scoring strictly higher). A query with no relevant item in the gallery does not count;
    `queries` reports how many did.
    """
    rows: dict[object, list[int]] = {}
    for j, key in enumerate(gallery_keys):
        rows.setdefault(key, []).append(j)
    kmax = min(max(ks), len(gallery))
    hit = {k: 0.0 for k in ks}
    recall = {k: 0.0 for k in ks}
    rr, counted = 0.0, 0
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk] @ gallery.T  # (chunk, N)
        top = np.argpartition(-scores, kmax - 1, axis=1)[:, :kmax]
        for i, s in enumerate(scores):
            rel = rows.get(query_keys[start + i])
            if not rel:
                continue
            counted += 1
            rel = np.asarray(rel)
            ranked = top[i][np.argsort(-s[top[i]], kind="stable")]  # the top kmax, best first
            is_rel = np.isin(ranked, rel)
            for k in ks:
                found = int(is_rel[:k].sum())
                hit[k] += found > 0
                recall[k] += found / len(rel)
            rr += 1.0 / (int((s > s[rel].max()).sum()) + 1)
    n = max(counted, 1)
    return {"queries": counted, **{f"hit_at_{k}": hit[k] / n for k in ks},
            **{f"recall_at_{k}": recall[k] / n for k in ks}, "mrr": rr / n if counted else float("nan")}
