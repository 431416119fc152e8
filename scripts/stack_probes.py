"""Combiner variants the stack stage does not use, judged by its own criterion (printed, never asserted).

    .venv/bin/python scripts/stack_probes.py                       # every probe (~15 min on 2 cores)
    .venv/bin/python scripts/stack_probes.py --probes served class_weights condition_offsets

Each probe fits a variant of the combiner on the validation split's expert outputs as the stack stage does
(the pipeline's experts and `stack` params: its input variants, group folds, L2, group weight, and the class
balance the stage chose, read from artifacts/stack/metrics.json) and prints the stage's criterion, the
out-of-fold articleType macro-F1 averaged over the input variants, with each variant's share. `served` is the
stage's own combiner over all its experts, the reference the others are read against. Validation only:
nothing here reads the test split. The tfidf_* probes first train their own TF-IDF models on the train split
(title only ~3 min, with and without metadata ~9 min). Needs `dvc repro stack` done (the experts and the int8
calibration images).

What each probe asks (the README's "Tried and not kept" holds the answers):
  class_weights      does each expert earn its own trust per articleType class (E x P more weights, L2)?
  condition_offsets  do the path offsets need a set per poor-input condition (C-1 x P more, L2)?
  class_rarity       does trust shift with the class's rarity (one weight per expert x -log train share)?
  tfidf_title        a second TF-IDF over the title alone as a sixth expert
  tfidf_title_switch the TF-IDF expert answered by the title-only model when a product has no metadata
  tfidf_dropout      one TF-IDF trained on the train split with and without its metadata tokens, for ours
  title_knn          a sixth expert with no class prior: the labels of the k train titles nearest in TF-IDF
                     cosine (word 1-2 + char 2-5 grams), votes weighted by similarity^power
  fused_knn          the same in the fusion network's fused embedding (its shared space): train products'
                     embeddings as given, each validation variant's as degraded, votes weighted exp(cos / T)
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components import metrics as M  # noqa: E402
from components.catalog import ARTICLE, LEVELS, degrade_frame, product_text  # noqa: E402
from components.config import load_params  # noqa: E402
from components.data import cached_products  # noqa: E402
from components.encoders import encode_labels  # noqa: E402
from components.models.combiner import (  # noqa: E402
    CONDITIONS,
    Combiner,
    StackInputs,
    initial_theta,
    path_index,
    path_log_probs,
    path_scores,
    stack_tensors,
)
from components.models.runtime import PREDICT_BATCH, predict_many  # noqa: E402
from components.models.tfidf import TfidfBaseline  # noqa: E402
from components.pipeline.stack import article_truth, cross_validate, taxonomy_paths, variant_inputs, variant_macro_f1  # noqa: E402
from components.serving.categorizer import to_arrays  # noqa: E402
from components.serving.stacked import CALIBRATION_FILE, Experts, degraded, expert_files, metadata_fields  # noqa: E402
from components.training.crossfit import group_folds  # noqa: E402

PROBES = ("served", "class_weights", "condition_offsets", "class_rarity", "tfidf_title", "tfidf_title_switch",
          "tfidf_dropout", "title_knn", "fused_knn")
KNN_K, KNN_POWER, KNN_PRIOR = 10, 4.0, 0.05  # neighbours; similarity exponent; mass of the train prior added
KNN_T = 0.05  # fused_knn: temperature of its exp(cos / T) votes


@dataclass
class ExtraCombiner(Combiner):
    """The served combiner plus an extra score term with its own parameters `g` under their own L2 (`lam`);
    fitted by the same L-BFGS on the same row weights and loss."""

    lam: float = 1e-2

    def g_shape(self, t: tuple[torch.Tensor, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def extra(self, t: tuple[torch.Tensor, ...], g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fit(self, x: StackInputs, path_y: np.ndarray, max_iter: int = 200) -> ExtraCombiner:
        t, y, w = self.fit_data(x, path_y)
        init = torch.from_numpy(initial_theta(len(self.experts), self.paths.shape[1]))
        theta = init.clone().requires_grad_(True)
        bias = torch.zeros(len(self.paths), dtype=torch.float64, requires_grad=True)
        g = torch.zeros(self.g_shape(t), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([theta, bias, g], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = (self.loss(path_scores(theta, bias, t) + self.extra(t, g), y, w, theta - init, bias)
                    + self.lam * (g ** 2).sum())
            loss.backward()
            return loss

        opt.step(closure)
        self.theta, self.bias, self.g = theta.detach().numpy(), bias.detach().numpy(), g.detach()
        return self

    def path_probs(self, x: StackInputs) -> np.ndarray:
        t = stack_tensors(x)
        with torch.no_grad():
            scores = path_scores(torch.from_numpy(self.theta), torch.from_numpy(self.bias), t) + self.extra(t, self.g)
            return torch.softmax(scores, dim=1).numpy()


def article_logp(t: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return t[2][:, :, ARTICLE, :].double()  # (N, E, P) each expert's log-probability of each path's article


@dataclass
class ClassWeights(ExtraCombiner):
    def g_shape(self, t):
        return (len(self.experts), len(self.paths))

    def extra(self, t, g):
        return torch.einsum("ne,ep,nep->np", t[1], g, article_logp(t))


@dataclass
class ConditionOffsets(ExtraCombiner):
    def g_shape(self, t):
        return (len(CONDITIONS) - 1, len(self.paths))

    def extra(self, t, g):
        return t[0][:, 1:] @ g  # the bias condition keeps the served offsets


@dataclass
class ClassRarity(ExtraCombiner):
    rarity: np.ndarray = None  # (P,) standardised -log train share of each path's articleType

    def g_shape(self, t):
        return (len(self.experts),)

    def extra(self, t, g):
        return torch.einsum("ne,e,nep,p->np", t[1], g, article_logp(t), torch.from_numpy(self.rarity))


def head_to_head(pred: np.ndarray, probs: dict, truth: np.ndarray, variants, n: int) -> str:
    """Per input variant, against the expert of best validation macro-F1 there: products only it gets right /
    products only the stack (out of fold) gets right."""
    out = []
    for j, v in enumerate(variants):
        scores = {e: M.classification(truth, pr[ARTICLE].argmax(1))["macro_f1"] for e, pr in probs[v].items()}
        best = max(scores, key=scores.get)
        mine, theirs = pred[j * n:(j + 1) * n] == truth, probs[v][best][ARTICLE].argmax(1) == truth
        out.append(f"{v} vs {best} ({scores[best]:.4f}): {int((theirs & ~mine).sum())} / {int((mine & ~theirs).sum())}")
    return "; ".join(out)


def train_tfidf(params, enc, train: pd.DataFrame, kind: str) -> TfidfBaseline:
    fields = metadata_fields(enc)
    stripped = degrade_frame(train, "no_metadata", fields, params.stack.cut_title_words)
    frame = stripped if kind == "title" else pd.concat([train, stripped], ignore_index=True)
    t0 = time.perf_counter()
    model = TfidfBaseline(params.train_baseline.tfidf, params.features.categorical,
                          params.features.use_description).fit(frame, encode_labels(frame, enc))
    print(f"  TF-IDF {kind}: trained on {len(frame)} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    return model


def tfidf_logp(model: TfidfBaseline, frame: pd.DataFrame, variants, enc, cut: int, paths) -> np.ndarray:
    """(rows variant-major, P) path log-probs at every level of `model` on each input variant."""
    n_classes = [len(enc.labels[lvl]) for lvl in LEVELS]
    out, truth = [], encode_labels(frame, enc)[:, ARTICLE]
    for v in variants:
        probs = model.predict_proba(degrade_frame(frame, v, metadata_fields(enc), cut), n_classes)
        r = M.classification(truth, probs[ARTICLE].argmax(1))
        print(f"    its own validation articleType on {v}: {100 * r['accuracy']:.2f} % / {r['macro_f1']:.4f}")
        out.append(path_log_probs(probs, paths))
    return np.concatenate(out)


def knn_probs(sim_blocks, y_train: np.ndarray, n_classes: list[int], priors: list[np.ndarray], weight
              ) -> list[np.ndarray]:
    """Per-level probabilities from the KNN_K most similar train rows of each query (blocks of (B, N_train)
    similarities), votes weighted by `weight(similarity)`, plus KNN_PRIOR of the vote mass as the train prior."""
    votes = [[] for _ in n_classes]
    for sim in sim_blocks:
        top = np.argpartition(-sim, KNN_K, axis=1)[:, :KNN_K]
        w = weight(np.take_along_axis(sim, top, 1))
        rows = np.repeat(np.arange(len(sim)), KNN_K)
        for lvl, n in enumerate(n_classes):
            v = np.zeros((len(sim), n))
            np.add.at(v, (rows, y_train[top.ravel(), lvl]), w.ravel())
            votes[lvl].append(v)
    probs = []
    for lvl, parts in enumerate(votes):
        vt = np.concatenate(parts)
        mass = vt.sum(1, keepdims=True)
        probs.append(((vt + (KNN_PRIOR * mass + 1e-9) * priors[lvl]) / ((1 + KNN_PRIOR) * mass + 1e-9))
                     .astype(np.float32))
    return probs


def knn_report(name: str, variant: str, probs: list[np.ndarray], truth: np.ndarray) -> None:
    r = M.classification(truth, probs[ARTICLE].argmax(1))
    print(f"    {name} on {variant}: {100 * r['accuracy']:.2f} % / {r['macro_f1']:.4f}", flush=True)


def train_priors(y_train: np.ndarray, n_classes: list[int]) -> list[np.ndarray]:
    return [np.bincount(y_train[:, lvl], minlength=n) / len(y_train) for lvl, n in enumerate(n_classes)]


def fused_knn_logp(experts: Experts, train_idx: np.ndarray, ingest_dir: str, frame: pd.DataFrame, images,
                   variants, cut: int, paths) -> np.ndarray:
    """(rows variant-major, P) path log-probs of the fused-embedding kNN expert (see the module docstring)."""
    t0 = time.perf_counter()
    enc, model = experts.encoders, {"fusion": experts.models["fusion"]}

    def fused(f: pd.DataFrame, im) -> np.ndarray:
        out = predict_many(model, to_arrays(f, im, enc), PREDICT_BATCH, experts.device, embeddings=("fusion",))
        return out["fusion"]["embeddings"]["fused"].astype(np.float32)

    train, train_images = cached_products(ingest_dir, train_idx)
    e_train, y_train = fused(train, train_images), encode_labels(train, enc)
    print(f"  fused kNN: {len(train)} train embeddings in {time.perf_counter() - t0:.0f} s", flush=True)
    n_classes = experts.n_classes()
    priors, truth, out = train_priors(y_train, n_classes), encode_labels(frame, enc)[:, ARTICLE], []
    for v in variants:
        q = fused(*degraded(frame, images, v, enc, cut))
        probs = knn_probs((q[lo:lo + 512] @ e_train.T for lo in range(0, len(q), 512)), y_train, n_classes,
                          priors, lambda s: np.exp((s - 1.0) / KNN_T))
        knn_report("fused kNN", v, probs, truth)
        out.append(path_log_probs(probs, paths))
    print(f"  fused kNN: {time.perf_counter() - t0:.0f} s", flush=True)
    return np.concatenate(out)


def title_knn_logp(train: pd.DataFrame, frame: pd.DataFrame, variants, enc, cut: int, paths,
                   use_description: bool) -> np.ndarray:
    """(rows variant-major, P) path log-probs of the title kNN expert (see the module docstring)."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    t0 = time.perf_counter()
    vecs = [TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)]
    text = product_text(train, use_description)
    x_train = normalize(hstack([v.fit_transform(text) for v in vecs]).tocsr()).T.tocsr()
    y_train = encode_labels(train, enc)
    n_classes = [len(enc.labels[lvl]) for lvl in LEVELS]
    priors, truth, out = train_priors(y_train, n_classes), encode_labels(frame, enc)[:, ARTICLE], []
    for v in variants:
        d = degrade_frame(frame, v, metadata_fields(enc), cut)
        q = normalize(hstack([vec.transform(product_text(d, use_description)) for vec in vecs]).tocsr())
        probs = knn_probs(((q[lo:lo + 512] @ x_train).toarray() for lo in range(0, len(d), 512)), y_train,
                          n_classes, priors, lambda s: s ** KNN_POWER)
        knn_report("title kNN", v, probs, truth)
        out.append(path_log_probs(probs, paths))
    print(f"  title kNN: {time.perf_counter() - t0:.0f} s", flush=True)
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", nargs="+", choices=PROBES, default=list(PROBES))
    args = ap.parse_args()
    params = load_params()
    p = params.stack
    chosen = json.loads((Path(params.paths.stack) / "metrics.json").read_text())
    files = {e: f for e, f in expert_files(params.paths).items() if e in p.experts and f.is_file()}
    calibration = np.load(Path(params.paths.stack) / CALIBRATION_FILE, allow_pickle=False)
    experts = Experts.load(files, device="cpu", calibration=calibration if len(calibration) else None)
    enc, names = experts.encoders, experts.names
    table = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    frame, images = cached_products(params.paths.ingest, np.flatnonzero(table["split"].to_numpy() == "val"))
    paths = taxonomy_paths(enc)
    labels = encode_labels(frame, enc)
    y1, k, n = path_index(labels, paths), len(p.variants), len(frame)
    inputs, probs = variant_inputs(experts, frame, images, p.variants, p.cut_title_words, paths)
    x = StackInputs.concat([inputs[v] for v in p.variants])
    x.group = np.tile(frame["group"].to_numpy(), k)
    y = np.tile(y1, k)
    folds = np.tile(group_folds(frame["group"].to_numpy(), p.folds, params.seed), k)
    settings = dict(l2=chosen["l2"], fit_bias=True, balance=chosen["balance"], group_weight=chosen["group_weight"])
    print(f"validation: {n} products x {k} input variants; experts {', '.join(names)}; setting {settings}")

    train = table[table["split"] == "train"]
    counts = np.bincount(encode_labels(train, enc)[:, ARTICLE], minlength=len(enc.labels[LEVELS[ARTICLE]]))
    rarity = -np.log(np.maximum(counts[paths[:, ARTICLE]], 1) / counts.sum())
    rarity = (rarity - rarity.mean()) / rarity.std()
    tfidf = {}

    def tfidf_column(kind: str) -> np.ndarray:
        if kind not in tfidf:
            tfidf[kind] = tfidf_logp(train_tfidf(params, enc, train, kind), frame, p.variants, enc,
                                     p.cut_title_words, paths)
        return tfidf[kind]

    def with_column(col: np.ndarray, replace: int | None = None, rows: slice = slice(None),
                    mask_of: int | None = None) -> StackInputs:
        if replace is None:  # a new expert, applying where expert `mask_of` (default TF-IDF) does
            src = tf if mask_of is None else mask_of
            mask = np.concatenate([x.mask, x.mask[:, src:src + 1]], 1)
            return StackInputs(np.concatenate([x.logp, col[:, None]], 1), mask, x.cond, x.group)
        logp = x.logp.copy()
        logp[rows, replace] = col[rows]
        return StackInputs(logp, x.mask, x.cond, x.group)

    tf = names.index("tfidf") if "tfidf" in names else None
    no_meta = slice(p.variants.index("no_metadata") * n, (p.variants.index("no_metadata") + 1) * n) \
        if "no_metadata" in p.variants else slice(0, 0)
    runs = {  # probe -> [(label, inputs, expert names, combiner class, extra settings)]
        "served": [("", x, names, Combiner, {})],
        "class_weights": [(f"L2 {lam:g}", x, names, ClassWeights, {"lam": lam}) for lam in (1e-2, 1e-3)],
        "condition_offsets": [(f"L2 {lam:g}", x, names, ConditionOffsets, {"lam": lam}) for lam in (1e-2, 1e-3)],
        "class_rarity": [("L2 1e-4", x, names, ClassRarity, {"lam": 1e-4, "rarity": rarity})],
    }
    article, truth = paths[:, ARTICLE], article_truth(y, paths)
    for probe in args.probes:
        if probe.startswith("tfidf") and tf is None:
            print(f"{probe}: the stack has no TF-IDF expert; skipped")
            continue
        if probe == "tfidf_title":
            todo = [("", with_column(tfidf_column("title")), names + ("tfidf_title",), Combiner, {})]
        elif probe == "tfidf_title_switch":
            todo = [("", with_column(tfidf_column("title"), tf, no_meta), names, Combiner, {})]
        elif probe == "title_knn":
            col = title_knn_logp(train, frame, p.variants, enc, p.cut_title_words, paths,
                                 params.features.use_description)
            todo = [("", with_column(col, mask_of=names.index("text")), names + ("title_knn",), Combiner, {})]
        elif probe == "fused_knn":
            col = fused_knn_logp(experts, np.flatnonzero(table["split"].to_numpy() == "train"),
                                 params.paths.ingest, frame, images, p.variants, p.cut_title_words, paths)
            todo = [("", with_column(col, mask_of=names.index("fusion")), names + ("fused_knn",), Combiner, {})]
        elif probe == "tfidf_dropout":
            todo = [("", with_column(tfidf_column("dropout"), tf), names, Combiner, {})]
        else:
            todo = runs[probe]
        for label, xi, over, cls, extra in todo:
            t0 = time.perf_counter()
            oof = cross_validate(xi, y, folds, functools.partial(cls, tuple(over), paths, **settings, **extra))
            pred = article[oof.argmax(1)]
            shares = {v: M.classification(labels[:, ARTICLE], pred[j * n:(j + 1) * n])["macro_f1"]
                      for j, v in enumerate(p.variants)}
            print(f"{probe} {label}".strip() + f": out-of-fold macro-F1 {variant_macro_f1(oof, truth, article, k):.4f} "
                  f"({', '.join(f'{v} {s:.4f}' for v, s in shares.items())}) [{time.perf_counter() - t0:.0f} s]",
                  flush=True)
            if probe == "served":
                print(f"  products only the best single expert / only the stack gets right: "
                      f"{head_to_head(pred, probs, labels[:, ARTICLE], p.variants, n)}", flush=True)


if __name__ == "__main__":
    main()
