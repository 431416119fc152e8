"""Catalog time slicing: replay (the batches after the reference date) and backtest (the as-of model's training
products) cut the catalog at the same instant, so every dated product lands in exactly one of them."""
from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from components.monitoring import replay, timeslice

MIDNIGHT = datetime(2016, 1, 1, tzinfo=UTC).timestamp()  # the first instant after reference date 2015-12-31


def test_the_reference_day_ends_at_the_next_midnight():
    assert timeslice.day_end("2015-12-31") == MIDNIGHT
    assert timeslice.month_end("2016-02") == datetime(2016, 3, 1, tzinfo=UTC).timestamp()
    assert timeslice.month_end("2016-11_to_2016-12") == datetime(2017, 1, 1, tzinfo=UTC).timestamp()


def test_a_product_stamped_exactly_at_midnight_falls_in_exactly_one_slice():
    dates = pd.Series([MIDNIGHT - 1, MIDNIGHT - 0.5, MIDNIGHT, MIDNIGHT + 0.5, np.nan])
    end = timeslice.day_end("2015-12-31")
    before, after = timeslice.before(dates, end), timeslice.after(dates, end)
    assert before.tolist() == [True, True, False, False, False]
    assert after.tolist() == [False, False, True, True, False]  # undated: neither
    # replay's batches are exactly the "after" products, the midnight one in January
    batches = replay.month_batches(dates, end, min_rows=1)
    assert batches == {"2016-01": [2, 3]}


def test_replay_and_backtest_partition_every_dated_product():
    rng = np.random.default_rng(0)
    dates = pd.Series(np.r_[MIDNIGHT + rng.integers(-86400 * 40, 86400 * 40, 500), MIDNIGHT, MIDNIGHT - 1])
    end = timeslice.day_end("2015-12-31")
    in_batches = sorted(i for rows in replay.month_batches(dates, end, min_rows=10).values() for i in rows)
    as_of = np.flatnonzero(timeslice.before(dates, end)).tolist()
    assert sorted(in_batches + as_of) == list(range(len(dates)))
