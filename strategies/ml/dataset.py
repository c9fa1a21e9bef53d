"""Training data: bars in session, labels, and the pooled feature/label rows of all symbols."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ratchet.common.config import INTERVAL_SECONDS
from ratchet.common.errors import DataError
from strategies.features import compute_features

logger = logging.getLogger(__name__)

#: Default label horizon (bars) per bar interval: roughly a quarter hour to a few days.
DEFAULT_HORIZONS: dict[str, int] = {
    "1Min": 15, "2Min": 10, "3Min": 10, "5Min": 6, "10Min": 6, "15Min": 4, "30Min": 4,
    "1Hour": 3, "1Day": 5,
}  # fmt: skip


def label_up(close: np.ndarray, horizon: int) -> np.ndarray:
    """1.0 where ``close[i + horizon] > close[i]``, 0.0 where not, NaN for the last rows."""
    n = close.shape[0]
    out = np.full(n, np.nan)
    if horizon < 1:
        raise ValueError("horizon must be at least 1 bar")
    if n > horizon:
        out[: n - horizon] = (close[horizon:] > close[: n - horizon]).astype(np.float64)
    return out


def infer_interval(data_dir: Path, frames: Mapping[str, pd.DataFrame]) -> str:
    """The bar interval of loaded bars: the folder name if it is one, else the median spacing."""
    for part in (Path(data_dir).name, Path(data_dir).parent.name):  # .../1Min or .../1Min/X
        if part in INTERVAL_SECONDS:
            return part
    spacings = [
        np.median(np.diff(pd.DatetimeIndex(f["timestamp"]).asi8)) / 1e9
        for f in frames.values()
        if len(f) > 2
    ]
    if spacings:
        seconds = float(np.median(spacings))
        # Daily bars skip weekends and holidays (the median is still a day) and move by
        # 23-25 h across daylight-saving changes.
        if abs(seconds - 86_400) <= 3600:
            return "1Day"
        for name, length in INTERVAL_SECONDS.items():
            if abs(seconds - length) < 1:
                return name
    raise DataError(f"cannot tell the bar interval of {data_dir}: pass --interval")


def load_training_bars(
    data_dir: Path,
    symbols: Sequence[str] | None,
    start: str | None = None,
    end: str | None = None,
    interval: str | None = None,
    drop_bad: bool = False,
    extended_hours: bool = False,
) -> tuple[dict[str, pd.DataFrame], str]:
    """Bars per symbol from the bar store, resampled to ``interval`` when it is coarser.

    Only the bars the Strategy would see are kept (``feeds.sessions``: regular hours, or the
    extended session with ``extended_hours``), so the model learns on the bars it trades.
    """
    from feeds.store import read_bars, resample_bars, resolve_datasets

    datasets = resolve_datasets(Path(data_dir), list(symbols) if symbols else None)
    frames = {s: read_bars(p, start, end, drop_bad) for s, p in datasets.items()}
    source = infer_interval(Path(data_dir), frames)
    if interval is None or interval == source:
        return _in_session(frames, source, extended_hours), source
    if interval not in INTERVAL_SECONDS:
        raise DataError(f"unknown interval {interval!r}: use one of {', '.join(INTERVAL_SECONDS)}")
    if INTERVAL_SECONDS[interval] < INTERVAL_SECONDS[source]:
        raise DataError(
            f"{data_dir} holds {source} bars; cannot make finer {interval} bars from them "
            "(pick a coarser --interval or finer data)"
        )
    logger.info("resampling %s bars to %s", source, interval)
    return _in_session({s: resample_bars(f, interval) for s, f in frames.items()}, interval,
                       extended_hours), interval


def _in_session(frames: dict[str, pd.DataFrame], interval: str,
                extended_hours: bool) -> dict[str, pd.DataFrame]:
    from feeds.sessions import session_codes, tradeable

    out = {}
    for sym, frame in frames.items():
        ts = pd.DatetimeIndex(frame["timestamp"]).as_unit("ns").asi8
        keep = tradeable(session_codes(ts, INTERVAL_SECONDS[interval], extended_hours),
                         extended_hours)
        out[sym] = frame if keep.all() else frame[keep].reset_index(drop=True)
    return out


@dataclass
class Dataset:
    """Labeled feature rows of all symbols, pooled, with their place on a common time grid."""

    symbols: list[str]
    #: The sorted union of all bar times (int64 ns); ``pos`` indexes it.
    grid: np.ndarray
    symbol_idx: np.ndarray
    ts: np.ndarray
    pos: np.ndarray
    #: Time of the bar whose close decides the label (int64 ns).
    label_end: np.ndarray
    X: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


def build_dataset(frames: Mapping[str, pd.DataFrame], horizon: int) -> Dataset:
    """Features and labels of every symbol, keeping rows with complete features and a label."""
    symbols = sorted(frames)
    if not symbols:
        raise DataError("no bars to train on")
    grid = np.unique(
        np.concatenate([pd.DatetimeIndex(frames[s]["timestamp"]).asi8 for s in symbols])
    )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("sym", "ts", "end", "X", "y")}
    for k, sym in enumerate(symbols):
        f = frames[sym]
        ts = pd.DatetimeIndex(f["timestamp"]).asi8
        X = compute_features(f).to_numpy()
        y = label_up(f["close"].to_numpy(np.float64), horizon)
        end = np.full(ts.shape[0], np.iinfo(np.int64).max)
        end[: max(ts.shape[0] - horizon, 0)] = ts[horizon:]
        keep = ~np.isnan(X).any(axis=1) & ~np.isnan(y)
        parts["sym"].append(np.full(int(keep.sum()), k))
        parts["ts"].append(ts[keep])
        parts["end"].append(end[keep])
        parts["X"].append(X[keep])
        parts["y"].append(y[keep].astype(np.int64))
    ts_all = np.concatenate(parts["ts"])
    order = np.argsort(ts_all, kind="stable")
    return Dataset(
        symbols=symbols,
        grid=grid,
        symbol_idx=np.concatenate(parts["sym"])[order],
        ts=ts_all[order],
        pos=np.searchsorted(grid, ts_all[order]),
        label_end=np.concatenate(parts["end"])[order],
        X=np.concatenate(parts["X"])[order],
        y=np.concatenate(parts["y"])[order],
    )

