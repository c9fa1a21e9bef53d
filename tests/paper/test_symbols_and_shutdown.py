"""Paper trading with a bad or silent symbol, and a shutdown that cannot reconcile (issue 10,
points 2 and 7), against the loopback Alpaca with the real alpaca-py client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from brokers.alpaca.credentials import Credentials
from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.testing import SimServer
from feeds.store import read_bars, write_bars
from ratchet.common.config import Settings
from ratchet.common.errors import DataError
from tests.paper.conftest import (
    BARS,
    REPLAY_START,
    SENTINEL_KEY,
    SENTINEL_SECRET,
    decisions,
    session,
)


def test_a_symbol_without_history_is_refused_at_start(sim: SimServer, creds: Credentials,
                                                      tmp_path: Path) -> None:
    """Regression (issue 10.2): ``paper --symbols ACME,NOPE`` logged "no history for NOPE"
    and then never decided for ACME (a typo idled the bot all day). Now the start stops
    with one line naming the symbol."""
    with pytest.raises(DataError, match=r"^no bars for NOPE from Alpaca .*check the symbol"):
        session(sim, creds, tmp_path, 2, symbols=("ACME", "NOPE"),
                settings=Settings(symbols=("ACME", "NOPE")))


@pytest.fixture
def quiet_sim(tmp_path: Path) -> Iterator[SimServer]:
    """CRUX as bundled; QUIET has the two warm-up sessions but no bar in the replayed one."""
    folder = tmp_path / "bars" / "1Min"
    crux = read_bars(BARS / "1Min" / "CRUX.parquet")
    write_bars(folder / "CRUX.parquet", crux)
    bolt = read_bars(BARS / "1Min" / "BOLT.parquet")
    write_bars(folder / "QUIET.parquet", bolt[bolt.timestamp < pd.Timestamp(REPLAY_START)])
    server = SimServer(book=BarBook.load(folder), key=SENTINEL_KEY, secret=SENTINEL_SECRET,
                       start=REPLAY_START, rate_limit=10**6)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_symbol_whose_data_stops_does_not_stall_the_others(
        quiet_sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (issue 10.1/10.2): QUIET's feed never got a live bar, so Backtrader kept
    the Strategy in ``prenext`` and CRUX's 13:42 crossover was never decided. Now every
    symbol is decided from its own bars (``prenext`` runs the same loop)."""
    symbols = ("CRUX", "QUIET")
    result = session(quiet_sim, creds, tmp_path / "run", 14, symbols=symbols,
                     settings=Settings(symbols=symbols), bar_grace=0.05)
    got = decisions(pd.read_csv(result.audit_path))
    assert ("2025-10-03T13:42:00+00:00", "CRUX", "buy", "signal", 30.0) in got
    assert not [d for d in got if d[1] == "QUIET" and d[2] not in ("wait", "ready")]


def test_shutdown_that_cannot_reconcile_says_so(sim: SimServer, creds: Credentials,
                                                tmp_path: Path) -> None:
    """Regression (issue 10.7): with the broker unreadable at shutdown, paper logged "final
    reconciliation failed" and the summary then showed the STARTUP's "reconciled: state
    matches the broker" (and the command exited 0). Now the result says NOT reconciled and
    what is unknown, and ``cli.py paper`` exits non-zero on it (UnknownStateError)."""
    box: dict[str, Any] = {}

    def broker_gone() -> None:
        sim.faults.http_error(403, method="GET", path="/v2/positions", times=-1)
        box["store"].request_stop()

    result = session(sim, creds, tmp_path, 4, symbols=("ACME",),
                     settings=Settings(symbols=("ACME",)), hooks={2: broker_gone},
                     on_store=lambda st: box.__setitem__("store", st))
    sim.faults.clear()
    assert result.reconciled is False
    assert result.reconcile.startswith("NOT reconciled at shutdown")
    assert "unknown" in result.reconcile and "matches" not in result.reconcile


def test_paper_and_backtest_drop_the_same_out_of_session_bars(
        creds: Credentials, tmp_path: Path) -> None:
    """Issue 10.2: one session rule for both paths. CRUX gets after-hours and pre-market bars
    20% above its regular prices right before the replayed session; both paths drop them
    (they would move the SMAs and the ATR), so the paper session decides exactly as the
    backtest of the same bar file, the 13:42 crossover included."""
    from ratchet.engine.backtest import run_backtest
    from ratchet.engine.datasets import load_datasets

    folder = tmp_path / "bars" / "1Min"
    crux = read_bars(BARS / "1Min" / "CRUX.parquet")
    ext_idx = pd.date_range("2025-10-02 20:00", "2025-10-03 13:29", freq="1min", tz="UTC")
    ext_idx = ext_idx[(ext_idx < pd.Timestamp("2025-10-03 00:00", tz="UTC"))
                      | (ext_idx >= pd.Timestamp("2025-10-03 08:00", tz="UTC"))]
    src = crux.iloc[: len(ext_idx)].reset_index(drop=True)
    extended = src.assign(timestamp=ext_idx.as_unit("us"),
                          **{c: src[c] * 1.2 for c in ("open", "high", "low", "close")})
    frame = pd.concat([crux, extended]).sort_values("timestamp").reset_index(drop=True)
    write_bars(folder / "CRUX.parquet", frame)
    server = SimServer(book=BarBook.load(folder), key=SENTINEL_KEY, secret=SENTINEL_SECRET,
                       start=REPLAY_START, rate_limit=10**6)
    server.start()
    try:
        result = session(server, creds, tmp_path / "run", 14, symbols=("CRUX",),
                         settings=Settings(symbols=("CRUX",)))
    finally:
        server.stop()
    start = pd.Timestamp(REPLAY_START)
    datasets = load_datasets(folder, ("CRUX",), "1Min", end=start + pd.Timedelta(minutes=13))
    expected = run_backtest(Settings(symbols=("CRUX",)), datasets, out=None, start=start)
    bt_audit = pd.DataFrame(expected.audit.rows, columns=[
        "time", "kind", "symbol", "action", "reason", "qty", "price", "client_order_id",
        "detail"])
    got = decisions(pd.read_csv(result.audit_path), since=REPLAY_START)
    assert got == decisions(bt_audit, since=REPLAY_START)
    assert ("2025-10-03T13:42:00+00:00", "CRUX", "buy", "signal", 30.0) in got
