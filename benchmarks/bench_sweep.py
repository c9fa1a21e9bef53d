"""Sweep throughput on Dask: 1 vs 2 worker processes, per-cell overhead, backtrader optstrategy.

One command::

    .venv/bin/python benchmarks/bench_sweep.py [--symbols 4] [--days 5] [--repeat 2]

It writes ``--symbols`` x ``--days`` sessions of seeded synthetic 1-minute bars to a temporary
store and sweeps a 16-cell grid (fast 5,8,10,12 x slow 20,30,40,50) through, each variant a
fresh whole process timed from start to exit (imports, cluster start, output files
included), variants alternated, ``--repeat`` rounds:

- ``sweep-1w`` / ``sweep-2w``: ``python cli.py sweep --workers 1|2`` (a new sweep folder each
  time: nothing reused);
- ``plain``: one process that loads the bars once and calls ``run_backtest(out=None)`` for
  each cell in a loop (the cheapest possible in-process sweep: the overhead baseline);
- ``ext-1w`` / ``ext-2w``: ``python cli.py sweep --scheduler tcp://...`` on a cluster started
  beforehand as a user starts one (``dask scheduler`` and 1 or 2 ``dask worker --nworkers 1
  --nthreads 1``, each from its own session like separate shells or machines); the timed
  process is the sweep command;
- ``optstrategy-1`` / ``optstrategy-2``: backtrader's own ``cerebro.optstrategy`` over the same
  cells (``maxcpus`` 1 and 2), with ``PandasData`` feeds and ``bt.indicators``
  (``benchmarks.stock_strategy``), the way a Backtrader user sweeps.

Linux autogroup: on a busy shared machine the kernel shares CPU fairly between SESSIONS,
so the local cluster's workers (one session with the command) together get one session's
share, and 2 local workers cannot beat 1 there; ``ext-*`` workers are separate sessions. The
benchmark prints an autogroup probe (two CPU burners in one session vs in two sessions).

Printed: median (min-max) seconds and cells/minute per variant, the 2-worker speed-up
(target >= 1.8x), the per-cell overhead of ``sweep-1w`` against ``plain`` (target < 5%),
both whole-process and steady state (the sweep's own cell loop, excluding process and
cluster start), and each worker's peak RSS (from the rows: ``peak_rss_mb``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


FAST = (5, 8, 10, 12)
SLOW = (20, 30, 40, 50)
SPEEDUP_TARGET = 1.8
OVERHEAD_TARGET = 0.05


def cells() -> list[tuple[int, int]]:
    """The grid every variant runs."""
    return [(f, s) for f in FAST for s in SLOW]


def child_plain(data: Path, out: Path) -> None:
    """In-process baseline: load once, ``run_backtest`` per cell."""
    from ratchet.common.config import Settings
    from ratchet.engine.backtest import run_backtest
    from ratchet.engine.datasets import load_datasets

    datasets = load_datasets(data, None, "1Min")
    base = Settings(symbols=tuple(datasets))
    t0, c0 = time.perf_counter(), time.process_time()
    trades = []
    for f, s in cells():
        result = run_backtest(base.replace(fast_period=f, slow_period=s), datasets, out=None)
        trades.append(result.stats["trade_count"])
    out.write_text(json.dumps({"loop_seconds": time.perf_counter() - t0, "trades": trades,
                               "cpu_per_cell": (time.process_time() - c0) / len(cells())}))


def child_opt(data: Path, out: Path, maxcpus: int) -> None:
    """backtrader ``optstrategy`` over the same cells: the plain stock-Backtrader version of
    the rules (``benchmarks/stock_backtrader.py``: PandasData feeds, ``bt.indicators``)."""
    import backtrader as bt
    import pandas as pd


    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True, optreturn=True,
                         maxcpus=maxcpus)
    cerebro.broker.setcash(100_000.0)
    cerebro.broker.setcommission(commission=0.0)
    for path in sorted(Path(data).glob("*.parquet")):
        frame = pd.read_parquet(path).set_index("timestamp")
        cerebro.adddata(bt.feeds.PandasData(dataname=frame, name=path.stem))
    fast, slow = zip(*cells(), strict=True)
    # optstrategy crosses every list it is given: pair the cells through one index instead
    cerebro.optstrategy(_cell_strategy(), cell=list(range(len(fast))), fasts=[fast], slows=[slow])
    t0 = time.perf_counter()
    results = cerebro.run()
    out.write_text(json.dumps({"loop_seconds": time.perf_counter() - t0,
                               "runs": len(results)}))


def _cell_strategy() -> type:
    from benchmarks.stock_backtrader import Ratchet

    class Cell(Ratchet):  # one (fast, slow) cell of the grid, picked by index
        params = dict(cell=0, fasts=(), slows=())

        def __init__(self) -> None:
            self.p.fast, self.p.slow = self.p.fasts[self.p.cell], self.p.slows[self.p.cell]
            super().__init__()

    # optstrategy pickles the class for its worker processes: make it findable by name
    Cell.__qualname__ = Cell.__name__ = "Cell"
    Cell.__module__ = __name__
    globals()["Cell"] = Cell
    return Cell


def start_cluster(work: Path, workers: int) -> tuple[str, list[subprocess.Popen]]:
    """``dask scheduler`` + ``workers`` x ``dask worker``, each in its own session."""
    from distributed import Client

    dask = str(Path(sys.executable).with_name("dask"))
    sched_file = work / f"scheduler-{workers}.json"
    sched_file.unlink(missing_ok=True)
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    for _ in range(workers):
        procs.append(subprocess.Popen(
            [dask, "worker", "--scheduler-file", str(sched_file), "--nworkers", "1",
             "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    deadline = time.monotonic() + 120
    while not (sched_file.exists() and sched_file.stat().st_size):
        if time.monotonic() > deadline:
            raise SystemExit("dask scheduler did not start")
        time.sleep(0.1)
    address = json.loads(sched_file.read_text())["address"]
    with Client(address, timeout=60) as client:
        client.wait_for_workers(workers, timeout=120)
    return address, procs


def stop_cluster(procs: list[subprocess.Popen]) -> None:
    """Stop what ``start_cluster`` started."""
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def autogroup_probe() -> str:
    """Seconds of a CPU burner: alone, two in one session, two in two sessions."""
    code = ("import time;t=time.perf_counter();x=0\nfor i in range(4*10**6): x+=i*i\n"
            "print(time.perf_counter()-t)")

    def burn(n: int, sessions: bool) -> float:
        ps = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                               start_new_session=sessions) for _ in range(n)]
        return max(float(p.communicate()[0]) for p in ps)

    return (f"autogroup probe: one burner {burn(1, False):.2f}s, two in one session "
            f"{burn(2, False):.2f}s, two in two sessions {burn(2, True):.2f}s")


def run_variant(name: str, data: Path, work: Path, n: int) -> dict[str, Any]:
    """One whole process; returns wall seconds and what it reported."""
    res = work / f"{name}-{n}.json"
    procs: list[subprocess.Popen] = []
    if name.startswith(("sweep", "ext")):
        workers = name[-2]
        where = ["--workers", workers]
        if name.startswith("ext"):
            address, procs = start_cluster(work, int(workers))
            where = ["--scheduler", address]
        cmd = [sys.executable, str(REPO / "cli.py"), "sweep", "--data", str(data),
               "--grid", "fast=" + ",".join(map(str, FAST)),
               "--grid", "slow=" + ",".join(map(str, SLOW)), *where,
               "--min-trades", "0", "--out", str(work / "sweeps"), "--name", f"{name}-{n}",
               "--no-progress"]
    elif name == "plain":
        cmd = [sys.executable, __file__, "--child", "plain", "--data", str(data), "--result",
               str(res)]
    else:
        cmd = [sys.executable, __file__, "--child", name, "--data", str(data), "--result",
               str(res)]
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "COLUMNS": "200"})
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        stop_cluster(procs)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    # CPU of the command and its reaped children (the local cluster's workers; not ext-*).
    out: dict[str, Any] = {"wall": wall, "command_cpu": cpu1.ru_utime + cpu1.ru_stime
                           - cpu0.ru_utime - cpu0.ru_stime}
    if name.startswith(("sweep", "ext")):
        import pandas as pd

        frame = pd.read_parquet(work / "sweeps" / f"{name}-{n}" / "results.parquet")
        text = " ".join(proc.stdout.split())
        loop = float(text.split(" qualified ")[1].split(" in ")[1].split("s")[0].replace(",", ""))
        done = pd.to_datetime(frame["computed_at"])
        firsts = done.groupby(frame["worker"]).min()
        span = (done.max() - firsts.max()).total_seconds()
        steady = (len(frame) - len(firsts)) / span if span > 0 else float("nan")
        out.update(loop_seconds=loop, rows=len(frame), steady_cells_per_s=steady,
                   cpu_per_cell=float(frame["cpu_seconds"].median()),
                   peak_rss_mb=frame.groupby("worker")["peak_rss_mb"].max().to_dict(),
                   cell_seconds=float(frame["backtest_seconds"].median()))
    else:
        out.update(json.loads(res.read_text()))
    return out


def med(xs: list[float]) -> str:
    """median (min-max)."""
    return f"{statistics.median(xs):7.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main() -> None:  # noqa: C901 - one flat report
    """Parse arguments; run the variants alternately; print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--symbols", type=int, default=4)
    ap.add_argument("--days", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--variants", default="plain,sweep-1w,sweep-2w,ext-1w,ext-2w,"
                                          "optstrategy-1,optstrategy-2")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "plain":
        return child_plain(args.data, args.result)
    if args.child:
        return child_opt(args.data, args.result, int(args.child[-1]))
    from benchmarks.bench_backtest import write_dataset

    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        work = Path(tmp)
        data, bars = write_dataset(work / "bars", args.symbols, args.days)
        print(f"data: {args.symbols} symbols x {args.days} sessions = {bars:,} bars; "
              f"{len(cells())} cells; load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs (shared machine: figures vary)")
        got: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        print(autogroup_probe(), flush=True)
        for n in range(args.repeat):
            for v in variants:
                got[v].append(run_variant(v, data, work, n))
                print(f"  round {n + 1} {v:14s} {got[v][-1]['wall']:.2f}s", flush=True)
    n = len(cells())
    print(f"\n{'variant':14s} {'whole process s':>22s} {'cells/min':>10s} "
          f"{'cell loop s':>22s} {'cells/min (loop)':>16s}")
    for v in variants:
        walls = [r["wall"] for r in got[v]]
        loops = [r["loop_seconds"] for r in got[v]]
        print(f"{v:14s} {med(walls):>22s} {60 * n / statistics.median(walls):10.1f} "
              f"{med(loops):>22s} {60 * n / statistics.median(loops):16.1f}")
    if "sweep-1w" in got and "sweep-2w" in got:
        w1 = [r["wall"] for r in got["sweep-1w"]]
        w2 = [r["wall"] for r in got["sweep-2w"]]
        l1 = [r["loop_seconds"] for r in got["sweep-1w"]]
        l2 = [r["loop_seconds"] for r in got["sweep-2w"]]
        ratio = statistics.median(w1) / statistics.median(w2)
        loop_ratio = statistics.median(l1) / statistics.median(l2)
        print(f"\n2 workers vs 1: whole process {ratio:.2f}x, cell loop {loop_ratio:.2f}x "
              f"(target >= {SPEEDUP_TARGET}x; per-round loop ratios "
              f"{', '.join(f'{a / b:.2f}' for a, b in zip(l1, l2, strict=True))})")
        for r in got["sweep-2w"][-1:]:
            print(f"peak RSS per worker (2-worker run): {r['peak_rss_mb']} MB")
    if "ext-1w" in got and "ext-2w" in got:
        e1 = [r["loop_seconds"] for r in got["ext-1w"]]
        e2 = [r["loop_seconds"] for r in got["ext-2w"]]
        w1 = [r["wall"] for r in got["ext-1w"]]
        w2 = [r["wall"] for r in got["ext-2w"]]
        s1 = statistics.median([r["steady_cells_per_s"] for r in got["ext-1w"]])
        s2 = statistics.median([r["steady_cells_per_s"] for r in got["ext-2w"]])
        print(f"dask scheduler + separate workers, 2 vs 1: sweep command "
              f"{statistics.median(w1) / statistics.median(w2):.2f}x, cell loop "
              f"{statistics.median(e1) / statistics.median(e2):.2f}x, steady state "
              f"{s2 / s1:.2f}x (per-round loop ratios "
              f"{', '.join(f'{a / b:.2f}' for a, b in zip(e1, e2, strict=True))}; target >= "
              f"{SPEEDUP_TARGET}x)")
        print(f"peak RSS per worker (ext-2w): {got['ext-2w'][-1]['peak_rss_mb']} MB")
    if "plain" in got and "ext-1w" in got:
        p_loop = statistics.median([r["loop_seconds"] for r in got["plain"]])
        s1 = statistics.median([r["steady_cells_per_s"] for r in got["ext-1w"]])
        plain_cell = p_loop / len(cells())
        print(f"per-cell overhead of ext-1w vs plain (steady state): "
              f"{(1 / s1 - plain_cell) / plain_cell:+.1%} ({1 / s1:.3f}s vs {plain_cell:.3f}s)")
    if "plain" in got:
        plain_cpu = statistics.median([r["cpu_per_cell"] for r in got["plain"]])
        for v in [v for v in variants if v.startswith(("sweep", "ext"))]:
            cpu = statistics.median([r["cpu_per_cell"] for r in got[v]])
            print(f"CPU per cell, {v} worker vs plain loop: {cpu:.3f}s vs {plain_cpu:.3f}s "
                  f"({(cpu - plain_cpu) / plain_cpu:+.1%}; median cell, incl. the worker's own "
                  "threads)")
        for v in ("sweep-1w", "sweep-2w"):
            if v in got:
                cmd = statistics.median([r["command_cpu"] for r in got[v]])
                base = statistics.median([r["command_cpu"] for r in got["plain"]])
                print(f"whole-command CPU, {v} vs plain: {cmd:.1f}s vs {base:.1f}s "
                      f"({(cmd - base) / base:+.1%}: imports, cluster start, scheduler, rows)")
    if "plain" in got and "sweep-1w" in got:
        p_wall = statistics.median([r["wall"] for r in got["plain"]])
        p_loop = statistics.median([r["loop_seconds"] for r in got["plain"]])
        s_wall = statistics.median([r["wall"] for r in got["sweep-1w"]])
        s_loop = statistics.median([r["loop_seconds"] for r in got["sweep-1w"]])
        steady = statistics.median([r["steady_cells_per_s"] for r in got["sweep-1w"]])
        plain_cell = p_loop / len(cells())
        print(f"per-cell overhead of sweep-1w vs plain: steady state "
              f"{(1 / steady - plain_cell) / plain_cell:+.1%} ({1 / steady:.3f}s vs "
              f"{plain_cell:.3f}s a cell, after each worker's first cell), cell loop incl. "
              f"worker warm-up {(s_loop - p_loop) / p_loop:+.1%}, whole process "
              f"{(s_wall - p_wall) / p_wall:+.1%} (target < {OVERHEAD_TARGET:.0%})")
        if "sweep-2w" in got:
            s2 = statistics.median([r["steady_cells_per_s"] for r in got["sweep-2w"]])
            print(f"steady-state rate: 1 worker {60 * steady:.1f} cells/min, 2 workers "
                  f"{60 * s2:.1f} cells/min ({s2 / steady:.2f}x)")
    return None


if __name__ == "__main__":
    main()
