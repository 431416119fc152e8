"""Drift signals and their calibration on synthetic described frames (no model): normal batches stay quiet at
the chosen rate, each kind of shift fires on its own signal, unmeasurable columns are said so."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.ops import drift_signals as sig

TYPES = [f"type{i}" for i in range(12)]


def described(n: int, rng: np.random.Generator, brightness: float = 0.8, emb_shift: float = 0.0,
              types: list[str] = TYPES) -> pd.DataFrame:
    frame = pd.DataFrame({
        "gender": rng.choice(["Men", "Women", "Unisex"], n, p=[0.5, 0.4, 0.1]),
        "baseColour": rng.choice(["Black", "Blue", "Red", ""], n),
        "season": rng.choice(["Summer", "Winter"], n),
        "usage": rng.choice(["Casual", "Formal"], n, p=[0.8, 0.2]),
        "pred_masterCategory": rng.choice(["Apparel", "Footwear"], n, p=[0.7, 0.3]),
        "pred_articleType": rng.choice(types, n),
        "price": rng.lognormal(7, 0.5, n),
        "title_length": rng.poisson(6, n),
        "title_oov_share": rng.beta(1, 20, n),
        "pred_confidence": rng.beta(20, 1, n),
        "image_brightness": np.clip(rng.normal(brightness, 0.05, n), 0, 1),
        "image_white_share": rng.beta(5, 3, n),
        sig.LABEL: rng.choice(types, n),
    })
    emb = rng.normal(size=(n, 8)) + emb_shift
    for i in range(8):
        frame[f"img_{i}"] = emb[:, i]
        frame[f"txt_{i}"] = rng.normal(size=n)
    return frame


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(0)
    ref = sig.prepare(described(1500, rng), TYPES, pca_components=4, seed=0)
    pool = described(1500, rng)
    calib = sig.calibrate(sig.null_values(ref, pool, 200, 120, seed=1), false_alarm_rate=0.05, size=200)
    return ref, calib


def judge(setting, batch: pd.DataFrame) -> dict:
    ref, calib = setting
    values, skipped = sig.measure(ref, batch, seed=3)
    return sig.decide(ref, batch, values, skipped, calib)


def test_calibration_gives_one_threshold_per_signal_above_its_null_mean(setting):
    _, calib = setting
    assert len(calib.mean) == 15 and calib.z > 1.5  # max over 15 signals: well above a single-signal quantile
    assert all(calib.threshold(k) > calib.mean[k] for k in calib.mean)


def test_normal_batches_stay_quiet_near_the_chosen_rate(setting):
    rng = np.random.default_rng(7)
    fired = sum(judge(setting, described(200, rng))["drift_detected"] for _ in range(40))
    assert fired <= 6  # 5 % per batch; 40 batches: P(more than 6 | p = 0.05) < 1 %


@pytest.mark.parametrize(("change", "signal"), [
    (dict(brightness=0.5), "image_brightness"),
    (dict(emb_shift=0.6), "image_embedding"),
    (dict(types=TYPES[:2]), "pred_articleType"),
])
def test_each_shift_fires_on_its_signal_with_a_sentence(setting, change, signal):
    out = judge(setting, described(200, np.random.default_rng(11), **change))
    assert out["drift_detected"] and signal in out["drifted"]
    s = next(x for x in out["signals"] if x["signal"] == signal)
    assert s["value"] > s["threshold"] and s["sentence"] in out["reasons"]


def test_unseen_labels_fire_and_unmeasurable_columns_are_named(setting):
    batch = described(200, np.random.default_rng(5))
    batch.loc[:19, sig.LABEL] = "Sarees"  # 10 % unknown to the model
    batch["price"] = np.nan
    batch["usage"] = ""
    out = judge(setting, batch)
    assert "unseen_articleType" in out["drifted"]
    assert out["not_measurable"]["price"].startswith("0 products carry it")
    assert out["not_measurable"]["usage"] == "empty in the batch"
    assert {"price", "usage"}.isdisjoint(s["signal"] for s in out["signals"])
