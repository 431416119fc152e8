"""Stage evaluate: every trained model on the held-out test split -> artifacts/evaluate/.

metrics.json (per model and level, with bootstrap CIs; fusion extras: calibration, auto-accept coverage,
hierarchy consistency, retrieval), per_class.csv, plots/*.csv (DVC plots) and comparison.md.
Evaluation reports; it never fails on bad numbers.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import precision_recall_fscore_support

from components import metrics as M
from components.atomic_io import atomic_dir, read_json, write_json
from components.catalog import FINEST, INPUT_VARIANTS, TITLE, title_words
from components.config import EvaluateParams, Params, load_params
from components.data import Arrays, cached_products, load_arrays
from components.encoders import Encoders, encode_labels
from components.experts import EXPERTS
from components.experts import files as expert_files
from components.models.combiner import Combiner
from components.models.retrieval import RetrievalError, load_towers, space_fingerprint, towers_file
from components.models.runtime import PREDICT_BATCH, predict_arrays, select_device
from components.report import comparison_table
from components.serving.stacked import COMBINER_FILE, Experts, StackedCategorizer

log = logging.getLogger(__name__)

ABLATIONS = {"fusion[image only]": (True, False, False), "fusion[text only]": (False, True, False),
             "fusion[metadata only]": (False, False, True)}
HEAD_MIN, TAIL_MAX = 500, 100  # train rows: head >= 500, tail < 100, torso in between
EXPERT_ROWS = {e.name: e.display for e in EXPERTS}  # expert -> its row in the comparison table


def score_model(probs: list[np.ndarray], labels: np.ndarray, p: EvaluateParams, seed: int,
                bands: dict[int, str], levels: tuple[str, ...], preds: np.ndarray | None = None) -> dict:
    """Per level: accuracy, F1s with bootstrap CIs (and F1 by class band at the finest level); `preds`
    (N, levels) when the model decides by whole paths."""
    out = {}
    for lvl, name in enumerate(levels):
        y = labels[:, lvl]
        pred = probs[lvl].argmax(1) if preds is None else preds[:, lvl]
        res = M.classification(y, pred)
        for k, (lo, hi) in M.bootstrap_ci(y, pred, p.bootstrap, seed).items():
            res[f"{k}_ci_low"], res[f"{k}_ci_high"] = lo, hi
        if lvl == len(levels) - 1:
            res.update({f"f1_{b}": v for b, v in M.band_f1(y, pred, bands).items()})
        out[name] = res
    return out


def business_view(probs: list[np.ndarray], labels: np.ndarray, enc: Encoders, p: EvaluateParams,
                  preds: np.ndarray | None = None) -> dict:
    """Calibration, auto-accept coverage and hierarchy consistency of the finest-level predictions."""
    preds = np.stack([pr.argmax(1) for pr in probs], axis=1) if preds is None else preds
    rows = np.arange(len(labels))
    conf = probs[FINEST][rows, preds[:, FINEST]]
    correct = preds[:, FINEST] == labels[:, FINEST]
    out = {"ece": M.expected_calibration_error(conf, correct, p.calibration_bins)}
    for t in p.precision_targets:
        cov = M.coverage_at_precision(conf, correct, t)
        out.update({f"coverage_at_{t:g}": cov["coverage"], f"threshold_at_{t:g}": cov["threshold"],
                    f"review_per_10k_at_{t:g}": cov["review_per_10k"]})
    names = [np.asarray(enc.labels[lvl], dtype=object) for lvl in enc.levels]
    paths = list(zip(*(names[i][preds[:, i]] for i in range(len(names)))))
    out["hierarchy_consistency"] = M.hierarchy_consistency(paths, set(enc.taxonomy))
    return out


def article_view(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    res = M.classification(y, pred)
    return {"n": len(y), "accuracy": res["accuracy"], "macro_f1": res["macro_f1"]}


def catalog_vectors(model, arrays: Arrays, device) -> tuple[np.ndarray, np.ndarray]:
    """Every catalog row's photo and title unit vectors (rows of products.parquet), in one pass."""
    emb = predict_arrays(model, arrays, PREDICT_BATCH, device, embeddings=True)
    return tuple(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
                 for e in (emb["embeddings"]["image"], emb["embeddings"]["text"]))


def retrieval_view(image: np.ndarray, text: np.ndarray, df: pd.DataFrame, has_image: np.ndarray,
                   ks: tuple[int, ...]) -> dict:
    """Title -> image and image -> title among the test products that have an image (identical title or image
    bytes count as relevant)."""
    keep = np.flatnonzero((df["split"].to_numpy() == "test") & has_image)
    rel = M.relevance(df["title_norm"].to_numpy()[keep], df["image_md5"].to_numpy()[keep])
    t2i = M.retrieval(text[keep], image[keep], rel, ks)
    i2t = M.retrieval(image[keep], text[keep], rel, ks)
    return {"queries": len(keep), **{f"text_to_image_{k}": v for k, v in t2i.items()},
            **{f"image_to_text_{k}": v for k, v in i2t.items()}}


KAGL_QUERIES = 2000  # Marqo's KAGL benchmark: 2,000 product titles as queries
KAGL_K = (1, 10)


def kagl_view(image: np.ndarray, text: np.ndarray, df: pd.DataFrame, seed: int) -> dict:
    """The public title-retrieval protocol on this catalog (Marqo's KAGL): seeded test-split titles as queries,
    a hit when an image of a product with the identical (lower-cased) title comes back; image -> title likewise
    from seeded test-split photos. Two galleries: `unseen` (the val and test products: none trained on, the
    gate) and `whole` (the catalog, ~80 % of it trained on: memorised duplicate titles inflate it; context)."""
    keys = df[TITLE].fillna("").astype(str).str.lower().str.strip().to_numpy()
    split, photo = df["split"].to_numpy(), df["has_image"].to_numpy(bool)
    rng = np.random.default_rng(seed)
    test = np.flatnonzero((split == "test") & (keys != ""))
    _, first = np.unique(keys[test], return_index=True)  # one query per distinct title
    t_queries = np.sort(rng.choice(test[first], min(KAGL_QUERIES, len(first)), replace=False))
    with_photo = test[photo[test]]
    i_queries = np.sort(rng.choice(with_photo, min(KAGL_QUERIES, len(with_photo)), replace=False))
    out = {}
    for name, members in (("unseen", np.isin(split, ["val", "test"])), ("whole", np.ones(len(df), bool))):
        images, titles = np.flatnonzero(members & photo), np.flatnonzero(members & (keys != ""))
        out[name] = {"gallery_images": len(images), "gallery_titles": len(titles),
                     "text_to_image": M.key_retrieval(text[t_queries], image[images], keys[t_queries], keys[images],
                                                      KAGL_K),
                     "image_to_text": M.key_retrieval(image[i_queries], text[titles], keys[i_queries], keys[titles],
                                                      KAGL_K)}
    return out


def retrieval_views(model, df: pd.DataFrame, params: Params, device) -> dict:
    """Both retrieval protocols in the fusion network's space and, when train_retrieval has run, in the retrieval
    towers' (the space search serves). `df`: products.parquet. Keys: retrieval, retrieval_kagl, and the same with
    `_tuned`."""
    arrays, _ = load_arrays(params.paths.ingest, params.paths.features)
    arrays = arrays.subset(np.arange(len(arrays)))  # images read from disk once for both spaces
    has_image = arrays.has_image.astype(bool)
    spaces = {"": catalog_vectors(model, arrays, device)}
    path = towers_file(params.paths.train_retrieval)
    if path.is_file():
        towers = load_towers(path)
        if towers.fingerprint != space_fingerprint(model):
            raise RetrievalError(f"{path}: trained on another fusion network; rerun `dvc repro train_retrieval`")
        spaces["_tuned"] = catalog_vectors(towers.to(device).with_towers_of(model), arrays, device)
    else:
        log.warning("evaluate: %s not found; retrieval is reported in the fusion space only", path)
    out = {}
    for suffix, (image, text) in spaces.items():
        out[f"retrieval{suffix}"] = retrieval_view(image, text, df, has_image, params.evaluate.retrieval_k)
        out[f"retrieval_kagl{suffix}"] = kagl_view(image, text, df, params.seed)
    return out


def versus_best_expert(y: np.ndarray, preds: dict[str, np.ndarray], views: dict[str, dict], p: EvaluateParams,
                       seed: int, class_names: list[str]) -> dict:
    """The stacked model against the single expert with the best macro-F1 on this input (picked on test: it is
    the bar the stack must clear, not a model choice), with a paired bootstrap CI of each difference: a gap
    whose CI spans zero is a handful of rare-class products, not a measured loss. Also the classes each of the
    two predicts that no test product holds (products per class): each adds a class of F1 0 to that model's
    sklearn macro-F1 alone, which is why the differences come over the test truth's classes as well."""
    best = max((m for m in views if m != "stacked"), key=lambda m: (views[m]["macro_f1"], views[m]["accuracy"]))
    held = set(y.tolist())
    outside = {m: {class_names[c]: int(n) for c, n in zip(*np.unique(preds[m], return_counts=True)) if c not in held}
               for m in ("stacked", best)}
    return {"expert": best, **M.paired_bootstrap_diff(y, preds["stacked"], preds[best], p.bootstrap, seed),
            "predicted_outside_truth": outside}


def per_class_table(labels: np.ndarray, pred: np.ndarray, enc: Encoders, train_counts: dict[int, int],
                    bands: dict[int, str]) -> pd.DataFrame:
    finest = enc.levels[FINEST]
    classes = list(range(len(enc.labels[finest])))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
    return pd.DataFrame({finest: enc.labels[finest], "band": [bands[c] for c in classes],
                         "train_rows": [train_counts[c] for c in classes], "test_support": s,
                         "precision": p.round(4), "recall": r.round(4), "f1": f.round(4)})


def load_stack(params: Params) -> tuple[Experts, StackedCategorizer | None, dict]:
    """The served stack (its experts are the models compared) or, before `stack` ran, the experts alone."""
    spec_file = Path(params.paths.stack) / COMBINER_FILE
    if spec_file.is_file():
        cat = StackedCategorizer.load(spec_file, candidates=True)
        return cat.experts, cat, read_json(spec_file)
    log.warning("no stacked categorizer at %s: the experts are compared without it", spec_file)
    files = {e: f for e, f in expert_files(params.paths).items() if f.is_file()}
    return Experts.load(files), None, {}


def variant_predictions(experts: Experts, stack: StackedCategorizer | None, spec: dict, frame: pd.DataFrame,
                        images, variant: str, cut_words: int, ablations: bool,
                        full: dict[str, list[np.ndarray]] | None = None
                        ) -> tuple[dict[str, list[np.ndarray]], dict[str, np.ndarray], object]:
    """Per model, per-level probabilities on one input variant; path decisions of the stacked models.
    `full`: the experts' probabilities on the full input (reused by the experts the variant leaves untouched)."""
    names = experts.names
    paths = stack.combiner.paths if stack is not None else np.zeros((0, 3), np.int64)
    a, raw, x = experts.on_variant(frame, images, variant, cut_words, paths, names, full=full)
    probs = {EXPERT_ROWS[e]: pr for e, pr in raw.items()}
    decisions: dict[str, np.ndarray] = {}
    combiners = {"stacked": stack.combiner} if stack is not None else {}
    if stack is not None and ablations:
        # "-e": a chosen expert left out, "+e": an expert the stack stage dropped put back.
        combiners.update({f"stacked[{k}]": Combiner.from_dict(d) for k, d in spec.get("ablations", {}).items()})
    for row, comb in combiners.items():
        # Each combiner sees only the columns of its own experts.
        xs = x.columns([names.index(e) for e in comb.experts])
        probs[row], decisions[row] = comb.predict(xs, experts.n_classes())
    return probs, decisions, a


def slices(frame: pd.DataFrame, labels: np.ndarray, bands: dict[int, str], suspects: np.ndarray
           ) -> dict[str, np.ndarray]:
    """Test rows of the inputs and classes that are hard in practice (masks), and the rows whose label the
    audit trusts: test labels are noisy too, so a score on them alone says what a mislabel costs the table."""
    out = {"no image": ~frame["has_image"].to_numpy(bool), "title of at most 3 words": title_words(frame) <= 3,
           "tail classes": np.array([bands[c] == "tail" for c in labels[:, FINEST]], bool)}
    if len(suspects):
        out["label not suspected by the audit"] = ~frame["id"].astype(str).isin(suspects).to_numpy()
    return out


def audit_suspects(audit_dir: str | Path) -> np.ndarray:
    """Ids (as text: numbers or SKUs) the audit suspects of a wrong label (none before the audit ran)."""
    path = Path(audit_dir) / "audit.csv"
    if not path.is_file():
        return np.zeros(0, str)
    table = pd.read_csv(path, usecols=["id", "suspect"], dtype={"id": str})
    return table.loc[table["suspect"].astype(bool), "id"].to_numpy(str)


def run(params: Params) -> dict:
    p, device = params.evaluate, select_device("auto")
    experts, stack, spec = load_stack(params)
    enc = experts.encoders
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    idx = np.flatnonzero(df["split"].to_numpy() == "test")
    frame, images = cached_products(params.paths.ingest, idx)
    y = encode_labels(frame, enc)
    train_y = encode_labels(df[df["split"] == "train"], enc)[:, FINEST]
    train_counts = {c: int((train_y == c).sum()) for c in range(len(enc.labels[enc.levels[FINEST]]))}
    bands = M.frequency_bands(train_counts, HEAD_MIN, TAIL_MAX)
    cut = params.stack.cut_title_words

    probs, decisions, test = variant_predictions(experts, stack, spec, frame, images, "full", cut, ablations=True)
    fusion = experts.models["fusion"]
    for name, present in ABLATIONS.items():
        probs[name] = predict_arrays(fusion, test, PREDICT_BATCH, device, present=present)["probs"]
    results = {name: score_model(pr, y, p, params.seed, bands, enc.levels, decisions.get(name))
               for name, pr in probs.items()}
    served = "stacked" if stack is not None else "fusion"
    for name in {"fusion", "tfidf", served} & set(probs):
        results[name]["business"] = business_view(probs[name], y, enc, p, decisions.get(name))
    results["fusion"].update(retrieval_views(fusion, df, params, device))

    def article_pred(name: str, pr: dict, dec: dict) -> np.ndarray:
        return dec[name][:, FINEST] if name in dec else pr[name][FINEST].argmax(1)

    main_rows = [m for m in [*EXPERT_ROWS.values(), "stacked"] if m in probs]
    results["slices"] = {s: {m: article_view(y[mask, FINEST], article_pred(m, probs, decisions)[mask])
                             for m in main_rows}
                         for s, mask in slices(frame, y, bands, audit_suspects(params.paths.audit)).items()
                         if mask.any()}
    preds = {"full": {m: article_pred(m, probs, decisions) for m in main_rows}}
    full = {e: probs[EXPERT_ROWS[e]] for e in experts.names}
    for v in INPUT_VARIANTS[1:]:
        pv, dv, _ = variant_predictions(experts, stack, spec, frame, images, v, cut, ablations=False, full=full)
        preds[v] = {m: article_pred(m, pv, dv) for m in main_rows}
    results["inputs"] = {v: {m: article_view(y[:, FINEST], pred) for m, pred in pv.items()}
                         for v, pv in preds.items()}
    if "stacked" in main_rows:
        results["stacked_vs_best_expert"] = {v: versus_best_expert(y[:, FINEST], pv, results["inputs"][v], p,
                                                                   params.seed, enc.labels[enc.levels[FINEST]])
                                             for v, pv in preds.items()}
    results["served_model"] = served
    results["test_products"] = len(y)

    served_pred = article_pred(served, probs, decisions)
    with atomic_dir(params.paths.evaluate) as tmp:
        write_json(tmp / "metrics.json", results)
        per_class_table(y[:, FINEST], served_pred, enc, train_counts, bands).to_csv(tmp / "per_class.csv",
                                                                                    index=False)
        (tmp / "plots").mkdir()
        names = np.asarray(enc.labels[enc.levels[FINEST]], dtype=object)
        pd.DataFrame({"actual": names[y[:, FINEST]], "predicted": names[served_pred]}).to_csv(
            tmp / "plots" / "confusion.csv", index=False)
        pc = pd.read_csv(tmp / "per_class.csv")[[enc.levels[FINEST], "f1"]].sort_values("f1")
        pc.to_csv(tmp / "plots" / "per_class_f1.csv", index=False)
        (tmp / "comparison.md").write_text(comparison_table(results))
    log.info("evaluate: %s %s %s", served, enc.levels[FINEST], results[served][enc.levels[FINEST]])
    return results


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_grad_enabled(False)
    run(load_params())


if __name__ == "__main__":
    main()
