"""``cli.py parity`` on a full-day paper run of 20 symbols: whole-process time and peak RSS.

One command::

    .venv/bin/python benchmarks/bench_parity.py [--symbols 20] [--repeat 3]

1. Writes 3 NYSE sessions of seeded synthetic 1-minute bars for ``--symbols`` symbols
   (``bench_backtest.write_dataset``) to a temporary store.
2. Makes the run folder a user would have: ``cli.py paper --sim --sim-data <store> --live
   --confirm-live`` replays the third session (390 bars x 20 symbols, two sessions of warm-up)
   against the loopback Alpaca in lockstep, as a subprocess (not timed).
3. Times, as fresh subprocesses, interleaved: ``cli.py parity RUN`` (the command measured)
   and, as the baseline, ``cli.py backtest`` over the same store and day (what a plain
   backtest of those bars costs, imports and output files included). Prints medians with
   the spread and each variant's peak RSS (``ru_maxrss`` of the child).

Target: parity costs about one backtest of the day (it is one, plus the comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_backtest import write_dataset  # noqa: E402


def timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """(wall seconds, result) of one subprocess run."""
    t0 = time.perf_counter()
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    return time.perf_counter() - t0, out


def peak_rss(args: list[str]) -> float:
    """Peak RSS (MiB) of one run, measured alone in a wrapper process."""
    code = ("import resource,subprocess,sys;subprocess.run(sys.argv[1:],stdout=subprocess."
            "DEVNULL,stderr=subprocess.DEVNULL);print(resource.getrusage(resource."
            "RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                         text=True)
    return int(out.stdout.strip() or 0) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, _ = write_dataset(root / "bars", args.symbols, 3)
        syms = sorted(p.stem for p in folder.glob("*.parquet"))
        import exchange_calendars as xcals

        day = xcals.get_calendar("XNYS").sessions_window("2025-09-02", 3)[-1]
        t0 = time.perf_counter()
        made = subprocess.run(
            [py, "cli.py", "paper", "--sim", "--sim-data", str(root / "bars"), "--live",
             "--confirm-live", "--sim-start", f"{day.date()}T13:30:00+00:00", "--warmup-days",
             "4", "--symbols", ",".join(syms), "--out", str(root / "runs"),
             "--state-dir", str(root / "state"), "--log-dir", str(root / "logs")],
            cwd=REPO, capture_output=True, text=True, env={**os.environ})
        if made.returncode != 0:
            print(made.stdout[-2000:], made.stderr[-2000:])
            return 1
        run = next((root / "runs").iterdir())
        cfg = json.loads((run / "config.json").read_text())
        print(f"paper rehearsal: {cfg['steps']} steps x {len(syms)} symbols in "
              f"{time.perf_counter() - t0:.1f} s -> {run.name}")
        parity = [py, "cli.py", "parity", str(run), "--tolerance", "100"]
        backtest = [py, "cli.py", "backtest", "--data", str(folder), "--symbols",
                    ",".join(syms), "--start", str(day.date()), "--end", str(day.date()),
                    "--out", str(root / "bt")]
        times: dict[str, list[float]] = {"parity": [], "backtest": []}
        for i in range(args.repeat):
            order = [("parity", parity), ("backtest", backtest)]
            for name, cmd in (order if i % 2 == 0 else order[::-1]):
                wall, out = timed(cmd)
                if out.returncode != 0:
                    print(name, out.stdout[-1500:], out.stderr[-1500:])
                    return 1
                times[name].append(wall)
        report = json.loads((run / "parity.json").read_text())
        rss = {"parity": peak_rss(parity), "backtest": peak_rss(backtest)}
    print(f"parity: {report['pct_identical']:.1f}% identical, {report['bars']:,} bars, "
          f"{report['live_decisions']} live decisions, {report['totals']['fills_compared']} "
          "fills compared")
    for name, ts in times.items():
        print(f"{name:>8}: median {statistics.median(ts):.2f} s (min {min(ts):.2f}, max "
              f"{max(ts):.2f}, n={len(ts)}), peak RSS {rss[name]:.0f} MiB")
    ratio = statistics.median(times["parity"]) / statistics.median(times["backtest"])
    print(f"parity / backtest of the same bars (whole processes): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
