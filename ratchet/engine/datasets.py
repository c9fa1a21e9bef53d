"""Where a backtest's bars come from: data folders, bar stores, intervals, resampling.

``plan_backtest`` resolves settings, the data folder and the symbols as ``cli.py backtest``
does before it reads any bars (``show-config`` and sweeps use it too); ``load_datasets`` reads
(and if needed resamples) every symbol's bars.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from feeds.store import (
    BarArrays,
    arrays_from_frame,
    read_arrays,
    read_bars,
    resample_bars,
    resolve_datasets,
    typical_spacing,
)
from ratchet.common.config import INTERVAL_SECONDS, Settings, load_settings_with_sources
from ratchet.common.errors import ConfigError, DataError
from ratchet.common.paths import BUNDLED_BARS

DEFAULT_BARS = BUNDLED_BARS


def native_interval(path: Path, arrays: BarArrays | None = None) -> str | None:
    """The bar interval of a dataset folder: its name (``.../1Min``) or the typical spacing."""
    for part in (path.name, path.parent.name):
        if part in INTERVAL_SECONDS:
            return part
    if arrays is not None and len(arrays) > 2:
        return interval_from_spacing(int(np.median(np.diff(arrays.ts[:5000])) // 1_000_000_000))
    return None


def interval_from_spacing(step: int | None) -> str | None:
    """Interval name for a typical spacing in seconds (daily bars: 23-25 h across DST)."""
    if step is None:
        return None
    if step >= 86_400 - 3600:
        return "1Day"
    for name, secs in INTERVAL_SECONDS.items():
        if secs == step:
            return name
    return None


def _folder_interval(data: Path) -> str | None:
    """Native interval of a data folder or file, from its name or its first dataset."""
    named = native_interval(data)
    if named is not None or not data.exists():
        return named
    try:
        first = next(iter(resolve_datasets(data, None).values()))
    except DataError:
        return None  # the real load reports the problem with its proper message
    return interval_from_spacing(typical_spacing(first))


def store_intervals(data: Path) -> list[str]:
    """Interval folders (``1Day``, ``1Min``...) directly under ``data`` when it is a store
    root (``data/bars``, what ``data import/info/download`` and ``alpaca-sim`` take)."""
    if not data.is_dir():
        return []
    return sorted(p.name for p in data.iterdir() if p.is_dir() and p.name in INTERVAL_SECONDS)


def pick_store_interval(data: Path, interval: str | None) -> Path:
    """The dataset folder to read for ``--data``: ``data`` itself, or for a store root its
    ``--interval`` folder, else its only interval folder; several and none asked for: a
    one-line error naming them."""
    present = store_intervals(data)
    if not present:
        return data
    if interval is not None:
        if interval in present:
            return data / interval
        finer = [i for i in present if INTERVAL_SECONDS[i] < INTERVAL_SECONDS[interval]
                 and INTERVAL_SECONDS[interval] % INTERVAL_SECONDS[i] == 0]
        if finer:  # resampled from the finest that divides it (5Min from 1Min)
            return data / max(finer, key=lambda i: INTERVAL_SECONDS[i])
        raise ConfigError(f"{data} is a bar store with {', '.join(present)} bars; none makes "
                          f"{interval} bars (use --interval {' or '.join(present)})")
    if len(present) == 1:
        return data / present[0]
    raise ConfigError(f"{data} is a bar store with several intervals ({', '.join(present)}): "
                      f"pick one with --interval, e.g. --interval {present[-1]}")


def default_data_dir(interval: str) -> Path:
    """Bundled bars at ``interval`` if present, else the bundled 1-minute bars."""
    exact = DEFAULT_BARS / interval
    return exact if exact.is_dir() else DEFAULT_BARS / "1Min"


def load_datasets(
    data: Path,
    symbols: tuple[str, ...] | None,
    interval: str,
    end: datetime | None = None,
    drop_bad: bool = False,
) -> dict[str, BarArrays]:
    """Read (and if needed resample) every symbol's bars up to ``end``."""
    datasets = resolve_datasets(data, symbols)
    out: dict[str, BarArrays] = {}
    for sym, path in datasets.items():
        arrays = read_arrays(path, end=end, drop_bad=drop_bad, symbol=sym)
        native = native_interval(Path(data) if Path(data).is_dir() else path, arrays)
        if native is not None and native != interval:
            if INTERVAL_SECONDS[native] > INTERVAL_SECONDS[interval]:
                raise ConfigError(
                    f"{path} holds {native} bars; cannot make {interval} bars from them "
                    f"(use --interval {native} or a finer data set)"
                )
            frame = resample_bars(read_bars(path, end=end, drop_bad=drop_bad), interval)
            arrays = arrays_from_frame(sym, frame)
        if len(arrays) == 0:
            raise DataError(f"{sym}: no bars in {path}" if end is None else
                            f"{sym}: no bars up to {end} in {path} (check --start/--end)")
        out[sym] = arrays
    return out


def plan_backtest(data: Path | None, config_file: Path | None, flags: dict[str, Any]
                  ) -> tuple[Settings, dict[str, str], Path, tuple[str, ...] | None]:
    """Settings, their sources, the data folder and the symbols asked for (None: every
    symbol in the folder), resolved as ``backtest`` does before it reads any bars."""
    base = Settings(symbols=("X",))  # symbols default to what the data folder holds
    overrides = {k: v for k, v in flags.items() if v is not None}
    settings, sources = load_settings_with_sources(config_file, overrides, base=base)
    data_dir = Path(data) if data is not None else default_data_dir(settings.bar_interval)
    interval_asked = flags.get("interval") is not None or \
        settings.bar_interval != Settings.bar_interval
    data_dir = pick_store_interval(data_dir, settings.bar_interval if interval_asked else None)
    if flags.get("interval") is None and settings.bar_interval == Settings.bar_interval:
        # No interval asked for: trade the bars at the interval they are stored in.
        native = _folder_interval(data_dir)
        if native is not None and native != settings.bar_interval:
            settings = settings.replace(bar_interval=native)
            sources["interval"] = f"the bars in {data_dir}"
    explicit = flags.get("symbols") is not None or settings.symbols != ("X",)
    return settings, sources, data_dir, settings.symbols if explicit else None
