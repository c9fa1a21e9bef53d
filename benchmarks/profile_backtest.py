"""Where a backtest spends its time: cProfile of one variant of ``bench_backtest.py``.

    .venv/bin/python benchmarks/profile_backtest.py [--variant ours|stock] [--symbols 20]
        [--days 21] [--top 30] [--out FILE.prof] [--memory]

Writes the same synthetic data set as the benchmark, profiles one run of the variant (the
same code path the benchmark times) and prints the functions by own time and by cumulative
time, then a few groups that matter for the feed comparison (Cerebro's per-step feed
advance, the Strategy, the recorder, the broker, preload and indicators). cProfile roughly
doubles the run time of call-heavy code, so read shares, not seconds. ``--out`` keeps the raw
profile for ``snakeviz`` or ``pstats``. ``--memory`` instead traces allocations (tracemalloc)
and prints the peak and the source lines holding the most memory at the end of the run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(REPO))

from benchmarks.bench_backtest import write_dataset  # noqa: E402

VARIANTS: tuple[str, ...] = ("ours", "stock")

#: (label, file suffix, function name) of the cumulative entries worth a line of their own.
GROUPS: tuple[tuple[str, str, str], ...] = (
    ("cerebro run loop (stock)", "backtrader/cerebro.py", "_runonce"),
    ("ArrayCerebro run loop (precomputed steps)", "feeds/btfeed.py", "_runonce"),
    ("feed preload (stock: PandasData._load per bar)", "backtrader/feed.py", "preload"),
    ("feed advance, per feed per step", "backtrader/feed.py", "advance"),
    ("ArrayData.advance, per feed per step", "feeds/btfeed.py", "advance"),
    ("indicators, vectorised pass", "backtrader/lineiterator.py", "_once"),
    ("indicators advanced per step", "backtrader/indicator.py", "advance"),
    ("Strategy._oncepost (bt's per-step strategy work)", "backtrader/strategy.py", "_oncepost"),
    ("RatchetStrategy.next", "strategies/ratchet.py", "next"),
    ("RunRecorder.next", "analyzers/recorder.py", "next"),
    ("broker notify + next", "backtrader/cerebro.py", "_brokernotify"),
    ("bt.num2date (bar time conversions)", "backtrader/utils/dateintern.py", "num2date"),
    ("prepare_lines (signal + ATR, vectorised)", "ratchet/engine/backtest.py", "prepare_lines"),
    ("write_run_folder", "analyzers/recorder.py", "write_run_folder"),
    ("read_arrays (Parquet -> numpy)", "feeds/store.py", "read_arrays"),
)


def group_lines(stats: pstats.Stats) -> list[str]:
    """One line per entry of ``GROUPS`` found in ``stats``: calls and cumulative seconds."""
    raw = stats.stats  # type: ignore[attr-defined]
    total = max(ct for (_, _, _, ct, _) in raw.values())
    out = []
    for label, suffix, name in GROUPS:
        for (path, _line, func), (_cc, nc, _tt, ct, _callers) in raw.items():
            if func == name and path.endswith(suffix):
                out.append(f"  {label:<52} {nc:>9,} calls {ct:8.2f}s {ct / total:6.1%}")
                break
    return out


Runner = Callable[[Path], Any]


def run_ours(data: Path) -> Any:
    """``cli.py backtest``'s work after the imports: load, run, write the run folder."""
    from ratchet.common.config import Settings
    from ratchet.engine.backtest import run_backtest
    from ratchet.engine.datasets import load_datasets

    datasets = load_datasets(data, None, "1Min")
    with tempfile.TemporaryDirectory(prefix="ratchet-prof-runs-") as out:
        result = run_backtest(Settings(symbols=tuple(datasets)), datasets, out=Path(out))
    return result.strategy.closed_trades


def run_stock(data: Path) -> Any:
    """``benchmarks/stock_backtrader.py``'s work after the imports."""
    from benchmarks.stock_backtrader import run

    return run(data)[0].trades


def memory_report(runner: Runner, data: Path, top: int) -> None:
    """Run once under tracemalloc; print the peak and the biggest holders at the end."""
    tracemalloc.start(1)
    result = runner(data)  # kept alive until the snapshot: it holds the run's records
    current, peak = tracemalloc.get_traced_memory()
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    print(f"traced: peak {peak / 2**20:,.1f} MiB, held at the end {current / 2**20:,.1f} MiB "
          f"({len(result):,} trades)")
    for stat in snap.statistics("lineno")[:top]:
        frame = stat.traceback[0]
        print(f"  {stat.size / 2**20:8.1f} MiB {stat.count:>9,} blocks  "
              f"{frame.filename}:{frame.lineno}")


def main(argv: list[str] | None = None) -> int:
    """Profile one run and print the report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=VARIANTS, default="ours")
    p.add_argument("--symbols", type=int, default=20)
    p.add_argument("--days", type=int, default=21)
    p.add_argument("--top", type=int, default=30, help="functions listed per table")
    p.add_argument("--out", type=Path, default=None, help="also save the raw profile here")
    p.add_argument("--memory", action="store_true", help="trace allocations instead of time")
    args = p.parse_args(argv)
    runner = run_ours if args.variant == "ours" else run_stock
    with tempfile.TemporaryDirectory(prefix="ratchet-prof-") as tmp:
        data, total = write_dataset(Path(tmp), args.symbols, args.days)
        if args.memory:
            memory_report(runner, data, args.top)
            return 0
        prof = cProfile.Profile()
        prof.enable()
        runner(data)
        prof.disable()
    if args.out is not None:
        prof.dump_stats(args.out)
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    print(buf.getvalue())
    print(f"{args.variant}: {total:,} bars; groups (cumulative, overlapping):")
    print("\n".join(group_lines(stats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
