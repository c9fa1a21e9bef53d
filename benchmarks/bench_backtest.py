"""Backtest speed and memory: ratchet's path against stock Backtrader, same rules, same data.

One command::

    .venv/bin/python benchmarks/bench_backtest.py [--symbols 20] [--days 21] [--repeat 3]

It writes ``--symbols`` x ``--days`` sessions of seeded synthetic 1-minute bars (390 a
session) as Parquet files in the store layout under a temporary folder, then runs, each in a
fresh subprocess so peak memory is that run's alone:

- ``ours``:  ``commands.backtest.load_datasets`` + ``run_backtest(settings, datasets,
  out=None)``: Parquet -> ``read_arrays`` -> ``prepare_lines`` -> ``ArrayData`` ->
  ``RatchetStrategy`` -> stats;
- ``stock``: ``pd.read_parquet`` -> ``bt.feeds.PandasData`` -> ``bt.indicators`` (SMA, SMA,
  crossover, ATR) -> the same ``RatchetStrategy`` rules -> the same stats
  (``benchmarks.stock_strategy``).

Both use ``SimBroker``, the ``RunRecorder`` analyzer, an ``Audit`` and the same Cerebro flags.
The clock runs from before the Parquet files are read to the stats at the end. It prints
seconds, bars/s and peak memory per variant, the speed ratio (ours / stock bars per second,
target >= 3) and the memory ratio (ours / stock peak RSS, target <= 1), and exits non-zero
when the two variants' trades differ (printing the first difference).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(REPO))

import exchange_calendars as xcals  # noqa: E402
import pandas as pd  # noqa: E402

from analyzers.recorder import TRADE_COLUMNS  # noqa: E402
from analyzers.stats import compute_stats  # noqa: E402
from benchmarks.stock_strategy import run_stock_backtest  # noqa: E402
from commands.backtest import load_datasets, run_backtest  # noqa: E402
from common.config import DEFAULT_SYMBOLS, Settings  # noqa: E402
from feeds.store import resolve_datasets, write_bars  # noqa: E402
from feeds.synthetic import random_walk_bars, trading_minutes  # noqa: E402

logger = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("ours", "stock")
SPEED_TARGET = 3.0
MEMORY_TARGET = 1.0
#: Wall-clock vs CPU-time speed ratios further apart than this mean a busy machine.
BUSY_TOLERANCE = 0.10
#: Fields of a closed trade that must be identical in both variants.
TRADE_KEY: tuple[str, ...] = ("symbol", "entry_time", "exit_time", "qty", "entry_price",
                              "exit_price", "exit_reason")
_MIB = 1024.0  # ru_maxrss is in KiB on Linux


# ------------------------------------------------------------------------------- data


def symbol_names(n: int) -> list[str]:
    """``n`` ticker-like names: the default 20-stock universe, then ``SYN21``, ``SYN22``..."""
    names = list(DEFAULT_SYMBOLS[:n])
    names += [f"SYN{i + 1}" for i in range(len(names), n)]
    return names


def write_dataset(root: Path, symbols: int, days: int, start: str = "2025-09-02",
                  seed: int = 1) -> tuple[Path, int]:
    """Write ``symbols`` x ``days`` NYSE sessions of 1-minute bars to ``root/1Min``.

    Returns the folder and the total number of bars. Seeded: the same arguments give the
    same files.
    """
    cal = xcals.get_calendar("XNYS")
    sessions = cal.sessions_window(start, days)
    index = trading_minutes(str(sessions[0].date()), str(sessions[-1].date()))
    folder = root / "1Min"
    folder.mkdir(parents=True, exist_ok=True)
    for i, sym in enumerate(symbol_names(symbols)):
        frame = random_walk_bars(index, seed=seed * 1000 + i, start_price=20.0 + 9.0 * i)
        write_bars(folder / f"{sym}.parquet", frame)
    return folder, symbols * len(index)


# ------------------------------------------------------------------------------- one run


def trade_rows(closed_trades: list[dict[str, Any]]) -> list[list[Any]]:
    """The comparable part of each closed trade, JSON-able (times as ISO strings)."""
    rows = []
    for t in closed_trades:
        row = [t[k] for k in TRADE_KEY]
        rows.append([v.isoformat() if hasattr(v, "isoformat") else v for v in row])
    return rows


def run_ours(data: Path) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """The project's path: ``load_datasets`` + ``run_backtest(out=None)``."""
    datasets = load_datasets(data, None, "1Min")
    settings = Settings(symbols=tuple(datasets))
    result = run_backtest(settings, datasets, out=None)
    return result.bars, result.strategy.closed_trades, result.stats


def run_stock(data: Path) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """The stock path, ending with the same stats step as ``run_backtest(out=None)``."""
    paths = resolve_datasets(data, None)
    settings = Settings(symbols=tuple(paths))
    strategy = run_stock_backtest(settings, paths)
    recorder = strategy.analyzers.recorder
    equity = pd.DataFrame(recorder.equity,
                          columns=["timestamp", "cash", "value", "exposure", "positions"])
    equity["timestamp"] = pd.to_datetime(equity["timestamp"], utc=True)
    stats = compute_stats(equity, pd.DataFrame(strategy.closed_trades, columns=TRADE_COLUMNS),
                          settings.cash)
    bars = sum(d.buflen() for d in strategy.datas)
    return bars, strategy.closed_trades, stats


def child(variant: str, data: Path, result_file: Path, trace: bool) -> None:
    """Run one variant once in this (fresh) process and write its figures as JSON."""
    runner = run_ours if variant == "ours" else run_stock
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace:
        tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    bars, trades, stats = runner(data)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    traced = tracemalloc.get_traced_memory()[1] if trace else None
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "variant": variant, "seconds": seconds, "cpu_seconds": cpu, "bars": bars,
        "base_kib": base_kib, "peak_kib": peak_kib, "traced_peak": traced,
        "trades": trade_rows(trades), "end_value": stats.get("end_value"),
    }
    result_file.write_text(json.dumps(out), encoding="utf-8")


def spawn(variant: str, data: Path, workdir: Path, run: int, trace: bool = False) -> dict[str, Any]:
    """Run ``child`` in a new interpreter and return its figures."""
    result_file = workdir / f"{variant}-{run}{'-trace' if trace else ''}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant,
           "--data", str(data), "--result", str(result_file)]
    if trace:
        cmd.append("--tracemalloc")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} run failed (exit {proc.returncode}):\n{proc.stderr}")
    return json.loads(result_file.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------- report


@dataclass
class Figures:
    """Every run of one variant."""

    variant: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    traced_peak: int | None = None

    @property
    def best_seconds(self) -> float:
        """Fastest run (least disturbed by other load on the machine)."""
        return min(r["seconds"] for r in self.runs)

    @property
    def median_seconds(self) -> float:
        """Median run time."""
        return statistics.median(r["seconds"] for r in self.runs)

    @property
    def best_cpu_seconds(self) -> float:
        """Least CPU time of a run (less sensitive than wall time to other processes)."""
        return min(r["cpu_seconds"] for r in self.runs)

    @property
    def bars(self) -> int:
        """Bars fed to the strategy in one run."""
        return int(self.runs[0]["bars"])

    @property
    def bars_per_second(self) -> float:
        """Bars per second of the best run."""
        return self.bars / self.best_seconds

    @property
    def peak_mib(self) -> float:
        """Highest peak RSS over the runs, MiB."""
        return max(r["peak_kib"] for r in self.runs) / _MIB

    @property
    def base_mib(self) -> float:
        """RSS after the imports, before the clock starts, MiB."""
        return max(r["base_kib"] for r in self.runs) / _MIB


def first_difference(a: list[list[Any]], b: list[list[Any]]) -> str | None:
    """A one-line description of the first trade that differs, or None if the lists match."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            diffs = [f"{k}: {u!r} != {v!r}" for k, u, v in zip(TRADE_KEY, x, y, strict=True)
                     if u != v]
            return f"trade {i} ({x[0]} entry {x[1]}): ours vs stock: " + "; ".join(diffs)
    if len(a) != len(b):
        longer, name = (a, "ours") if len(a) > len(b) else (b, "stock")
        return (f"ours made {len(a)} trades, stock {len(b)}; first extra trade ({name}): "
                f"{dict(zip(TRADE_KEY, longer[min(len(a), len(b))], strict=True))}")
    return None


def report(ours: Figures, stock: Figures, symbols: int, days: int) -> tuple[bool, bool]:
    """Print the table, the ratios and PASS/FAIL; returns (speed ok, memory ok)."""
    print(f"\n{symbols} symbols x {days} sessions of 1-minute bars = {ours.bars:,} bars; "
          f"{len(ours.runs)} run(s) per variant, each in a fresh process\n")
    head = (f"{'variant':<8} {'best s':>8} {'median s':>9} {'bars/s':>10} {'peak RSS MiB':>13} "
            f"{'(imports)':>10} {'traced MiB':>11} {'trades':>7}")
    print(head)
    print("-" * len(head))
    for f in (ours, stock):
        traced = "-" if f.traced_peak is None else f"{f.traced_peak / 2**20:,.1f}"
        print(f"{f.variant:<8} {f.best_seconds:>8.2f} {f.median_seconds:>9.2f} "
              f"{f.bars_per_second:>10,.0f} {f.peak_mib:>13,.1f} {f.base_mib:>10,.1f} "
              f"{traced:>11} {len(f.runs[0]['trades']):>7,}")
    speed = ours.bars_per_second / stock.bars_per_second
    memory = ours.peak_mib / stock.peak_mib
    speed_ok, memory_ok = speed >= SPEED_TARGET, memory <= MEMORY_TARGET
    print(f"\nspeed ratio  (ours / stock bars per second): {speed:5.2f}x   target >= "
          f"{SPEED_TARGET:.0f}x   {'PASS' if speed_ok else 'FAIL'}")
    print(f"memory ratio (ours / stock peak RSS):        {memory:5.2f}    target <= "
          f"{MEMORY_TARGET:.1f}    {'PASS' if memory_ok else 'FAIL'}")
    growth = (ours.peak_mib - ours.base_mib) / max(stock.peak_mib - stock.base_mib, 1e-9)
    print(f"  (growth above the imports' RSS: ours {ours.peak_mib - ours.base_mib:,.1f} MiB, "
          f"stock {stock.peak_mib - stock.base_mib:,.1f} MiB, ratio {growth:.2f})")
    cpu = stock.best_cpu_seconds / ours.best_cpu_seconds
    print(f"  (by CPU time, best run each: ours {ours.best_cpu_seconds:.2f}s, stock "
          f"{stock.best_cpu_seconds:.2f}s, speed ratio {cpu:.2f}x)")
    if abs(speed / cpu - 1.0) > BUSY_TOLERANCE:
        print(f"  NOTE: wall-clock and CPU ratios differ by {abs(speed / cpu - 1.0):.0%}: other "
              "processes were competing for the CPUs. Rerun on a quiet machine or read the "
              "CPU ratio.")
    if ours.traced_peak and stock.traced_peak:
        print(f"  (tracemalloc peak, Python + numpy allocations in the timed section: "
              f"{ours.traced_peak / stock.traced_peak:.2f})")
    return speed_ok, memory_ok


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", type=int, default=20, help="symbols (default 20)")
    p.add_argument("--days", type=int, default=21, help="NYSE sessions (default 21 ~ 1 month)")
    p.add_argument("--repeat", type=int, default=3,
                   help="timed runs per variant, interleaved; the best counts (default 3)")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic bars")
    p.add_argument("--no-tracemalloc", action="store_true",
                   help="skip the extra (slower) tracemalloc run per variant")
    p.add_argument("--strict", action="store_true",
                   help="also exit non-zero (3) when a speed or memory target fails")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is None and min(args.symbols, args.days, args.repeat) < 1:
        p.error("--symbols, --days and --repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 = trades match, 1 = they differ, 3 = a target failed (--strict)."""
    args = parse_args(argv)
    if args.child is not None:
        child(args.child, args.data, args.result, args.tracemalloc)
        return 0
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ratchet-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        data, total = write_dataset(work / "bars", args.symbols, args.days, seed=args.seed)
        print(f"wrote {args.symbols} x {args.days} sessions ({total:,} bars) to {data} in "
              f"{time.perf_counter() - t0:.1f}s")
        figs = {v: Figures(v) for v in VARIANTS}
        for run in range(args.repeat):
            # Alternate which variant goes first, so slow drift in machine load hits both.
            order = VARIANTS if run % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                res = spawn(variant, data, work, run)
                figs[variant].runs.append(res)
                print(f"  run {run + 1}/{args.repeat} {variant:<5} {res['seconds']:7.2f}s "
                      f"(cpu {res['cpu_seconds']:6.2f}s)  "
                      f"peak RSS {res['peak_kib'] / _MIB:7.1f} MiB  "
                      f"{len(res['trades'])} trades")
        if not args.no_tracemalloc:
            for variant in VARIANTS:
                res = spawn(variant, data, work, 0, trace=True)
                figs[variant].traced_peak = int(res["traced_peak"])
                print(f"  tracemalloc {variant:<5} peak {res['traced_peak'] / 2**20:7.1f} MiB")
    ours, stock = figs["ours"], figs["stock"]
    speed_ok, memory_ok = report(ours, stock, args.symbols, args.days)
    diff = None
    for f in (ours, stock):  # every run of a variant must make the same trades too
        for r in f.runs[1:]:
            if r["trades"] != f.runs[0]["trades"]:
                diff = f"{f.variant}: run {f.runs.index(r) + 1} differs from run 1"
    diff = diff or first_difference(ours.runs[0]["trades"], stock.runs[0]["trades"])
    if diff is None and ours.runs[0]["end_value"] != stock.runs[0]["end_value"]:
        diff = (f"same trades but end values differ: ours {ours.runs[0]['end_value']!r}, "
                f"stock {stock.runs[0]['end_value']!r}")
    if diff is not None:
        print(f"\nTRADES DIFFER: {diff}")
        return 1
    n = len(ours.runs[0]["trades"])
    value = ours.runs[0]["end_value"]
    end = "n/a" if value is None or not math.isfinite(value) else f"{value:,.2f}"
    print(f"\ntrades: identical ({n:,} round trips; end value {end} in both)")
    if args.strict and not (speed_ok and memory_ok):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
