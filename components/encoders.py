"""Encoders: vocabularies, hashed n-grams, metadata and label maps, and the pure functions that apply them.

Fitted on the train split only (stage `features`). Training, evaluation, batch prediction and the MLflow
model all call `encode_frame` with the same Encoders: one preprocessing path.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.catalog import ATTRIBUTES, TITLE, attribute_tokens, product_text
from components.config import CatalogSchema, FeaturesParams

log = logging.getLogger(__name__)

PAD, UNK = 0, 1
_TOKEN = re.compile(r"[a-z0-9]+")


class FeatureError(ValueError):
    """A forbidden or unknown feature was requested."""


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _bucket(gram: str, buckets: int) -> int:
    return zlib.crc32(gram.encode()) % (buckets - 1) + 1


def subword_ids(text: str, buckets: int, limit: int, char_ngrams: tuple[int, int] = (3, 3)) -> list[int]:
    """Hashed n-grams of a title (fastText-style): word unigrams and bigrams first, then the character
    n-grams of each word with boundaries ("<ts", "tsh", ..., "ts>"). Words come first so that a long
    title loses character n-grams, never its words, at `limit`."""
    words = tokenize(text)
    grams = [f"w:{w}" for w in words] + [f"w:{a} {b}" for a, b in zip(words, words[1:])]
    ids = [_bucket(g, buckets) for g in grams[:limit]]
    for word in words:
        if len(ids) >= limit:
            break
        ids += _char_ids(word, buckets, *char_ngrams)
    return ids[:limit]


@functools.lru_cache(maxsize=1 << 16)
def _char_ids(word: str, buckets: int, lo: int, hi: int) -> tuple[int, ...]:
    """A word's hashed character n-grams with boundaries; cached: titles reuse a few thousand words."""
    w = f"<{word}>"
    return tuple(_bucket(w[i : i + n], buckets) for n in range(lo, hi + 1) for i in range(len(w) - n + 1))


def _vocab(counter: Counter, min_count: int) -> dict[str, int]:
    kept = sorted(t for t, c in counter.items() if c >= min_count)
    return {t: i + 2 for i, t in enumerate(kept)}  # 0 = pad, 1 = unknown


@dataclass
class Encoders:
    """Everything needed to turn a raw catalog row into model inputs, and indices into labels."""

    max_title_tokens: int
    max_attr_tokens: int
    use_description: bool
    subword_buckets: int
    max_subwords: int
    char_ngrams: tuple[int, int]
    vocab: dict[str, int]
    attr_vocab: dict[str, int]
    categorical: dict[str, dict[str, int]]  # field -> value -> id (0 = missing/unknown)
    numeric: dict[str, tuple[float, float]]  # field -> (mean, std) of the transformed value
    labels: dict[str, list[str]]  # level -> class names (index = class id), coarsest level first
    taxonomy: list[tuple[str, ...]]  # label paths (one name per level) seen in training
    text_pretrained: str  # "" = `vocab` ids in `tokens`; else the named pretrained model's WordPiece ids

    @property
    def levels(self) -> tuple[str, ...]:
        """The catalog's label levels, coarsest first (the order `labels` was fitted in)."""
        return tuple(self.labels)

    def model_sizes(self) -> dict:
        """The data-decided fields of models.fusion.ModelConfig: table sizes and class counts."""
        return {"vocab_size": len(self.vocab) + 2, "subword_buckets": self.subword_buckets,
                "attr_vocab_size": len(self.attr_vocab) + 2,
                "cardinalities": tuple(len(v) + 1 for v in self.categorical.values()),
                "n_numeric": 2 * len(self.numeric), "n_classes": tuple(len(v) for v in self.labels.values()),
                "text_pretrained": self.text_pretrained}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Encoders:
        d = dict(d)
        d["numeric"] = {k: tuple(v) for k, v in d["numeric"].items()}
        d["taxonomy"] = [tuple(p) for p in d["taxonomy"]]
        d["char_ngrams"] = tuple(d["char_ngrams"])
        d.setdefault("text_pretrained", "")  # encoders written before the option existed
        return cls(**d)


def _numeric_transform(field: str, values: pd.Series) -> np.ndarray:
    v = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
    # Prices span 50..30,000 INR: log scale keeps them comparable.
    return np.log1p(np.clip(v, 0, None)) if "price" in field.lower() else v


def fit_encoders(train: pd.DataFrame, p: FeaturesParams, schema: CatalogSchema, all_labels: pd.DataFrame
                 ) -> Encoders:
    """Fit on train rows only; label sets come from the curated table (validate ensures all are in train)."""
    forbidden = {*schema.levels, *schema.restates, schema.label_path.column} - {""}
    bad = sorted(set(schema.categorical + schema.numeric + schema.attributes) & forbidden)
    if bad:
        raise FeatureError(f"params.catalog: {bad} are listed as features but are label levels or restate them "
                           "(catalog.restates); a new listing would not have them")
    tok = Counter(t for text in product_text(train, p.use_description) for t in tokenize(text))
    attr = Counter(t for raw in train[ATTRIBUTES] for t in attribute_tokens(raw))
    categorical = {}
    for f in schema.categorical:
        vals = sorted(v for v in train[f].astype(str).unique() if v)
        categorical[f] = {v: i + 1 for i, v in enumerate(vals)}
    numeric = {}
    for f in schema.numeric:
        v = _numeric_transform(f, train[f])
        mean, std = float(np.nanmean(v)), float(np.nanstd(v))
        numeric[f] = (mean if np.isfinite(mean) else 0.0, std if std > 0 else 1.0)
    labels = {lvl: sorted(all_labels[lvl].unique().tolist()) for lvl in schema.levels}
    taxonomy = sorted({tuple(r) for r in train[list(schema.levels)].itertuples(index=False)})
    return Encoders(p.max_title_tokens, p.max_attr_tokens, p.use_description, p.subword_buckets, p.max_subwords,
                    p.char_ngrams, _vocab(tok, p.min_token_count),
                    _vocab(attr, p.min_token_count), categorical, numeric, labels, taxonomy, p.text_pretrained)


def _pad(seqs: list[list[int]], length: int) -> np.ndarray:
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[:length]
        out[i, : len(s)] = s
    return out


def encode_frame(frame: pd.DataFrame, enc: Encoders) -> dict[str, np.ndarray]:
    """Raw catalog rows -> model input arrays. Missing columns count as missing values."""
    n = len(frame)

    def col(name: str) -> pd.Series:
        return frame[name] if name in frame else pd.Series([""] * n, index=frame.index)

    texts = product_text(frame.assign(**{TITLE: col(TITLE)}), enc.use_description)
    if enc.text_pretrained:
        from components.models.pretrained_text import encode_titles

        tokens = encode_titles(texts, enc.text_pretrained, enc.max_title_tokens)
    else:
        tokens = _pad([[enc.vocab.get(t, UNK) for t in tokenize(x)] for x in texts], enc.max_title_tokens)
    subwords = _pad([subword_ids(x, enc.subword_buckets, enc.max_subwords, enc.char_ngrams) for x in texts],
                    enc.max_subwords)
    attrs = _pad([[enc.attr_vocab.get(t, UNK) for t in attribute_tokens(str(r))] for r in
                  col(ATTRIBUTES).fillna("")], enc.max_attr_tokens)
    cat = np.stack([col(f).fillna("").astype(str).map(lambda v, m=m: m.get(v, 0)).to_numpy(np.int64)
                    for f, m in enc.categorical.items()], axis=1) if enc.categorical else np.zeros((n, 0))
    nums, missing = [], []
    for f, (mean, std) in enc.numeric.items():
        v = _numeric_transform(f, col(f).replace("", np.nan))
        missing.append(np.isnan(v))
        nums.append(np.where(np.isnan(v), 0.0, (v - mean) / std))
    num = (np.concatenate([np.stack(nums, 1), np.stack(missing, 1)], axis=1).astype(np.float32) if nums
           else np.zeros((n, 0), dtype=np.float32))  # a catalog with no numeric metadata
    return {"tokens": tokens, "subwords": subwords, "attrs": attrs, "cat": cat.astype(np.int64), "num": num}


def encode_labels(frame: pd.DataFrame, enc: Encoders) -> np.ndarray:
    """(N, levels) class ids, coarsest level first; -1 where a label is unknown to the encoders."""
    cols = []
    for lvl in enc.levels:
        index = {c: i for i, c in enumerate(enc.labels[lvl])}
        cols.append(frame[lvl].map(lambda v, ix=index: ix.get(v, -1)).to_numpy(np.int64))
    return np.stack(cols, axis=1)


def load_encoders(folder: str | Path) -> Encoders:
    with (Path(folder) / "encoders.json").open(encoding="utf-8") as fh:
        return Encoders.from_dict(json.load(fh))
