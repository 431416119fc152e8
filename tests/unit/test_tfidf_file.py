"""The TF-IDF expert's file: plain arrays, loaded without pickle, predicting exactly as the model that was saved."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import TfidfParams
from components.models.tfidf import TfidfBaseline, TfidfFileError, load_tfidf, save_tfidf

WORDS = {0: "shirt cotton collar", 1: "shoe leather lace", 2: "watch steel dial"}


def catalog(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    titles = [f"{WORDS[int(c)]} {rng.choice(['nike', 'puma', 'titan'])} {rng.integers(100)}" for c in y]
    frame = pd.DataFrame({"productDisplayName": titles, "gender": rng.choice(["Men", "Women"], n),
                          "articleAttributes": [""] * n})
    # Level 2 has two classes only: LogisticRegression's binary (sigmoid) path must survive the round trip too.
    return frame, np.stack([y, y, (y > 0).astype(int)], axis=1)


@pytest.mark.parametrize("use_title,sgd_alpha", [(True, 0.0), (False, 1e-4)])
def test_round_trip_predicts_identically_and_needs_no_pickle(tmp_path, use_title, sgd_alpha):
    frame, labels = catalog(120, 0)
    p = TfidfParams(word_ngrams=(1, 2), char_ngrams=(2, 4), max_features=5000, C=4.0)
    model = TfidfBaseline(p, ("gender",), False, use_title=use_title, max_iter=20, sgd_alpha=sgd_alpha)
    model.fit(frame, labels)
    save_tfidf(model, tmp_path / "model.npz")
    with np.load(tmp_path / "model.npz", allow_pickle=False) as z:  # raises if anything needs unpickling
        assert all(z[k].dtype != object for k in z.files)
    loaded = load_tfidf(tmp_path / "model.npz")
    test, _ = catalog(40, 1)
    for a, b in zip(model.predict_proba(test, [3, 3, 2]), loaded.predict_proba(test, [3, 3, 2])):
        np.testing.assert_array_equal(a, b)
    assert (loaded.char is None) == (not use_title)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(TfidfFileError, match="not found.*train_baseline@tfidf"):
        load_tfidf(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(TfidfFileError, match="junk.npz: not a readable TF-IDF model"):
        load_tfidf(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", meta=np.array('{"format": "something-else"}'))
    with pytest.raises(TfidfFileError, match="expected 'deepfusion-tfidf/1'"):
        load_tfidf(tmp_path / "other.npz")


@pytest.mark.parametrize("ngrams", [(2, 5), (1, 3), (4, 6)])
def test_char_wb_transform_equals_scikit_learn(ngrams):
    """The per-word cached char_wb transform is scikit-learn's `transform`, word edges and short words included."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from components.models.tfidf import char_wb_transform, fast_char_wb

    frame, _ = catalog(200, 2)
    train = list(frame["productDisplayName"]) + ["a b", "Ünïcode ÉÇ", "x-ray 3/4 sleeve"]
    v = TfidfVectorizer(analyzer="char_wb", ngram_range=ngrams, sublinear_tf=True, min_df=2).fit(train)
    assert fast_char_wb(v)
    test = train[:50] + ["", "   ", "a", "ab", "Shirt shirt SHIRT", "tab\tand\nnewline  double", "é" * 40,
                         "unseen zzqx words", "a b c d e f g"]
    np.testing.assert_allclose(char_wb_transform(v, test).toarray(), v.transform(test).toarray(), rtol=0, atol=1e-12)
    assert not fast_char_wb(TfidfVectorizer(analyzer="char_wb", binary=True))  # other settings: scikit-learn's path


def test_char_wb_fit_with_the_cached_analyzer_fits_the_same_vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    from components.models.tfidf import char_wb_fit_transform

    frame, _ = catalog(300, 3)
    texts = list(frame["productDisplayName"]) + ["a", "", "Ünïcode ÉÇ", "x" * 30]
    settings = {"analyzer": "char_wb", "ngram_range": (2, 5), "sublinear_tf": True, "min_df": 2, "max_features": 400}
    ref, ours = TfidfVectorizer(**settings), TfidfVectorizer(**settings)
    x_ref, x_ours = ref.fit_transform(texts), char_wb_fit_transform(ours, texts)
    assert ours.vocabulary_ == ref.vocabulary_ and ours.analyzer == "char_wb"
    np.testing.assert_array_equal(ours.idf_, ref.idf_)
    np.testing.assert_allclose(x_ours.toarray(), x_ref.toarray(), rtol=0, atol=1e-12)
