"""Arrow arrays straight from numpy buffers and Python strings.

``pa.array(...)`` (and ``pa.table({...})``) ask pyarrow's pandas shim whether the input is a
pandas object, which imports pandas: about 0.4 s of CPU and 40 MiB that the backtest command
otherwise never needs. These helpers build the same arrays with ``pa.Array.from_buffers``,
which does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

UTC_US = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _fixed(values: np.ndarray, dtype: np.dtype, typ: pa.DataType) -> pa.Array:
    arr = np.ascontiguousarray(values, dtype=dtype)
    return pa.Array.from_buffers(typ, arr.shape[0], [None, pa.py_buffer(arr)])


def f64(values: np.ndarray | Sequence[float]) -> pa.Array:
    """float64 array (NaN stays NaN, as pandas writes it)."""
    return _fixed(np.asarray(values, dtype=np.float64), np.dtype(np.float64), pa.float64())


def i64(values: np.ndarray | Sequence[int]) -> pa.Array:
    """int64 array."""
    return _fixed(np.asarray(values, dtype=np.int64), np.dtype(np.int64), pa.int64())


def ts_us(micros: np.ndarray | Sequence[int]) -> pa.Array:
    """``timestamp[us, tz=UTC]`` from epoch microseconds."""
    return _fixed(np.asarray(micros, dtype=np.int64), np.dtype(np.int64), UTC_US)


def micros(when: datetime) -> int:
    """Epoch microseconds of an aware (or UTC-naive) datetime, exactly."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    d = when - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def strings(values: Sequence[str], large: bool = False) -> pa.Array:
    """``string`` (or ``large_string``) array of Python strings."""
    enc = [v.encode() for v in values]
    offsets = np.zeros(len(enc) + 1, dtype=np.int64 if large else np.int32)
    if enc:
        np.cumsum(np.fromiter(map(len, enc), dtype=np.int64, count=len(enc)), out=offsets[1:])
    typ = pa.large_string() if large else pa.string()
    return pa.Array.from_buffers(typ, len(enc), [None, pa.py_buffer(offsets),
                                                 pa.py_buffer(b"".join(enc))])


def coded_strings(codes: np.ndarray, names: Sequence[str]) -> pa.Array:
    """``string`` array whose row i is ``names[codes[i]]``.

    Built here rather than by decoding a dictionary array, which imports pyarrow.compute
    (~0.05 s) for this one column.
    """
    enc = [n.encode() for n in names]
    codes = np.asarray(codes, dtype=np.intp)
    lengths = np.array([len(e) for e in enc], dtype=np.int32)
    offsets = np.zeros(codes.shape[0] + 1, dtype=np.int32)
    if codes.shape[0]:
        np.cumsum(lengths[codes], out=offsets[1:])
    data = b"".join([enc[c] for c in codes.tolist()])
    return pa.Array.from_buffers(pa.string(), codes.shape[0],
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def table(columns: dict[str, pa.Array]) -> pa.Table:
    """A table from named arrays (no pandas check)."""
    return pa.Table.from_arrays(list(columns.values()), names=list(columns))
