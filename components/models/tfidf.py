"""The classical baseline: TF-IDF (word + character n-grams) with a linear model per level (scikit-learn).

It lives in an importable module so its pickle (model.joblib) loads from any entry point.
"""
from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier

from components.catalog import attribute_tokens, product_text
from components.config import TfidfParams


def tfidf_text(frame: pd.DataFrame, categorical: tuple[str, ...], use_description: bool,
               use_title: bool = True) -> list[str]:
    """Title plus metadata as words (field=value tokens) for the TF-IDF baseline; metadata alone without title."""
    texts = product_text(frame, use_description) if use_title else [""] * len(frame)
    out = []
    for i, (_, row) in enumerate(frame.iterrows()):
        meta = [f"{f}={str(row.get(f, '')).replace(' ', '_').lower()}" for f in categorical if row.get(f, "")]
        meta += [t.replace(" ", "_") for t in attribute_tokens(str(row.get("articleAttributes", "")))]
        out.append(f"{texts[i]} {' '.join(meta)}")
    return out


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
            return hstack([v.fit_transform(text) for v in vecs]).tocsr()
        return hstack([v.transform(text) for v in vecs]).tocsr()

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


def load_tfidf(path: str | Path) -> TfidfBaseline:
    """The pickled baseline the train_baseline stage wrote (our own artifact: joblib is trusted here)."""
    model = joblib.load(path)
    if not isinstance(model, TfidfBaseline):
        raise TypeError(f"{path}: expected a TfidfBaseline, found {type(model).__name__}; rerun "
                        "`dvc repro train_baseline@tfidf`")
    return model
