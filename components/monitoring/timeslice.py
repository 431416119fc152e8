"""Catalog time slicing by `catalogAddDate` (seconds since the epoch, UTC): one rule for replay and backtest.

A reference date names a whole day: "2015-12-31" covers every product added up to 2015-12-31 23:59:59.999.
Each slice is half-open, [start, end), so every dated product falls in exactly one of "reference" and
"after", also one stamped exactly at the next midnight (it belongs to the new day), and fractional seconds
are no special case.
"""
from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd


def day_end(reference_date: str) -> float:
    """The first instant after `reference_date` (YYYY-MM-DD, UTC): the reference is everything before it."""
    day = datetime.fromisoformat(reference_date).replace(tzinfo=UTC)
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + 86400


def month_end(name: str) -> float:
    """The first instant after the month a replay batch is named after (YYYY-MM or ..._to_YYYY-MM)."""
    y, m = map(int, name.split("_to_")[-1].split("-"))
    return datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC).timestamp()


def before(dates: pd.Series, end: float) -> np.ndarray:
    """Products added before `end` (undated ones: neither before nor after)."""
    return (dates < end).to_numpy()


def after(dates: pd.Series, end: float) -> np.ndarray:
    """Products added at or after `end`."""
    return (dates >= end).to_numpy()
