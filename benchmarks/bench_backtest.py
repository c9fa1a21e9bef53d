"""Backtest speed and memory as the user feels it: whole ``cli.py backtest`` processes against
the same rules written as a plain stock-Backtrader script.

One command::

    .venv/bin/python benchmarks/bench_backtest.py [--sizes 20x21,100x21] [--repeat 5]
                                                   [--no-inprocess] [--strict]

For each size (symbols x NYSE sessions of seeded synthetic 1-minute bars, 390 a session,
written by the benchmark itself to a temporary folder in the store layout) it runs, as fresh
processes, alternating which goes first, ``--repeat`` times each:

- ``ratchet``: ``python cli.py backtest --data DIR --out TMP --no-progress`` (imports, reading,
  the run, the run folder written, the summary printed);
- ``stock``:   ``python benchmarks/stock_backtrader.py --data DIR --trades FILE``
  (``pd.read_parquet`` -> ``PandasData`` -> ``bt.indicators`` -> one plain ``bt.Strategy`` on
  Backtrader's ``BackBroker``; it imports nothing from this project).

Each process is timed from start to exit: CPU = user + system time of the child and peak RSS
= its ``ru_maxrss``, both from ``os.wait4``; wall time from spawn to exit. It prints medians
and [min-max] spreads, the ratios (stock / ratchet CPU: target >= 5; ratchet / stock peak RSS:
target <= 1) with the spread of the per-round ratios, and compares the trades (exits 1 when
they differ). A second, labelled line gives in-process figures (the clock started after the
imports) for comparison with older numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(REPO))


CLI = REPO / "cli.py"
STOCK = REPO / "benchmarks" / "stock_backtrader.py"
VARIANTS: tuple[str, ...] = ("ratchet", "stock")
CPU_TARGET = 5.0
MEMORY_TARGET = 1.0
#: Trade fields compared between the two (prices to 1e-6: ratchet averages its fills).
TRADE_KEY: tuple[str, ...] = ("symbol", "entry_time", "exit_time", "qty", "entry_price",
                              "exit_price", "exit_reason")
_MIB = 1024.0  # ru_maxrss is in KiB on Linux


# ------------------------------------------------------------------------------- data


def symbol_names(n: int) -> list[str]:
    """``n`` ticker-like names: the default 20-stock universe, then ``SYN21``, ``SYN22``..."""
    from ratchet.common.config import DEFAULT_SYMBOLS

    names = list(DEFAULT_SYMBOLS[:n])
    names += [f"SYN{i + 1}" for i in range(len(names), n)]
    return names


def write_dataset(root: Path, symbols: int, days: int, start: str = "2025-09-02",
                  seed: int = 1) -> tuple[Path, int]:
    """Write ``symbols`` x ``days`` NYSE sessions of 1-minute bars to ``root/1Min``.

    Returns the folder and the total number of bars. Seeded: the same arguments give the
    same files.
    """
    import exchange_calendars as xcals

    from feeds.store import write_bars
    from feeds.synthetic import random_walk_bars, trading_minutes

    cal = xcals.get_calendar("XNYS")
    sessions = cal.sessions_window(start, days)
    index = trading_minutes(str(sessions[0].date()), str(sessions[-1].date()))
    folder = root / "1Min"
    folder.mkdir(parents=True, exist_ok=True)
    for i, sym in enumerate(symbol_names(symbols)):
        frame = random_walk_bars(index, seed=seed * 1000 + i, start_price=20.0 + 9.0 * i)
        write_bars(folder / f"{sym}.parquet", frame)
    return folder, symbols * len(index)


# ------------------------------------------------------------------------------- one process


@dataclass
class Run:
    """One whole process: CPU (user + system) and wall seconds, peak RSS in KiB."""

    cpu: float
    wall: float
    rss_kib: int


def timed(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Run:
    """Run ``cmd`` to its exit; its own CPU time and peak RSS come from ``os.wait4``."""
    with log.open("wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: keep Popen from waiting
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                           f"{log.read_text(errors='replace')[-3000:]}")
    return Run(usage.ru_utime + usage.ru_stime, wall, int(usage.ru_maxrss))


def ratchet_cmd(data: Path, out: Path) -> list[str]:
    """The product's command, as a user runs it."""
    return [sys.executable, str(CLI), "backtest", "--data", str(data), "--out", str(out),
            "--no-progress"]


def stock_cmd(data: Path, trades: Path) -> list[str]:
    """The plain Backtrader script."""
    return [sys.executable, str(STOCK), "--data", str(data), "--trades", str(trades)]


# ------------------------------------------------------------------------------- trades


def _iso(value: Any) -> str:
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text.replace("+00:00", "")


def trade_rows_from_dicts(trades: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The comparable fields of closed trades (times as naive UTC ISO, prices to 1e-6)."""
    rows = []
    for t in trades:
        rows.append((str(t["symbol"]), _iso(t["entry_time"]), _iso(t["exit_time"]),
                     round(float(t["qty"]), 6), round(float(t["entry_price"]), 6),
                     round(float(t["exit_price"]), 6), str(t["exit_reason"])))
    return sorted(rows, key=lambda r: (r[1], r[0], r[2]))


def ratchet_trades(out: Path) -> list[tuple[Any, ...]]:
    """Trades of the newest run folder under ``out``."""
    import pyarrow.parquet as pq

    run = sorted(p for p in out.iterdir() if (p / "trades.parquet").exists())[-1]
    table = pq.read_table(run / "trades.parquet", columns=list(TRADE_KEY))
    return trade_rows_from_dicts(table.to_pylist())


def stock_trades(path: Path) -> list[tuple[Any, ...]]:
    """Trades the stock script wrote."""
    with path.open(newline="") as fh:
        return trade_rows_from_dicts(list(csv.DictReader(fh)))


def first_difference(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> str | None:
    """One line on the first trade that differs, or None when both lists are equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"trade {i}: ratchet {x} != stock {y}"
    if len(a) != len(b):
        return f"ratchet made {len(a)} trades, stock {len(b)}"
    return None


# ------------------------------------------------------------------------------- in-process


def inprocess(variant: str, data: Path, work: Path) -> dict[str, float]:
    """Child mode: import first, then time one run (run folder written) with process_time."""
    import resource

    if variant == "ratchet":
        from ratchet.common.config import Settings
        from ratchet.engine.backtest import run_backtest
        from ratchet.engine.datasets import load_datasets
    else:
        from benchmarks import stock_backtrader
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c0, t0 = time.process_time(), time.perf_counter()
    if variant == "ratchet":
        datasets = load_datasets(data, None, "1Min")
        run_backtest(Settings(symbols=tuple(datasets)), datasets, out=work / "inproc-runs")
    else:
        stock_backtrader.main(["--data", str(data), "--trades", str(work / "inproc.csv")])
    return {"cpu": time.process_time() - c0, "wall": time.perf_counter() - t0,
            "base_kib": base, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


# ------------------------------------------------------------------------------- report


@dataclass
class Figures:
    """Every timed run of one command on one data set."""

    variant: str
    runs: list[Run] = field(default_factory=list)

    def med(self, attr: str) -> float:
        """Median of one figure over the runs."""
        return statistics.median(getattr(r, attr) for r in self.runs)

    def spread(self, attr: str, scale: float = 1.0) -> str:
        """``median [min-max]``."""
        vals = [getattr(r, attr) / scale for r in self.runs]
        return f"{statistics.median(vals):6.2f} [{min(vals):.2f}-{max(vals):.2f}]"


def _ratio_spread(nums: list[float]) -> str:
    return f"{statistics.median(nums):.2f} [{min(nums):.2f}-{max(nums):.2f}]"


def report(label: str, bars: int, figs: dict[str, Figures], n_trades: int,
           inproc: dict[str, dict[str, float]] | None) -> tuple[bool, bool]:
    """Print one data set's table and ratios; returns (cpu ok, memory ok)."""
    ours, stock = figs["ratchet"], figs["stock"]
    print(f"\n{label}: {bars:,} bars, {len(ours.runs)} runs per command, alternating; "
          f"whole processes, start to exit")
    head = (f"{'command':<9} {'CPU s median [min-max]':>24} {'wall s median [min-max]':>25} "
            f"{'peak RSS MiB median [min-max]':>31} {'trades':>7}")
    print(head)
    print("-" * len(head))
    for f in (ours, stock):
        print(f"{f.variant:<9} {f.spread('cpu'):>24} {f.spread('wall'):>25} "
              f"{f.spread('rss_kib', _MIB):>31} {n_trades:>7,}")
    cpu_pairs = [s.cpu / o.cpu for o, s in zip(ours.runs, stock.runs, strict=True)]
    wall_pairs = [s.wall / o.wall for o, s in zip(ours.runs, stock.runs, strict=True)]
    rss_pairs = [o.rss_kib / s.rss_kib for o, s in zip(ours.runs, stock.runs, strict=True)]
    cpu = stock.med("cpu") / ours.med("cpu")
    rss = ours.med("rss_kib") / stock.med("rss_kib")
    cpu_ok, mem_ok = cpu >= CPU_TARGET, rss <= MEMORY_TARGET
    print(f"CPU ratio  stock/ratchet (medians): {cpu:5.2f}x  per round {_ratio_spread(cpu_pairs)}"
          f"  target >= {CPU_TARGET:.0f}x  {'PASS' if cpu_ok else 'FAIL'}")
    print(f"wall ratio stock/ratchet (medians): {stock.med('wall') / ours.med('wall'):5.2f}x  "
          f"per round {_ratio_spread(wall_pairs)}")
    print(f"peak RSS   ratchet/stock (medians): {rss:5.2f}   per round {_ratio_spread(rss_pairs)}"
          f"  target <= {MEMORY_TARGET:.1f}   {'PASS' if mem_ok else 'FAIL'}")
    print(f"bars per CPU second: ratchet {bars / ours.med('cpu'):,.0f}, "
          f"stock {bars / stock.med('cpu'):,.0f}")
    if inproc:
        o, s = inproc["ratchet"], inproc["stock"]
        print(f"in-process (one run each, clock started AFTER imports, run folder written): "
              f"ratchet {o['cpu']:.2f}s CPU, stock {s['cpu']:.2f}s CPU: "
              f"{s['cpu'] / o['cpu']:.2f}x")
    return cpu_ok, mem_ok


def spawn_inprocess(variant: str, data: Path, work: Path) -> dict[str, float]:
    """``inprocess`` in a fresh interpreter."""
    result = work / f"inproc-{variant}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--inprocess-child", variant,
           "--data", str(data), "--work", str(work), "--result", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"in-process {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text(encoding="utf-8"))


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"20x21,100x21"`` -> ``[(20, 21), (100, 21)]``."""
    out = []
    for part in text.split(","):
        sym, _, days = part.strip().partition("x")
        out.append((int(sym), int(days)))
    if not out or min(min(p) for p in out) < 1:
        raise ValueError(text)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="20x21,100x21",
                   help="data sets, SYMBOLSxSESSIONS, comma-separated (default 20x21,100x21)")
    p.add_argument("--repeat", type=int, default=5, help="runs per command (default 5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic bars")
    p.add_argument("--no-inprocess", action="store_true",
                   help="skip the in-process comparison line")
    p.add_argument("--strict", action="store_true",
                   help="also exit 3 when a CPU or memory target fails")
    p.add_argument("--inprocess-child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inprocess_child is None:
        try:
            args.sizes = parse_sizes(args.sizes)
        except ValueError:
            p.error(f"--sizes {args.sizes!r}: use e.g. 20x21,100x21")
        if args.repeat < 1:
            p.error("--repeat must be at least 1")
    return args


def bench_one(work: Path, symbols: int, days: int, args: argparse.Namespace
              ) -> tuple[bool, bool, str | None]:
    """Write one data set, time both commands on it, print the report."""
    t0 = time.perf_counter()
    data, bars = write_dataset(work / "bars", symbols, days, seed=args.seed)
    print(f"\nwrote {symbols} x {days} sessions ({bars:,} bars) in "
          f"{time.perf_counter() - t0:.1f}s")
    figs = {v: Figures(v) for v in VARIANTS}
    trades: dict[str, list[Any]] = {}
    for i in range(args.repeat):
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            if variant == "ratchet":
                out = work / f"runs-{i}"
                run = timed(ratchet_cmd(data, out), work / f"ratchet-{i}.log")
                got = ratchet_trades(out)
            else:
                csv_path = work / f"stock-{i}.csv"
                run = timed(stock_cmd(data, csv_path), work / f"stock-{i}.log")
                got = stock_trades(csv_path)
            if variant in trades and got != trades[variant]:
                return False, False, f"{variant}: run {i + 1} made other trades than run 1"
            trades[variant] = got
            figs[variant].runs.append(run)
            print(f"  run {i + 1}/{args.repeat} {variant:<8} cpu {run.cpu:6.2f}s  wall "
                  f"{run.wall:6.2f}s  peak RSS {run.rss_kib / _MIB:7.1f} MiB  "
                  f"{len(got):,} trades", flush=True)
    inproc = None
    if not args.no_inprocess:
        inproc = {v: spawn_inprocess(v, data, work) for v in VARIANTS}
    cpu_ok, mem_ok = report(f"{symbols} symbols x {days} sessions", bars, figs,
                            len(trades["ratchet"]), inproc)
    diff = first_difference(trades["ratchet"], trades["stock"])
    if diff is None:
        print(f"trades: identical ({len(trades['ratchet']):,} round trips)")
    return cpu_ok, mem_ok, diff


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 = trades match, 1 = they differ, 3 = a target failed (--strict)."""
    args = parse_args(argv)
    if args.inprocess_child is not None:
        res = inprocess(args.inprocess_child, args.data, args.work)
        args.result.write_text(json.dumps(res), encoding="utf-8")
        return 0
    logging.basicConfig(level=logging.WARNING)
    ok = True
    for symbols, days in args.sizes:
        with tempfile.TemporaryDirectory(prefix="ratchet-bench-") as tmp:
            cpu_ok, mem_ok, diff = bench_one(Path(tmp), symbols, days, args)
        if diff is not None:
            print(f"TRADES DIFFER: {diff}")
            return 1
        ok = ok and cpu_ok and mem_ok
    if args.strict and not ok:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
