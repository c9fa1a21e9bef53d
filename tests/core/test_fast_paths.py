"""The backtest's fast paths (issue 13) decide and write exactly what the plain paths do.

Each test pins one lever against the straightforward code it replaces: the lean
``SimBroker.next``, the skip of idle held symbols and the order snapshots against
Backtrader's own code paths; the run folder's arrays against the pandas merge/sort/pivot
they replace; the bundled NYSE session table against exchange-calendars; and the command's
imports (no pandas, exchange-calendars, matplotlib, scikit-learn or alpaca on its path).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from analyzers.recorder import benchmark_values, bt_nums_to_us, prices_table
from brokers.backtest import SimBroker
from feeds import sessions
from feeds.btfeed import ArrayCerebro
from feeds.store import write_bars
from feeds.synthetic import random_walk_bars, trading_minutes
from ratchet.common.config import Settings
from ratchet.engine.backtest import run_backtest
from ratchet.engine.datasets import load_datasets
from strategies.ratchet import RatchetStrategy

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = ("ACME", "BOLT", "CRUX", "DYNA")


@pytest.fixture(scope="module")
def staggered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 symbols x 3 sessions; one starts a day late, one has a gap, one ends early."""
    folder = tmp_path_factory.mktemp("bars") / "1Min"
    folder.mkdir()
    index = trading_minutes("2025-09-02", "2025-09-04")
    for i, sym in enumerate(SYMBOLS):
        frame = random_walk_bars(index, seed=300 + i, start_price=30.0 + 20.0 * i)
        if sym == "BOLT":
            frame = frame.iloc[390:]
        elif sym == "CRUX":
            frame = frame.drop(frame.index[500:540])
        elif sym == "DYNA":
            frame = frame.iloc[:900]
        write_bars(folder / f"{sym}.parquet", frame.reset_index(drop=True))
    return folder


def _run(data: Path) -> tuple[list, list, list]:
    settings = Settings(symbols=SYMBOLS, max_positions=3)
    res = run_backtest(settings, load_datasets(data, None, "1Min"), out=None)
    return res.audit.rows, res.strategy.closed_trades, res.recorder.equity


def test_fast_paths_decide_like_backtraders_own(staggered: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _run(staggered)
    assert len(fast[1]) >= 8 and {t["exit_reason"] for t in fast[1]} & {"stop", "trail"}
    # Backtrader's own broker loop and clones, and every held symbol through _on_bar.
    monkeypatch.setattr(SimBroker, "_plain", lambda self: False)
    monkeypatch.setattr(SimBroker, "notify", bt.brokers.BackBroker.notify)
    monkeypatch.setattr(RatchetStrategy, "_idle_hold", lambda self, book: False)
    monkeypatch.setattr(RatchetStrategy, "_getminperstatus", bt.Strategy._getminperstatus)
    # Backtrader's own run loop (advance_peek per feed per step), not the precomputed steps.
    monkeypatch.setattr(ArrayCerebro, "_schedule", lambda self, datas: None)
    plain = _run(staggered)
    assert fast[1] == plain[1]
    assert fast[0] == plain[0]
    assert fast[2] == plain[2]


def test_run_folder_arrays_equal_the_pandas_way(staggered: Path) -> None:
    """prices: the merge of closes and stop levels sorted by (timestamp, symbol); benchmark:
    the pivot of closes, carried forward, normalised, averaged (what the writer did before).

    Regression: the old merge gave a bar one row per recorded stop, and a held symbol
    without a bar in a step (a gap, its data ended) is recorded again on its old bar, so
    such bars appeared twice or more in prices.parquet. One row per bar now (the last level
    recorded for it)."""
    settings = Settings(symbols=SYMBOLS, max_positions=3)
    rec = run_backtest(settings, load_datasets(staggered, None, "1Min"), out=None).recorder
    got = prices_table(rec.bars, rec.stops).to_pandas()
    parts = [pd.DataFrame({"t": dt, "symbol": s, "close": c}) for s, (dt, c) in rec.bars.items()]
    stops = pd.DataFrame(rec.stops, columns=["t", "symbol", "stop"])
    assert stops.duplicated(["t", "symbol"]).any()  # the case the old merge got wrong
    want = pd.concat(parts, ignore_index=True).merge(
        stops.drop_duplicates(["t", "symbol"], keep="last"), on=["t", "symbol"], how="left")
    want.insert(0, "timestamp", pd.to_datetime(bt_nums_to_us(want.pop("t").to_numpy()),
                                               unit="us", utc=True))
    want = want.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)
    assert got["stop"].notna().sum() > 100
    pd.testing.assert_frame_equal(got, want, check_dtype=False)

    eq_us = bt_nums_to_us(np.array([r[0] for r in rec.equity]))
    wide = want.pivot_table(index="timestamp", columns="symbol", values="close",
                            aggfunc="last").sort_index().ffill()
    bh = (wide / wide.bfill().iloc[0]).mean(axis=1) * settings.cash
    expected = bh.reindex(pd.to_datetime(eq_us, unit="us", utc=True), method="ffill")
    np.testing.assert_array_equal(benchmark_values(rec.bars, eq_us, settings.cash),
                                  expected.to_numpy())


def test_session_table_matches_exchange_calendars() -> None:
    """Half days (2024-07-03, 2024-11-29, 2024-12-24), holidays and both DST switches."""
    first = int(pd.Timestamp("2024-01-01").value // 86_400_000_000_000)
    last = int(pd.Timestamp("2025-12-31").value // 86_400_000_000_000)
    table = sessions.schedule(first, last)
    assert sessions._table() is not None, "feeds/nyse_sessions.npz is missing"
    calendar = sessions.calendar_schedule(first, last)
    assert len(table["day"]) == 502
    for key in ("day", "open", "close", "ext_open", "ext_close"):
        np.testing.assert_array_equal(table[key], calendar[key], err_msg=key)


def test_backtest_command_imports_no_heavy_library(tmp_path: Path) -> None:
    """Regression (issue 13): the command imported pandas (~0.45 s of CPU and 40 MiB at
    start), and with the session rule exchange-calendars too, though it needs neither; then
    rich with --no-progress and every Backtrader indicator, analyzer and observer module
    (~0.14 s of CPU) though a backtest uses none."""
    probe = (
        "import sys, runpy, json\n"
        f"sys.argv = ['cli.py', 'backtest', '--symbols', 'ACME', '--end', '2025-10-02',"
        f" '--out', {str(tmp_path)!r}, '--no-progress']\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / 'cli.py')!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('pandas', 'exchange_calendars', 'matplotlib', 'sklearn', 'alpaca',\n"
        "         'numpy.ma', 'rich', 'importlib.abc')\n"
        "loaded = sorted(m for m in heavy if m in sys.modules)\n"
        "# Backtrader's extras exist as modules but their code never ran.\n"
        "extras = ('indicators', 'analyzers', 'observers', 'strategies', 'talib')\n"
        "ran = [e for e in extras if '__getattr__' not in vars(sys.modules['backtrader.' + e])]\n"
        "print(json.dumps(loaded + ran))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert len(list(tmp_path.glob("*/trades.parquet"))) == 1


def test_deferred_backtrader_extras_load_on_first_use() -> None:
    """Code that uses Backtrader's indicators, studies, analyzers and observers still gets
    them when ``ratchet.common.lazyimport`` deferred them (the stock script's way of writing rules,
    stdstats observers, an analyzer): the same results as without the hook."""
    probe = (
        "import sys, json\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "if sys.argv[1] == 'defer':\n"
        "    from ratchet.common.lazyimport import defer_backtrader_extras\n"
        "    assert defer_backtrader_extras()\n"
        "import backtrader as bt\n"
        "from backtrader.indicators import ExponentialMovingAverage\n"
        "class S(bt.Strategy):\n"
        "    def __init__(self):\n"
        "        self.sma = bt.ind.SMA(period=5)\n"
        "        self.atr = bt.indicators.ATR(period=3)\n"
        "        self.ema = ExponentialMovingAverage(period=4)\n"
        "        self.fr = bt.studies.Fractal()\n"
        "        self.vx = bt.indicators.Vortex()\n"
        "    def next(self):\n"
        "        if self.data.close[0] > self.sma[0] and not self.position:\n"
        "            self.buy()\n"
        "        elif self.data.close[0] < self.ema[0] and self.position:\n"
        "            self.close()\n"
        "import math\n"
        "n = 300\n"
        "import datetime as dtm\n"
        "class D(bt.feeds.DataBase):\n"
        "    def start(self):\n"
        "        super().start(); self.i = 0\n"
        "    def _load(self):\n"
        "        if self.i >= n: return False\n"
        "        c = 50 + 5 * math.sin(self.i / 7) + self.i * 0.01\n"
        "        self.lines.datetime[0] = bt.date2num(dtm.datetime(2024, 1, 1)"
        " + dtm.timedelta(minutes=self.i))\n"
        "        for k, v in (('open', c), ('high', c + 1), ('low', c - 1), ('close', c),"
        " ('volume', 1000), ('openinterest', 0)):\n"
        "            getattr(self.lines, k)[0] = v\n"
        "        self.i += 1\n"
        "        return True\n"
        "c = bt.Cerebro(stdstats=True)\n"
        "c.adddata(D())\n"
        "c.addstrategy(S)\n"
        "c.addanalyzer(bt.analyzers.TradeAnalyzer, _name='ta')\n"
        "s = c.run()[0]\n"
        "print(json.dumps([c.broker.getvalue(), s.analyzers.ta.get_analysis().total.total,"
        " len(s.observers)]))\n"
    )
    got = {}
    for mode in ("defer", "plain"):
        out = subprocess.run([sys.executable, "-c", probe, mode], cwd=REPO,
                             capture_output=True, text=True, timeout=120, check=True)
        got[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["defer"] == got["plain"]
    assert got["plain"][1] > 0 and got["plain"][2] >= 2  # it traded; stdstats observers ran


def test_orders_json_columns_are_what_json_dumps_writes() -> None:
    """The orders table formats its status-history and fills JSON by hand (speed): the text
    must stay exactly ``json.dumps``'s, NaN and integer quantities included."""
    from analyzers.recorder import orders_table

    t0 = bt.date2num(pd.Timestamp("2025-09-02 13:31").to_pydatetime())
    base = {"client_order_id": "c", "symbol": "ACME", "side": "buy", "type": "limit",
            "purpose": "entry", "qty": 3.0, "limit_price": 10.0, "stop_price": np.nan,
            "created_time": t0, "status": "filled", "filled_qty": 3.0, "avg_fill_price": 10.0}
    fills = ([], [[t0, 3.0, 10.123456789]], [[t0, 1.0, 0.1 + 0.2], [t0 + 1 / 1440, 2, 7.5]],
             [[t0, 1.0, float("nan")]])
    orders = {i: {**base, "history": [[t0, "submitted"], [t0 + i / 1440, "filled"]][:i + 1],
                  "fills": f} for i, f in enumerate(fills)}
    table = orders_table(orders).to_pylist()
    iso = [bt.num2date(t).replace(tzinfo=UTC).isoformat() for t in (t0, t0 + 1 / 1440)]
    for i, row in enumerate(table):
        rec = orders[i]
        when = [bt.num2date(w).replace(tzinfo=UTC).isoformat() for w, _ in rec["history"]]
        assert row["status_history"] == json.dumps(
            [[w, st] for w, (_, st) in zip(when, rec["history"], strict=True)])
        assert row["fills"] == json.dumps(
            [[bt.num2date(w).replace(tzinfo=UTC).isoformat(), q, p] for w, q, p in rec["fills"]])
    assert table[2]["fills"] == (f'[["{iso[0]}", 1.0, 0.30000000000000004], '
                                 f'["{iso[1]}", 2, 7.5]]')
