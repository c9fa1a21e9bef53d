"""Benchmark: loading bars into Backtrader feeds from the Parquet store vs. from CSV.

    .venv/bin/python benchmarks/bench_load.py [--symbols 20] [--bars 100000] [--keep DIR]

Generates ``symbols x bars`` synthetic 1-minute bars (default 20 x 100,000 = 2,000,000) in a
temporary folder, once as the Parquet store (``<tmp>/bars/1Min/<SYMBOL>.parquet``) and once as
Backtrader generic CSV (``datetime,open,high,low,close,volume,openinterest``), then loads every
symbol into a Backtrader feed both ways, in the same run:

- **parquet**: ``feeds.store.read_arrays`` + ``feeds.btfeed.ArrayData`` (bulk preload);
- **csv** (baseline): ``bt.feeds.GenericCSVData`` (Backtrader's own line-by-line preload).

"Load" is what Cerebro does before a preloaded run, feed by feed: ``reset()``, ``_start()``
(opens the file), ``preload()``. Each side runs in a fresh child process so its peak memory
(``ru_maxrss`` above the child's baseline after imports) is its own. Both sides must yield
the same bars (count, first/last time, sum of closes) or the benchmark fails. The target is
Parquet >= 20x faster.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queue_mod
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


TARGET = 20.0
DTFORMAT = "%Y-%m-%d %H:%M:%S"


def _rss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def make_data(folder: Path, n_symbols: int, n_bars: int) -> tuple[Path, Path, list[str]]:
    """Write the same synthetic bars as Parquet (store layout) and as generic CSV."""
    import pandas as pd

    from feeds.store import write_bars
    from feeds.synthetic import random_walk_bars, trading_minutes

    sessions_needed = n_bars // 390 + 2
    end = pd.Timestamp("2024-01-02") + pd.Timedelta(days=int(sessions_needed * 1.5) + 10)
    index = trading_minutes("2024-01-02", end.strftime("%Y-%m-%d"))[:n_bars]
    if len(index) < n_bars:
        raise SystemExit(f"calendar too short for {n_bars} bars")
    pq_dir = folder / "bars" / "1Min"
    csv_dir = folder / "csv"
    csv_dir.mkdir(parents=True, exist_ok=True)
    symbols = [f"S{i:03d}" for i in range(n_symbols)]
    stamps = index.tz_convert("UTC").tz_localize(None).strftime(DTFORMAT)
    for i, sym in enumerate(symbols):
        bars = random_walk_bars(index, seed=1000 + i, start_price=50.0 + i)
        write_bars(pq_dir / f"{sym}.parquet", bars, {"source": "bench"})
        csv = pd.DataFrame({
            "datetime": stamps,
            "open": bars["open"], "high": bars["high"], "low": bars["low"],
            "close": bars["close"], "volume": bars["volume"], "openinterest": 0.0,
        })
        csv.to_csv(csv_dir / f"{sym}.csv", index=False)
    return pq_dir, csv_dir, symbols


def _summary(feeds: list[Any]) -> dict[str, Any]:
    """Bars, first/last datetime and close sums of loaded feeds (for the equality check)."""
    import numpy as np

    out = []
    for f in feeds:
        dt = np.frombuffer(f.lines.datetime.array, dtype=np.float64)
        close = np.frombuffer(f.lines.close.array, dtype=np.float64)
        out.append((len(dt), round(float(dt[0]), 8), round(float(dt[-1]), 8),
                    round(float(close.sum()), 4)))
    return {"feeds": out, "bars": sum(o[0] for o in out)}


def _preload(cerebro: Any, feed: Any) -> Any:
    # What Cerebro.runstrategies does for each feed when preload=True.
    cerebro.adddata(feed)
    feed.reset()
    feed._start()
    feed.preload()
    return feed


def load_parquet(pq_dir: str, symbols: list[str]) -> list[Any]:
    """The ratchet way: Parquet -> numpy -> ArrayData, bulk preload."""
    import backtrader as bt

    from feeds.btfeed import ArrayData
    from feeds.store import read_arrays

    cerebro = bt.Cerebro()
    return [_preload(cerebro, ArrayData(bars=read_arrays(Path(pq_dir) / f"{sym}.parquet"),
                                        name=sym))
            for sym in symbols]


def load_csv(csv_dir: str, symbols: list[str]) -> list[Any]:
    """The stock Backtrader way: GenericCSVData, preloaded line by line."""
    import backtrader as bt

    cerebro = bt.Cerebro()
    return [_preload(cerebro, bt.feeds.GenericCSVData(
        dataname=str(Path(csv_dir) / f"{sym}.csv"), name=sym, dtformat=DTFORMAT,
        timeframe=bt.TimeFrame.Minutes, compression=1,
        datetime=0, open=1, high=2, low=3, close=4, volume=5, openinterest=6,
    )) for sym in symbols]


def _child(kind: str, folder: str, symbols: list[str], queue: mp.Queue) -> None:
    import backtrader  # noqa: F401  - imports are not part of the load time

    import feeds.btfeed
    import feeds.store  # noqa: F401

    base = _rss_mb()
    t0 = time.perf_counter()
    loaded = load_parquet(folder, symbols) if kind == "parquet" else load_csv(folder, symbols)
    seconds = time.perf_counter() - t0
    peak = _rss_mb() - base
    queue.put({"kind": kind, "seconds": seconds, "peak_mb": peak, **_summary(loaded)})


def _make_child(folder: str, n_symbols: int, n_bars: int, queue: mp.Queue) -> None:
    pq_dir, csv_dir, symbols = make_data(Path(folder), n_symbols, n_bars)
    queue.put((str(pq_dir), str(csv_dir), symbols))


def _in_child(target: Any, *args: Any) -> Any:
    """Run ``target(*args, queue)`` in a fresh process and return what it puts on the queue.

    Linux carries a process's peak RSS across fork/exec, so the parent stays small (no
    pandas, no data) and each loader's peak is measured in its own child."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except queue_mod.Empty:  # keep waiting while the child lives
            if not proc.is_alive():
                raise SystemExit(f"{target.__name__} failed (exit {proc.exitcode})") from None
    proc.join()
    return result


def measure(kind: str, folder: Path, symbols: list[str]) -> dict[str, Any]:
    """Run one loader in a fresh process and collect its figures."""
    return _in_child(_child, kind, str(folder), symbols)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print timings, bars/s, memory and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--bars", type=int, default=100_000, help="bars per symbol")
    ap.add_argument("--keep", type=Path, default=None, help="write the data here and keep it")
    args = ap.parse_args(argv)
    total = args.symbols * args.bars
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        folder = args.keep or Path(tmp)
        t0 = time.perf_counter()
        pq, csv_, symbols = _in_child(_make_child, str(folder), args.symbols, args.bars)
        pq_dir, csv_dir = Path(pq), Path(csv_)
        pq_bytes = sum(p.stat().st_size for p in pq_dir.glob("*.parquet"))
        csv_bytes = sum(p.stat().st_size for p in csv_dir.glob("*.csv"))
        print(f"data: {args.symbols} symbols x {args.bars:,} = {total:,} 1-minute bars "
              f"(generated in {time.perf_counter() - t0:.1f}s); Parquet {pq_bytes / 1e6:.1f} MB, "
              f"CSV {csv_bytes / 1e6:.1f} MB")
        pq = measure("parquet", pq_dir, symbols)
        csv = measure("csv", csv_dir, symbols)
    if pq["feeds"] != csv["feeds"]:
        print("MISMATCH: the two loaders produced different bars", file=sys.stderr)
        for a, b in zip(pq["feeds"], csv["feeds"], strict=True):
            if a != b:
                print(f"  parquet {a} != csv {b}", file=sys.stderr)
                break
        return 1
    for r, label in ((pq, "Parquet -> ArrayData      "), (csv, "CSV -> GenericCSVData     ")):
        print(f"{label} {r['seconds']:8.2f} s  {r['bars'] / r['seconds']:>13,.0f} bars/s  "
              f"peak +{r['peak_mb']:7.1f} MB RSS")
    ratio = csv["seconds"] / pq["seconds"]
    verdict = "OK" if ratio >= TARGET else "BELOW TARGET"
    print(f"ratio: Parquet is {ratio:.1f}x faster than GenericCSVData (target >= {TARGET:.0f}x): "
          f"{verdict}")
    print(f"memory: the Parquet path peaks at {pq['peak_mb'] / max(csv['peak_mb'], 0.1):.1f}x "
          "the CSV path's (peak RSS above each child's baseline)")
    return 0 if ratio >= TARGET else 2


if __name__ == "__main__":
    sys.exit(main())
