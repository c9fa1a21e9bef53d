"""Benchmark: ML signal speed, live (each new bar, 20 symbols) and backtest (one vectorised pass).

    .venv/bin/python benchmarks/bench_ml.py [--symbols 20] [--steps 300] [--sample 250] [--full]
                                            [--model FILE] [--threads 1]

Data: ``--symbols`` x one month (October 2025, 23 sessions, ~8,970 bars each) of seeded
synthetic 1-minute bars. Model: ``--model FILE``, else one fitted here on the bundled bars with
the default settings of ``cli.py train`` (its fit time is printed, not counted).

(a) **live**: what the paper loop does on each new bar. Every symbol's
    ``brokers.alpaca.bars.LiveIndicators`` (the paper loop's own class: a trailing window of
    ``max(2 x warmup, 120)`` bars turned into a DataFrame, ``MLSignal.compute``, last row) takes
    the new bar; one *step* = all symbols. p50/p99/max per step vs the 60 s between 1-minute
    bars. Every live signal must equal the backtest's value for that bar, bit for bit.
(b) **backtest**: ``MLSignal.compute`` once per symbol over the whole month (features in one
    pass, one ``predict_proba`` call) vs a bar-by-bar loop computing the same prediction for
    each bar from its trailing ``warmup`` bars. The loop runs on ``--sample`` evenly spaced bars
    per symbol (``--full``: every bar) and its per-bar cost is scaled to all bars. Both must
    agree exactly on every sampled bar.

Targets: live p99 <= 1% of the bar interval (0.6 s for 20 symbols); vectorised >= 20x faster
than bar by bar. Exit code 0 when both hold, 2 when not, 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

BAR_SECONDS = 60.0
LIVE_TARGET = 0.01  # p99 for all symbols as a fraction of the bar interval
BACKTEST_TARGET = 20.0


def make_bars(n_symbols: int) -> dict[str, pd.DataFrame]:
    """One month of seeded 1-minute bars per symbol."""
    from feeds.synthetic import random_walk_bars, trading_minutes

    index = trading_minutes("2025-10-01", "2025-10-31")
    return {f"S{i:03d}": random_walk_bars(index, seed=2000 + i, start_price=30.0 + 7 * i)
            for i in range(n_symbols)}


def get_model(path: Path | None, threads: int) -> tuple[Any, str]:
    """The model to benchmark: loaded from ``path``, or fitted on the bundled bars."""
    from strategies.ml import build_dataset, fit_final, load_model, load_training_bars

    if path is not None:
        return load_model(path), f"loaded from {path}"
    t0 = time.perf_counter()
    frames, interval = load_training_bars(ROOT / "data" / "bars" / "1Min", None)
    data = build_dataset(frames, 15)
    model = fit_final(data, frames, 15, interval, seed=0, threads=threads)
    return model, (f"fitted on the bundled bars ({len(data):,} rows, default settings) in "
                   f"{time.perf_counter() - t0:.1f}s")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else math.nan


def bench_live(signal: Any, bars: dict[str, pd.DataFrame], start: int,
               steps: int) -> dict[str, Any]:
    """Feed ``steps`` new bars to every symbol's live indicator, timing each step."""
    from brokers.alpaca.bars import LiveIndicators
    from brokers.alpaca.parsing import BarRecord

    def records(sym: str, frame: pd.DataFrame, lo: int, hi: int) -> list[BarRecord]:
        part = frame.iloc[lo:hi]
        return [BarRecord(sym, ts.to_pydatetime(), o, h, low, c, v) for ts, o, h, low, c, v in
                zip(part["timestamp"], part["open"], part["high"], part["low"], part["close"],
                    part["volume"], strict=True)]

    live = {}
    pending = {}
    for sym, frame in bars.items():
        ind = LiveIndicators(sym, signal, atr_period=14)
        ind.warm(records(sym, frame, 0, start))
        live[sym] = ind
        pending[sym] = records(sym, frame, start, start + steps)
    window = next(iter(live.values())).window
    times: list[float] = []
    got: dict[str, list[float]] = {sym: [] for sym in bars}
    for k in range(steps):
        t0 = time.perf_counter()
        for sym, ind in live.items():
            got[sym].append(ind.update(pending[sym][k])[0])
        times.append(time.perf_counter() - t0)
    mismatches = 0
    for sym, frame in bars.items():
        want = signal.compute(frame)["signal"].to_numpy()[start : start + steps]
        mismatches += int((~((np.asarray(got[sym]) == want) |
                             (np.isnan(got[sym]) & np.isnan(want)))).sum())
    return {"times": times, "window": window, "mismatches": mismatches}


def bench_backtest(signal: Any, bars: dict[str, pd.DataFrame], sample: int | None,
                   ) -> dict[str, Any]:
    """Vectorised pass per symbol vs bar-by-bar predictions from trailing windows."""
    from strategies.features import compute_features

    t0 = time.perf_counter()
    for frame in bars.values():
        compute_features(frame)
    features_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    full = {sym: signal.compute(frame) for sym, frame in bars.items()}
    vector_s = time.perf_counter() - t0

    w = signal.warmup
    loop_s, looped, mismatches = 0.0, 0, 0
    for sym, frame in bars.items():
        n = len(frame)
        idx = np.arange(w - 1, n)
        if sample is not None and sample < idx.shape[0]:
            idx = np.unique(np.linspace(w - 1, n - 1, sample).round().astype(int))
        p = np.empty(idx.shape[0])
        s = np.empty(idx.shape[0])
        t0 = time.perf_counter()
        for j, i in enumerate(idx):
            row = signal.compute(frame.iloc[i - w + 1 : i + 1]).iloc[-1]
            p[j], s[j] = row["p"], row["signal"]
        loop_s += time.perf_counter() - t0
        looped += idx.shape[0]
        mismatches += int((p != full[sym]["p"].to_numpy()[idx]).sum())
        mismatches += int((s != full[sym]["signal"].to_numpy()[idx]).sum())
    total = sum(len(f) - w + 1 for f in bars.values())
    return {"features_s": features_s, "vector_s": vector_s, "loop_s": loop_s, "looped": looped,
            "loop_total_s": loop_s / looped * total, "predicted": total,
            "mismatches": mismatches}


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks and print the figures and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--steps", type=int, default=300, help="live bars per symbol to time")
    ap.add_argument("--sample", type=int, default=250,
                    help="bars per symbol in the bar-by-bar loop (ignored with --full)")
    ap.add_argument("--full", action="store_true", help="bar-by-bar over every bar (slow)")
    ap.add_argument("--model", type=Path, default=None, help="model file [fit one here]")
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads for the fit")
    args = ap.parse_args(argv)
    # The synthetic month overlaps the bundled bars the model is fitted on; that warning is
    # about result quality, not speed.
    logging.basicConfig(level=logging.ERROR)

    from strategies.ml import MLSignal

    model, how = get_model(args.model, args.threads)
    signal = MLSignal(model)
    bars = make_bars(args.symbols)
    n_bars = sum(len(f) for f in bars.values())
    print(f"model: {how}; {len(model.feature_names)} features, warm-up {signal.warmup} bars")
    print(f"data: {args.symbols} symbols x {n_bars // args.symbols:,} 1-minute bars "
          f"(one month) = {n_bars:,} bars")

    live = bench_live(signal, bars, start=1000, steps=args.steps)
    p50, p99 = _percentile(live["times"], 50), _percentile(live["times"], 99)
    worst = max(live["times"])
    print(f"(a) live, {args.symbols} symbols per new bar (trailing window {live['window']} bars, "
          f"{args.steps} bars): p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, max "
          f"{worst * 1e3:.1f} ms = {p99 / BAR_SECONDS:.3%} of the {BAR_SECONDS:.0f} s between "
          f"bars (headroom {BAR_SECONDS / p99:,.0f}x); per symbol p50 "
          f"{p50 / args.symbols * 1e3:.2f} ms")

    bt = bench_backtest(signal, bars, None if args.full else args.sample)
    ratio = bt["loop_total_s"] / bt["vector_s"]
    scope = "every bar" if args.full else f"{bt['looped']:,} sampled bars, scaled"
    print(f"(b) backtest, {bt['predicted']:,} predictions: vectorised {bt['vector_s']:.2f} s "
          f"(features {bt['features_s']:.2f} s, {bt['predicted'] / bt['vector_s']:,.0f} "
          f"bars/s) vs bar by bar {bt['loop_total_s']:.1f} s ({scope}: "
          f"{bt['loop_s'] / bt['looped'] * 1e3:.2f} ms/bar)")
    print(f"ratio: vectorised is {ratio:,.0f}x faster than bar by bar "
          f"(target >= {BACKTEST_TARGET:.0f}x); live p99 is {p99 / BAR_SECONDS:.3%} of a bar "
          f"(target <= {LIVE_TARGET:.0%})")

    if live["mismatches"] or bt["mismatches"]:
        print(f"MISMATCH: live {live['mismatches']}, bar-by-bar {bt['mismatches']} values differ "
              "from the vectorised pass", file=sys.stderr)
        return 1
    print("agreement: live and bar-by-bar predictions equal the vectorised pass exactly")
    ok = p99 <= LIVE_TARGET * BAR_SECONDS and ratio >= BACKTEST_TARGET
    print("OK" if ok else "BELOW TARGET")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
