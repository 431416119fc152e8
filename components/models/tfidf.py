"""The classical baseline: TF-IDF (word + character n-grams) with a linear model per level (scikit-learn).

Saved as plain arrays (`model.npz`: vocabularies, idf weights, coefficients, and the settings as JSON) and
loaded with `allow_pickle=False`: a model file from a registry or a shared disk cannot run code, unlike a
pickle, and it does not depend on the scikit-learn version that wrote it.
"""
from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.preprocessing import normalize

from components.catalog import ATTRIBUTES, attribute_tokens, product_text
from components.config import TfidfParams


def tfidf_text(frame: pd.DataFrame, categorical: tuple[str, ...], use_description: bool,
               use_title: bool = True) -> list[str]:
    """Title plus metadata as words (field=value tokens) for the TF-IDF baseline; metadata alone without title."""
    texts = product_text(frame, use_description) if use_title else [""] * len(frame)
    # Column lists, not frame.iterrows(): the same values (a missing column reads as "") at 1/10 of the time.
    fields = [(f, frame[f].tolist()) for f in categorical if f in frame]
    attrs = frame[ATTRIBUTES].tolist() if ATTRIBUTES in frame else [""] * len(frame)
    out = []
    for i, text in enumerate(texts):
        meta = [f"{f}={str(col[i]).replace(' ', '_').lower()}" for f, col in fields if col[i]]
        meta += [t.replace(" ", "_") for t in attribute_tokens(str(attrs[i]))]
        out.append(f"{text} {' '.join(meta)}")
    return out


# The vectorizer settings `char_wb_transform` reproduces (the char vectorizer this module builds).
FAST_CHAR_WB = {"analyzer": "char_wb", "lowercase": True, "strip_accents": None, "preprocessor": None,
                "binary": False, "norm": "l2", "use_idf": True, "sublinear_tf": True, "dtype": np.float64}


def fast_char_wb(v: TfidfVectorizer) -> bool:
    params = v.get_params()
    return all(params.get(k) == want for k, want in FAST_CHAR_WB.items())


def char_wb_ngrams(word: str, lo: int, hi: int) -> list[str]:
    """scikit-learn's char_wb n-grams of one (lowercased) word, in its order: the word padded with a space
    each side; a padded word no longer than n is one n-gram, counted once for every n >= its length."""
    w = f" {word} "
    if len(w) <= lo:
        return [w]
    return [w[i:i + n] for n in range(lo, min(hi, len(w)) + 1) for i in range(len(w) - n + 1)]


class CachedCharWb:
    """The char_wb analyzer as a callable (lowercase, whitespace split, n-grams inside padded words), each
    distinct word analysed once: char_wb n-grams never cross a word boundary, and catalog titles reuse a few
    thousand words, while scikit-learn rebuilds them for every word of every title in Python."""

    def __init__(self, ngram_range: tuple[int, int]) -> None:
        self.lo, self.hi = ngram_range
        self.cache: dict[str, list[str]] = {}

    def word(self, word: str) -> list[str]:
        grams = self.cache.get(word)
        if grams is None:
            grams = self.cache[word] = char_wb_ngrams(word, self.lo, self.hi)
        return grams

    def __call__(self, doc: str) -> list[str]:
        return [g for w in doc.lower().split() for g in self.word(w)]


def char_wb_fit_transform(v: TfidfVectorizer, texts: list[str]) -> csr_matrix:
    """`v.fit_transform(texts)` with FAST_CHAR_WB settings, the analysis cached per word (1.3x faster on the
    catalog; counting stays scikit-learn's): the same n-grams reach its counting, min_df, max_features and idf,
    so the fitted vectorizer is the same. The analyzer setting is restored before returning (the model file
    records "char_wb")."""
    v.set_params(analyzer=CachedCharWb(v.ngram_range))
    try:
        with warnings.catch_warnings():  # "ngram_range will not be used since analyzer is callable": it is, here
            warnings.filterwarnings("ignore", message=".*analyzer.*callable", category=UserWarning)
            return v.fit_transform(texts)
    finally:
        v.set_params(analyzer="char_wb")


def char_wb_transform(v: TfidfVectorizer, texts: list[str]) -> csr_matrix:
    """`v.transform(texts)` for a fitted vectorizer with FAST_CHAR_WB settings, ~5x faster: each distinct
    word's n-grams are looked up in the vocabulary once (CachedCharWb), then sublinear tf, idf and l2 norm
    as TfidfTransformer does (equal to `v.transform`; tests/unit/test_tfidf_file.py checks it)."""
    lo, hi = v.ngram_range
    vocab = v.vocabulary_
    cache: dict[str, np.ndarray] = {}
    rows: list[np.ndarray] = []
    for text in texts:
        ids = []
        for word in text.lower().split():
            hit = cache.get(word)
            if hit is None:
                grams = (vocab.get(g) for g in char_wb_ngrams(word, lo, hi))
                hit = cache[word] = np.fromiter((j for j in grams if j is not None), dtype=np.int64)
            ids.append(hit)
        rows.append(np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64))
    indptr = np.zeros(len(texts) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    x = csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(texts), len(vocab)))
    x.sum_duplicates()  # counts per (title, n-gram), indices sorted
    x.data = np.log(x.data) + 1.0  # sublinear tf
    x.data *= v.idf_[x.indices]
    return normalize(x, norm="l2", copy=False)


class TfidfBaseline:
    """TF-IDF (word + character n-grams) with one multinomial logistic regression per level.

    `use_title=False` makes the metadata-only linear expert of the audit: field=value and attribute
    tokens as words, no title, no character n-grams.
    """

    def __init__(self, p: TfidfParams, categorical: tuple[str, ...], use_description: bool,
                 use_title: bool = True, max_iter: int = 300, sgd_alpha: float = 0.0) -> None:
        self.categorical, self.use_description, self.use_title = categorical, use_description, use_title
        self.word = TfidfVectorizer(ngram_range=p.word_ngrams, sublinear_tf=True, min_df=1,
                                    max_features=p.max_features,
                                    # metadata tokens are whole words such as usage=casual or fabric=cotton
                                    token_pattern=r"(?u)\b\w\w+\b" if use_title else r"\S+")
        self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=p.char_ngrams, sublinear_tf=True,
                                    min_df=2, max_features=p.max_features) if use_title else None
        # sgd_alpha > 0: logistic loss by SGD for `max_iter` epochs (5 epochs: 1/5 of lbfgs' time on the
        # catalog at the same accuracy), for the audit's K-fold refits; 0 = the baseline's lbfgs.
        self.C, self.max_iter, self.sgd_alpha = p.C, max_iter, sgd_alpha
        self.clfs: list[LogisticRegression | SGDClassifier] = []

    def _x(self, frame: pd.DataFrame, fit: bool = False):
        text = tfidf_text(frame, self.categorical, self.use_description, getattr(self, "use_title", True))
        vecs = [v for v in (self.word, self.char) if v is not None]
        if fit:
            return hstack([char_wb_fit_transform(v, text) if fast_char_wb(v) else v.fit_transform(text)
                           for v in vecs]).tocsr()
        return hstack([char_wb_transform(v, text) if fast_char_wb(v) else v.transform(text) for v in vecs]).tocsr()

    def fit(self, frame: pd.DataFrame, labels: np.ndarray) -> TfidfBaseline:
        """labels: (N, L) class ids, one column per level to learn (L = 3 for the baseline)."""
        x = self._x(frame, fit=True)
        self.clfs = [self._classifier().fit(x, labels[:, i]) for i in range(labels.shape[1])]
        return self

    def _classifier(self) -> LogisticRegression | SGDClassifier:
        if getattr(self, "sgd_alpha", 0.0) > 0:
            return SGDClassifier(loss="log_loss", alpha=self.sgd_alpha, max_iter=self.max_iter, tol=None,
                                 n_jobs=2, random_state=0)
        return LogisticRegression(C=self.C, max_iter=getattr(self, "max_iter", 300))

    def predict_proba(self, frame: pd.DataFrame, n_classes: list[int]) -> list[np.ndarray]:
        """Probabilities over every class of the encoders (classes unseen by a classifier get 0)."""
        x = self._x(frame)
        out = []
        for clf, n in zip(self.clfs, n_classes):
            full = np.zeros((x.shape[0], n), dtype=np.float32)
            full[:, clf.classes_] = clf.predict_proba(x)
            out.append(full)
        return out


FORMAT = "deepfusion-tfidf/1"
# What transform() needs of a vectorizer; the fit-only settings (min_df, max_features) are not kept.
VECTORIZER_KEYS = ("analyzer", "ngram_range", "sublinear_tf", "token_pattern", "lowercase", "norm", "use_idf",
                   "smooth_idf", "binary", "strip_accents")


class TfidfFileError(ValueError):
    """A TF-IDF model file that is missing, corrupt or of another format."""


def _vectorizer_arrays(name: str, v: TfidfVectorizer) -> tuple[dict, dict[str, np.ndarray]]:
    terms = np.empty(len(v.vocabulary_), dtype=object)
    for term, j in v.vocabulary_.items():
        terms[j] = term
    settings = {k: v.get_params()[k] for k in VECTORIZER_KEYS}
    return settings, {f"{name}_terms": terms.astype(str), f"{name}_idf": v.idf_.astype(np.float64)}


def save_tfidf(model: TfidfBaseline, path: str | Path) -> None:
    """model.npz: arrays only (see the module docstring); written by the caller's atomic folder."""
    meta = {"format": FORMAT, "categorical": list(model.categorical), "use_description": model.use_description,
            "use_title": getattr(model, "use_title", True), "vectorizers": {}, "classifiers": []}
    arrays: dict[str, np.ndarray] = {}
    for name, v in (("word", model.word), ("char", model.char)):
        if v is not None:
            meta["vectorizers"][name], a = _vectorizer_arrays(name, v)
            arrays.update(a)
    for i, clf in enumerate(model.clfs):
        meta["classifiers"].append("sgd_log" if isinstance(clf, SGDClassifier) else "logreg")
        arrays.update({f"coef_{i}": clf.coef_, f"intercept_{i}": clf.intercept_, f"classes_{i}": clf.classes_})
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _vectorizer(settings: dict, terms: np.ndarray, idf: np.ndarray) -> TfidfVectorizer:
    v = TfidfVectorizer(**{**settings, "ngram_range": tuple(settings["ngram_range"])},
                        vocabulary={str(t): j for j, t in enumerate(terms)})
    v.idf_ = idf  # sets the fitted transformer; the vocabulary is fixed, so transform() needs nothing else
    return v


def _classifier(kind: str, coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray):
    # The same estimator class as trained: multinomial softmax (lbfgs) and one-vs-rest sigmoids (SGD) differ.
    clf = SGDClassifier(loss="log_loss") if kind == "sgd_log" else LogisticRegression()
    clf.coef_, clf.intercept_, clf.classes_ = coef, intercept, classes
    clf.n_features_in_ = coef.shape[1]
    return clf


def load_tfidf(path: str | Path) -> TfidfBaseline:
    """The baseline from its model.npz, without unpickling anything."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays["meta"]))
        if meta.get("format") != FORMAT:
            raise TfidfFileError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        model = TfidfBaseline.__new__(TfidfBaseline)
        model.categorical, model.use_description = tuple(meta["categorical"]), meta["use_description"]
        model.use_title = meta["use_title"]
        vecs = meta["vectorizers"]
        model.word = _vectorizer(vecs["word"], arrays["word_terms"], arrays["word_idf"])
        model.char = _vectorizer(vecs["char"], arrays["char_terms"], arrays["char_idf"]) if "char" in vecs else None
        model.clfs = [_classifier(kind, arrays[f"coef_{i}"], arrays[f"intercept_{i}"], arrays[f"classes_{i}"])
                      for i, kind in enumerate(meta["classifiers"])]
    except FileNotFoundError as exc:
        raise TfidfFileError(f"{path}: not found; run `dvc repro train_baseline@tfidf`") from exc
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, io.UnsupportedOperation) as exc:
        raise TfidfFileError(f"{path}: not a readable TF-IDF model ({type(exc).__name__}: {exc}); rerun "
                             "`dvc repro train_baseline@tfidf`") from exc
    return model
