"""Drift signals and their calibration against normal variation (pure: numpy, scipy, scikit-learn; no I/O).

A signal is an effect size between the training reference and a batch, one per monitored column/embedding:
  numeric column     Wasserstein distance in units of the reference's standard deviation
  categorical column Jensen-Shannon distance (base 2, 0..1) between the category shares
  labels (if any)    share of labelled products whose finest class the model does not know
  embedding          ROC AUC of a domain classifier (PCA fitted on the reference + logistic regression,
                     2-fold cross-fitted) telling batch rows from reference rows
Effect sizes, not p-values: with thousands of rows a test finds *some* difference in any column.

Calibration: the same signals on `batches` bootstrap batches of the batch's size drawn from held-out products
of the same data version (no drift by construction) give each signal's null mean and standard deviation.
A batch's signal alarms when its z-score exceeds the (1 - false_alarm_rate) quantile of the *largest* z over
all signals of each null batch (a max-statistic correction: the false-alarm rate holds for the whole batch,
however many signals there are and however correlated they are).
A null batch need not measure every signal (a draw with too few photos, a column constant in that draw): the
null is one record per batch, NaN where that batch could not measure a signal, and the max is taken over what
each batch measured. A signal measured in fewer than MIN_NULL_COVERAGE of the null batches gets no threshold:
its null is too thin (and biased towards the draws where it happened to be measurable) to alarm on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

DERIVED = ("title_length", "title_oov_share", "pred_confidence", "image_brightness", "image_white_share")
EMBEDDINGS = {"image": "img_", "text": "txt_"}
MIN_ROWS = 20  # fewer measured rows than this in a batch: the column is "not measurable"
MIN_NULL_COVERAGE = 0.9  # share of null batches that must measure a signal for it to get a threshold
MISSING = "(missing)"

LABELS = {"baseColour": "colour", "title_length": "title length (words)",
          "title_oov_share": "share of title words outside the training vocabulary",
          "pred_confidence": "prediction confidence", "image_brightness": "photo brightness",
          "image_white_share": "white share of photos"}


@dataclass(frozen=True)
class Signals:
    """The columns a batch is watched on: metadata the params name (drift.categorical / drift.numeric, from
    the catalog schema), the predicted top and finest levels, and what every product has (DERIVED)."""

    metadata: tuple[str, ...]  # categorical metadata columns
    numeric_metadata: tuple[str, ...]
    levels: tuple[str, ...]  # the model's label levels, coarsest first

    @property
    def categorical(self) -> list[str]:
        return [*self.metadata, *dict.fromkeys((f"pred_{self.levels[0]}", f"pred_{self.levels[-1]}"))]

    @property
    def numeric(self) -> list[str]:
        return [*self.numeric_metadata, *DERIVED]

    @property
    def label(self) -> str:
        """The described column holding the batch's own finest label, "" when it has none."""
        return f"label_{self.levels[-1]}"

    @property
    def unseen(self) -> str:
        """The signal: share of labelled products whose finest class the model does not know."""
        return f"unseen_{self.levels[-1]}"


def label_of(column: str) -> str:
    """How a watched column is named in a sentence."""
    if column.startswith("pred_"):
        return "predicted " + column.removeprefix("pred_")
    return LABELS.get(column, column)


@dataclass(frozen=True)
class Reference:
    """The described training reference, with what every measurement reuses precomputed."""

    frame: pd.DataFrame
    shares: dict[str, pd.Series]
    values: dict[str, np.ndarray]
    scale: dict[str, float]
    pca: dict[str, PCA]
    projected: dict[str, np.ndarray]
    known: frozenset[str]  # the finest classes the model predicts
    signals: Signals


def embedding_columns(frame: pd.DataFrame, name: str) -> list[str]:
    return [c for c in frame.columns if c.startswith(EMBEDDINGS[name])]


def _categories(frame: pd.DataFrame, col: str) -> pd.Series:
    return frame[col].astype(str).replace("", MISSING)


def prepare(ref: pd.DataFrame, known: list[str], pca_components: int, seed: int, signals: Signals) -> Reference:
    shares = {c: _categories(ref, c).value_counts(normalize=True) for c in signals.categorical}
    values = {c: ref[c].dropna().to_numpy(float) for c in signals.numeric}
    scale = {c: float(v.std()) if len(v) > 1 and v.std() > 0 else 1.0 for c, v in values.items()}
    pca, projected = {}, {}
    for name in EMBEDDINGS:
        x = ref[embedding_columns(ref, name)].to_numpy(np.float32)
        pca[name] = PCA(n_components=min(pca_components, *x.shape), random_state=seed).fit(x)
        projected[name] = pca[name].transform(x)
    return Reference(ref, shares, values, scale, pca, projected, frozenset(known), signals)


def domain_auc(ref: np.ndarray, cur: np.ndarray, seed: int) -> float:
    """Cross-fitted ROC AUC of a linear classifier separating `cur` rows from `ref` rows (0.5: alike)."""
    x = np.concatenate([ref, cur])
    y = np.r_[np.zeros(len(ref)), np.ones(len(cur))]
    fold = np.random.default_rng(seed).permutation(len(x)) % 2
    score = np.empty(len(x))
    for k in (0, 1):
        clf = LogisticRegression(max_iter=300).fit(x[fold != k], y[fold != k])
        score[fold == k] = clf.decision_function(x[fold == k])
    return float(roc_auc_score(y, score))


def measure(ref: Reference, cur: pd.DataFrame, seed: int) -> tuple[dict[str, float], dict[str, str]]:
    """Signal values of one batch, and the signals that cannot be measured on it with the reason."""
    values: dict[str, float] = {}
    skipped: dict[str, str] = {}
    sg = ref.signals
    for c in sg.categorical:
        cats = _categories(cur, c)
        if (cats == MISSING).all():
            skipped[c] = "empty in the batch"
            continue
        p = cats.value_counts(normalize=True)
        keys = ref.shares[c].index.union(p.index)
        values[c] = float(jensenshannon(ref.shares[c].reindex(keys, fill_value=0).to_numpy(),
                                        p.reindex(keys, fill_value=0).to_numpy(), base=2))
    for c in sg.numeric:
        v = cur[c].dropna().to_numpy(float)
        if len(v) < MIN_ROWS:
            skipped[c] = f"{len(v)} products carry it (fewer than {MIN_ROWS})"
        elif np.ptp(v) == 0:
            skipped[c] = f"constant in the batch ({v[0]:g})"
        else:
            values[c] = float(wasserstein_distance(ref.values[c], v) / ref.scale[c])
    labels = cur[sg.label].astype(str)
    labelled = labels[labels != ""]
    if len(labelled) >= MIN_ROWS:
        values[sg.unseen] = float((~labelled.isin(ref.known)).mean())
    elif len(labelled):
        skipped[sg.unseen] = f"{len(labelled)} products carry a label (fewer than {MIN_ROWS})"
    with_image = int(cur["image_brightness"].notna().sum())
    for name in EMBEDDINGS:
        if name == "image" and with_image < MIN_ROWS:
            skipped[f"{name}_embedding"] = f"{with_image} products have a readable image (fewer than {MIN_ROWS})"
            continue
        x = ref.pca[name].transform(cur[embedding_columns(cur, name)].to_numpy(np.float32))
        values[f"{name}_embedding"] = domain_auc(ref.projected[name], x, seed)
    return values, skipped


def null_values(ref: Reference, pool: pd.DataFrame, size: int, batches: int, seed: int) -> list[dict[str, float]]:
    """Signals of `batches` bootstrap batches of `size` rows drawn from held-out products (no drift): one
    record per batch, holding the signals that batch could measure."""
    rng = np.random.default_rng(seed)
    return [measure(ref, pool.iloc[rng.integers(0, len(pool), size)].reset_index(drop=True), seed + b)[0]
            for b in range(batches)]


@dataclass(frozen=True)
class Calibration:
    """Null mean/std per calibrated signal and the shared z threshold; threshold(k) = mean + z * std.
    `measured[k]` is how many null batches a signal's threshold rests on; `uncalibrated` names the signals the
    null measured too rarely to threshold, with the reason."""

    mean: dict[str, float]
    std: dict[str, float]
    z: float
    false_alarm_rate: float
    batches: int
    size: int
    measured: dict[str, int]
    uncalibrated: dict[str, str]

    def threshold(self, signal: str) -> float:
        return self.mean[signal] + self.z * self.std[signal]


def calibrate(null: list[dict[str, float]], false_alarm_rate: float, size: int) -> Calibration:
    """Thresholds from per-batch null records (a signal absent from a record: not measurable in that batch)."""
    if not null:
        raise ValueError("drift calibration: no null batches (drift.null_batches must be at least 1)")
    names = sorted(set().union(*null))
    m = np.array([[rec.get(k, np.nan) for k in names] for rec in null], dtype=float).reshape(len(null), len(names))
    counts = (~np.isnan(m)).sum(0)
    # At least 2 values for a standard deviation, whatever the coverage rule says for tiny nulls.
    keep = (counts >= MIN_NULL_COVERAGE * len(null)) & (counts >= 2)
    uncalibrated = {k: (f"measured in only {n} of {len(null)} held-out null batches (a threshold needs "
                        f"{MIN_NULL_COVERAGE:.0%})") for k, n, ok in zip(names, counts, keep) if not ok}
    names = [k for k, ok in zip(names, keep) if ok]
    m, counts = m[:, keep], counts[keep]
    if not names:
        return Calibration({}, {}, float("inf"), false_alarm_rate, len(null), size, {}, uncalibrated)
    mean = np.nanmean(m, 0)
    std = np.maximum(np.nanstd(m, 0, ddof=1), 1e-9)
    z = (m - mean) / std
    # Each batch's largest z over the signals it measured; a batch that measured none of them has no max.
    measured_any = ~np.isnan(z).all(1)
    z_max = np.nanmax(np.where(np.isnan(z), -np.inf, z)[measured_any], 1)
    thr = float(np.quantile(z_max, 1 - false_alarm_rate))
    return Calibration(dict(zip(names, mean.tolist())), dict(zip(names, std.tolist())), thr, false_alarm_rate,
                       len(null), size, dict(zip(names, counts.tolist())), uncalibrated)


def explain(ref: Reference, cur: pd.DataFrame, signal: str, value: float, threshold: float, null_mean: float
            ) -> str:
    """One plain sentence saying what changed, with the signal's value and alarm threshold."""
    if signal in ref.signals.categorical:
        p = _categories(cur, signal).value_counts(normalize=True)
        keys = ref.shares[signal].index.union(p.index)
        diff = p.reindex(keys, fill_value=0) - ref.shares[signal].reindex(keys, fill_value=0)
        top = diff.abs().idxmax()
        return (f"share of {label_of(signal)} '{top}' {p.get(top, 0):.1%} vs {ref.shares[signal].get(top, 0):.1%} "
                f"in training (Jensen-Shannon distance {value:.3f}, alarm above {threshold:.3f})")
    if signal in ref.signals.numeric:
        v = cur[signal].dropna().to_numpy(float)
        return (f"{label_of(signal)}: mean {v.mean():.3g} vs {ref.values[signal].mean():.3g} in training "
                f"(Wasserstein distance {value:.2f} training std, alarm above {threshold:.2f})")
    if signal == ref.signals.unseen:
        return (f"{value:.1%} of labelled products have {ref.signals.levels[-1]} classes the model does not know "
                f"(alarm above "
                f"{threshold:.1%}; held-out products of the training data version: {null_mean:.1%})")
    name = signal.removesuffix("_embedding")
    return (f"{name} embeddings: a classifier tells batch from training products with ROC AUC {value:.3f} "
            f"(alarm above {threshold:.3f})")


def decide(ref: Reference, cur: pd.DataFrame, values: dict[str, float], skipped: dict[str, str],
           calib: Calibration) -> dict:
    """The batch decision: every measured signal with its value, null threshold and verdict; drifted ones
    explained in a sentence; unmeasurable ones with the reason."""
    signals, skipped = [], dict(skipped)
    for k, v in values.items():
        if k in calib.uncalibrated:
            skipped[k] = calib.uncalibrated[k]
            continue
        if k not in calib.mean:  # e.g. labels in the batch, none in the held-out pool
            skipped[k] = "no null distribution for it (held-out products lack it)"
            continue
        thr = calib.threshold(k)
        s = {"signal": k, "value": round(v, 5), "threshold": round(thr, 5), "null_mean": round(calib.mean[k], 5),
             "z": round((v - calib.mean[k]) / calib.std[k], 2), "drifted": bool(v > thr),
             "null_batches": calib.measured[k]}
        if s["drifted"]:
            s["sentence"] = explain(ref, cur, k, v, thr, calib.mean[k])
        signals.append(s)
    signals.sort(key=lambda s: -s["z"])
    reasons = [s["sentence"] for s in signals if s["drifted"]]
    return {"drift_detected": bool(reasons), "reasons": reasons,
            "drifted": [s["signal"] for s in signals if s["drifted"]], "signals": signals,
            "not_measurable": skipped,
            "calibration": {"null_batches": calib.batches, "null_batch_size": calib.size,
                            "false_alarm_rate": calib.false_alarm_rate, "z_threshold": round(calib.z, 3)}}
