"""Drift signals and their calibration on synthetic described frames (no model): normal batches stay quiet at
the chosen rate, each kind of shift fires on its own signal, unmeasurable columns are said so."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.monitoring import drift_signals as sig

TYPES = [f"type{i}" for i in range(12)]
SIGNALS = sig.Signals(("gender", "baseColour", "season", "usage"), ("price",),
                      ("masterCategory", "subCategory", "articleType"))


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
        SIGNALS.label: rng.choice(types, n),
    })
    emb = rng.normal(size=(n, 8)) + emb_shift
    for i in range(8):
        frame[f"img_{i}"] = emb[:, i]
        frame[f"txt_{i}"] = rng.normal(size=n)
    return frame


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(0)
    ref = sig.prepare(described(1500, rng), TYPES, pca_components=4, seed=0, signals=SIGNALS)
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
    batch.loc[:19, SIGNALS.label] = "Sarees"  # 10 % unknown to the model
    batch["price"] = np.nan
    batch["usage"] = ""
    out = judge(setting, batch)
    assert "unseen_articleType" in out["drifted"]
    assert out["not_measurable"]["price"].startswith("0 products carry it")
    assert out["not_measurable"]["usage"] == "empty in the batch"
    assert {"price", "usage"}.isdisjoint(s["signal"] for s in out["signals"])


def test_calibration_takes_each_null_batch_over_what_it_measured():
    """A null batch may lack a signal (too few photos in that draw, a column constant there): the null keeps one
    record per batch, and the signal's threshold rests on the batches that measured it."""
    rng = np.random.default_rng(4)
    null = [{"a": float(rng.normal()), "b": float(rng.normal(5, 2))} for _ in range(100)]
    for rec in null[::20]:  # 5 of 100 batches could not measure b
        del rec["b"]
    calib = sig.calibrate(null, false_alarm_rate=0.05, size=50)
    assert calib.measured == {"a": 100, "b": 95} and not calib.uncalibrated
    b = np.array([r["b"] for r in null if "b" in r])
    assert calib.mean["b"] == pytest.approx(b.mean()) and calib.std["b"] == pytest.approx(b.std(ddof=1))
    # The max-statistic pairs each batch's own signals: batch 0 (only a) contributes a's z alone.
    za = (np.array([r["a"] for r in null]) - calib.mean["a"]) / calib.std["a"]
    zb = {i: (r["b"] - calib.mean["b"]) / calib.std["b"] for i, r in enumerate(null) if "b" in r}
    z_max = [max(za[i], zb.get(i, -np.inf)) for i in range(100)]
    assert calib.z == pytest.approx(np.quantile(z_max, 0.95))


def test_a_signal_the_null_rarely_measures_gets_no_threshold_and_is_said_so(setting):
    ref, _ = setting
    rng = np.random.default_rng(6)
    null = [{"price": float(rng.normal(0.2, 0.05)), "title_length": float(rng.normal(0.1, 0.02))}
            for _ in range(50)]
    for rec in null[:10]:  # measured in 40 of 50 batches: under the 90 % a threshold needs
        del rec["price"]
    calib = sig.calibrate(null, false_alarm_rate=0.05, size=200)
    assert "price" not in calib.mean and "measured in only 40 of 50" in calib.uncalibrated["price"]
    batch = described(200, np.random.default_rng(8))
    values, skipped = sig.measure(ref, batch, seed=3)
    out = sig.decide(ref, batch, values, skipped, calib)
    assert "measured in only 40 of 50" in out["not_measurable"]["price"]
    assert all(s["signal"] != "price" for s in out["signals"])
    assert next(s for s in out["signals"] if s["signal"] == "title_length")["null_batches"] == 50


def test_null_values_keep_one_record_per_batch_even_when_a_draw_cannot_measure_a_signal(setting):
    ref, _ = setting
    rng = np.random.default_rng(9)
    pool = described(400, rng)
    pool.loc[:249, ["image_brightness", "image_white_share"]] = np.nan  # 5 in 8 held-out products without photo
    null = sig.null_values(ref, pool, 60, 30, seed=2)
    assert len(null) == 30
    lacking = [r for r in null if "image_embedding" not in r]
    assert lacking and len(lacking) < 30  # some draws had 20+ photos, some fewer
    calib = sig.calibrate(null, 0.05, 60)  # today's ragged-list calibrate failed right here
    assert ("image_embedding" in calib.uncalibrated) == (len(lacking) > 0.1 * 30) and np.isfinite(calib.z)
    assert calib.measured.get("text_embedding") == 30
