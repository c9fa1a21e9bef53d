"""Check the SPEC on real market bars: ``python benchmarks/check_real.py [--keep DIR]``.

Imports the real files of ``../shared/data`` (never copied into the repository) into a
temporary bar store with our own ``cli.py data import``, as a user would; backtests them
with ``cli.py backtest`` with the default settings, a tight trail (``--trail-pct 0.2``), tight
caps, and extended hours; then runs the invariant checker (``tests/invariants.py``) on every
run folder and prints checks run and violations per run. Exit 1 on any violation.

Sets: daily ORCL (1995-), YHOO (1996-), NVDA (1999-) (Yahoo, adjusted), staggered listings;
minute SPY 2011 (NinjaTrader, bar-end stamps, UTC, with extended hours) next to SPY 2021 and
AAPL/MSFT/GLD/TLT 2021 in one folder: staggered starts ten years apart, gaps, early ends.

Skipped with a message (exit 0) when ``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


SHARED = REPO.parent / "shared" / "data"

#: (file, symbol, extra ``data import`` options)
IMPORTS: list[tuple[str, str, list[str]]] = [
    ("orcl-1995-2014.txt", "ORCL", ["--adjusted"]),
    ("nvda-1999-2014.txt", "NVDA", ["--adjusted"]),
    ("yhoo-1996-2014.txt", "YHOO", ["--adjusted"]),
    ("SPY_Minute_2021.csv", "SPY", []),
    ("AAPL_Minute.csv", "AAPL", []),
    ("MSFT_Minute.csv", "MSFT", []),
    ("GLD_Minute.csv", "GLD", []),
    ("TLT_Minute.csv", "TLT", []),
    ("nt-spy-minute-2011.csv", "SPYNT", [
        "--columns", "timestamp,open,high,low,close,volume", "--sep", ";",
        "--dtformat", "%Y%m%d %H%M%S", "--tz", "UTC", "--stamp", "end"]),
]

TIGHT_CAPS = ["--max-positions", "2", "--max-position-pct", "3", "--risk-pct", "0.5"]
#: (label, interval folder, backtest options)
RUNS: list[tuple[str, str, list[str]]] = [
    ("daily default", "1Day", []),
    ("daily trail 0.002", "1Day", ["--trail-pct", "0.2"]),
    ("daily tight caps", "1Day", TIGHT_CAPS),
    ("minute default", "1Min", []),
    ("minute trail 0.002", "1Min", ["--trail-pct", "0.2"]),
    ("minute tight caps", "1Min", TIGHT_CAPS),
    ("minute extended hours", "1Min", ["--extended-hours"]),
    ("minute ext + trail 0.002", "1Min", ["--extended-hours", "--trail-pct", "0.2"]),
]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)


def main(argv: list[str] | None = None) -> int:
    """Import, backtest, check; print the figures. Returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="Keep the store and runs here.")
    args = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(f"SKIPPED: {SHARED} is absent (real bars live outside the repository)")
        return 0
    from analyzers import load_run
    from feeds.store import read_bars, resolve_datasets
    from tests.invariants import CheckReport, check_run

    work = args.keep or Path(tempfile.mkdtemp(prefix="ratchet-real-"))
    store, runs = work / "bars", work / "runs"
    t0 = time.perf_counter()
    for name, symbol, extra in IMPORTS:
        src = SHARED / name
        if not src.exists():
            print(f"  (missing {name}: skipped)")
            continue
        res = _cli("data", "import", str(src), "--symbol", symbol, "--out", str(store),
                   "--replace", *extra)
        if res.returncode != 0:
            print(f"import {name} failed: {res.stderr.strip()}")
            return 1
    print(f"imported {len(IMPORTS)} files into {store} ({time.perf_counter() - t0:.1f}s)")
    total = CheckReport()
    rows = []
    for label, interval, opts in RUNS:
        t1 = time.perf_counter()
        out = runs / label.replace(" ", "_")
        res = _cli("backtest", "--data", str(store / interval), "--no-progress", "--out",
                   str(out), *opts)
        if res.returncode != 0:
            print(f"{label}: backtest failed: {res.stderr.strip()}")
            return 1
        run_dir = next(p for p in out.iterdir() if p.is_dir())
        run = load_run(run_dir)
        data = Path(run.config["data"])
        bars = {s: read_bars(p) for s, p in resolve_datasets(data, tuple(run.config["symbols"]))
                .items()}
        rep = check_run(run_dir, bars)
        total.merge(rep)
        traded = sorted(set(run.trades.symbol))
        rows.append((label, len(run.trades), len(run.orders), rep.checks, len(rep.violations),
                     ",".join(traded), time.perf_counter() - t1))
        for v in rep.violations[:10]:
            print(f"  {label}: {v}")
    print(f"\n{'run':28} {'trades':>7} {'orders':>7} {'checks':>8} {'violations':>10}  "
          "symbols traded (s)")
    for label, ntr, nord, checks, nviol, traded, secs in rows:
        print(f"{label:28} {ntr:7d} {nord:7d} {checks:8d} {nviol:10d}  {traded} ({secs:.0f}s)")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(total.by_kind.items()))
    print(f"\nTOTAL: {len(rows)} runs, {total.checks} checks, {len(total.violations)} "
          f"violations\nchecks by kind: {kinds}")
    if args.keep is None:
        print(f"(store and run folders in {work}; pass --keep DIR to choose)")
    return 1 if total.violations else 0


if __name__ == "__main__":
    sys.exit(main())
