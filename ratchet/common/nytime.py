"""New York calendar dates of UTC times, with numpy and the standard library only."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

NY = ZoneInfo("America/New_York")
_NS_PER_S = 1_000_000_000
_NS_PER_HOUR = 3600 * _NS_PER_S
_NS_PER_DAY = 86_400 * _NS_PER_S


def unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for a 1-d integer array, by one stable sort
    (``np.unique`` imports ``numpy.ma`` on first use)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new = np.empty(ordered.shape[0], dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    inverse = np.empty(ordered.shape[0], dtype=np.intp)
    inverse[order] = np.cumsum(new) - 1
    return ordered[new], inverse


def _utc_offset_s(epoch_s: int) -> int:
    """New York's UTC offset (seconds) at an epoch second; a zone-aware time always has one."""
    offset = datetime.fromtimestamp(epoch_s, NY).utcoffset()
    assert offset is not None  # noqa: S101 # NY is a ZoneInfo: never None (narrows the type)
    return int(offset.total_seconds())


def ny_dates(ts_ns: np.ndarray) -> np.ndarray:
    """New York calendar date (days since 1970-01-01) of each UTC epoch-nanosecond time."""
    ts = np.asarray(ts_ns, dtype=np.int64)
    if ts.shape[0] == 0:
        return ts.copy()
    # The UTC offset changes only on whole UTC hours: look it up once per hour present.
    hours, inverse = unique_inverse(ts // _NS_PER_HOUR)
    offsets = np.array([_utc_offset_s(int(h) * 3600) for h in hours.tolist()],
                       dtype=np.int64) * _NS_PER_S
    return (ts + offsets[inverse.reshape(-1)]) // _NS_PER_DAY
