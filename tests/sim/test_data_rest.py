"""StockHistoricalDataClient against the server: bars for several symbols, every timeframe,
pagination across symbols, latest bar/quote/trade, snapshots, and no bar from the future."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import Adjustment, DataFeed
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.requests import (
    StockBarsRequest,
    StockLatestBarRequest,
    StockLatestQuoteRequest,
    StockLatestTradeRequest,
    StockSnapshotRequest,
)
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.testing import SimServer
from feeds.store import read_bars, resample_bars
from tests.sim.conftest import BARS, DEFAULT_START

SYMS = ["ACME", "BOLT", "CRUX"]


def bars(client: StockHistoricalDataClient, tf: TimeFrame, start: datetime,
         end: datetime | None = None, limit: int | None = None, symbols: list[str] = SYMS,
         ) -> dict[str, list]:  # type: ignore[type-arg]
    req = StockBarsRequest(symbol_or_symbols=symbols, timeframe=tf, start=start, end=end,
                           limit=limit, feed=DataFeed.IEX, adjustment=Adjustment.SPLIT)
    return client.get_stock_bars(req).data


def test_minute_bars_match_the_parquet_files_and_stop_at_now(
        sim: SimServer, data_client: StockHistoricalDataClient) -> None:
    got = bars(data_client, TimeFrame.Minute, DEFAULT_START - timedelta(days=2),
               end=DEFAULT_START + timedelta(days=5))
    frame = read_bars(BARS / "1Min" / "ACME.parquet")
    want = frame[(frame.timestamp >= DEFAULT_START - timedelta(days=2))
                 & (frame.timestamp < DEFAULT_START)]
    assert [b.timestamp for b in got["ACME"]] == list(want.timestamp)
    assert [b.close for b in got["ACME"]] == list(want.close)
    assert got["ACME"][0].trade_count == want.trade_count.iloc[0]
    assert set(got) == set(SYMS)
    sim.advance(minutes=5)
    later = bars(data_client, TimeFrame.Minute, DEFAULT_START)
    assert [b.timestamp.minute for b in later["BOLT"]] == [30, 31, 32, 33, 34]


@pytest.mark.parametrize(("tf", "rule"), [
    (TimeFrame(5, TimeFrameUnit.Minute), "5Min"),
    (TimeFrame(15, TimeFrameUnit.Minute), "15Min"),
    (TimeFrame.Hour, "1Hour"),
    (TimeFrame.Day, "1Day"),
])
def test_aggregated_timeframes_equal_the_store_resampler(
        sim: SimServer, data_client: StockHistoricalDataClient, tf: TimeFrame,
        rule: str) -> None:
    sim.advance(days=3)  # Mon 2025-10-06 09:30: the Oct 1-3 sessions are complete
    start = datetime(2025, 10, 1, tzinfo=UTC)
    got = bars(data_client, tf, start, symbols=["ACME"])["ACME"]
    frame = read_bars(BARS / "1Min" / "ACME.parquet")
    frame = frame[frame.timestamp < datetime(2025, 10, 4, tzinfo=UTC)]
    want = resample_bars(frame, rule)
    assert [b.timestamp for b in got] == list(want.timestamp)
    assert [b.close for b in got] == pytest.approx(list(want.close))
    assert [b.volume for b in got] == pytest.approx(list(want.volume))
    assert [b.high for b in got] == pytest.approx(list(want.high))


def test_week_and_month_bars_only_when_complete(sim: SimServer,
                                                data_client: StockHistoricalDataClient) -> None:
    start = datetime(2025, 8, 1, tzinfo=UTC)
    weeks = bars(data_client, TimeFrame.Week, start, symbols=["ACME"])["ACME"]
    months = bars(data_client, TimeFrame.Month, start, symbols=["ACME"])["ACME"]
    # Replay is Fri Oct 3 09:30: the week of Sep 29 and the month of October are unfinished.
    assert weeks[-1].timestamp.date().isoformat() == "2025-09-22"
    assert [m.timestamp.month for m in months] == [8, 9]


def test_limit_is_shared_across_symbols_and_pages_resume(
        sim: SimServer, data_client: StockHistoricalDataClient) -> None:
    start = datetime(2025, 10, 2, 19, 30, tzinfo=UTC)  # 15:30 New York
    full = bars(data_client, TimeFrame.Minute, start)
    assert sum(len(v) for v in full.values()) == 3 * 30  # 15:30-16:00 of Oct 2 per symbol
    capped = bars(data_client, TimeFrame.Minute, start, limit=45)
    assert {k: len(v) for k, v in capped.items()} == {"ACME": 30, "BOLT": 15}
    # The SDK follows next_page_token; tiny pages must still give the whole set, in order.
    sess = requests.Session()
    sess.headers.update({"APCA-API-KEY-ID": sim.key, "APCA-API-SECRET-KEY": sim.secret})
    token, pages, seen = None, 0, {}
    while True:
        params = {"symbols": ",".join(SYMS), "timeframe": "1Min", "start": start.isoformat(),
                  "limit": 7}
        if token:
            params["page_token"] = token
        body = sess.get(f"{sim.base_url}/v2/stocks/bars", params=params).json()
        pages += 1
        assert sum(len(v) for v in body["bars"].values()) <= 7
        for sym, rows in body["bars"].items():
            seen.setdefault(sym, []).extend(r["t"] for r in rows)
        token = body["next_page_token"]
        if token is None:
            break
    assert pages == 13  # 90 bars / 7 per page
    assert {k: len(v) for k, v in seen.items()} == {s: 30 for s in SYMS}
    assert all(v == sorted(set(v)) for v in seen.values())
    desc = sess.get(f"{sim.base_url}/v2/stocks/bars", params={
        "symbols": "ACME", "timeframe": "1Min", "start": start.isoformat(), "sort": "desc",
        "limit": 2}).json()
    assert [b["t"] for b in desc["bars"]["ACME"]] == ["2025-10-02T19:59:00Z",
                                                     "2025-10-02T19:58:00Z"]


def test_no_data_and_errors(sim: SimServer, data_client: StockHistoricalDataClient) -> None:
    sess = requests.Session()
    sess.headers.update({"APCA-API-KEY-ID": sim.key, "APCA-API-SECRET-KEY": sim.secret})
    empty = sess.get(f"{sim.base_url}/v2/stocks/bars", params={
        "symbols": "ACME", "timeframe": "1Min", "start": "2024-01-01", "end": "2024-01-02"})
    assert empty.json() == {"bars": {}, "next_page_token": None, "currency": "USD"}
    with pytest.raises(APIError) as exc:
        sess_tf = sess.get(f"{sim.base_url}/v2/stocks/bars",
                           params={"symbols": "ACME", "timeframe": "7Years"})
        raise APIError(sess_tf.text)  # the SDK's own TimeFrame rejects bad values first
    assert exc.value.code == 42210000 and exc.value.message == "invalid timeframe"
    unknown = bars(data_client, TimeFrame.Minute, DEFAULT_START - timedelta(days=1),
                   symbols=["ACME", "NOPE"])
    assert "NOPE" not in unknown and unknown["ACME"]
    single = sess.get(f"{sim.base_url}/v2/stocks/ACME/bars", params={
        "timeframe": "1Day", "start": "2025-09-29"}).json()
    assert single["symbol"] == "ACME" and [b["t"][:10] for b in single["bars"]] == [
        "2025-09-29", "2025-09-30", "2025-10-01", "2025-10-02"]


def test_latest_bar_quote_trade_and_snapshot(sim: SimServer, book: BarBook,
                                             data_client: StockHistoricalDataClient) -> None:
    sim.advance(minutes=3, seconds=30)  # 09:33:30, bar 09:33 in progress
    latest = data_client.get_stock_latest_bar(StockLatestBarRequest(symbol_or_symbols=SYMS))
    assert {b.timestamp.minute for b in latest.values()} == {32}  # last *closed* bar
    i = book.bar_starting_at("ACME", int(datetime(2025, 10, 3, 13, 33, tzinfo=UTC).timestamp()
                                         * 1e9))
    trade = data_client.get_stock_latest_trade(StockLatestTradeRequest(symbol_or_symbols="ACME"))
    assert trade["ACME"].price == book.bars["ACME"].bars.o[i]  # the running bar's open
    quote = data_client.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols="ACME"))
    assert quote["ACME"].bid_price <= trade["ACME"].price <= quote["ACME"].ask_price
    snap = data_client.get_stock_snapshot(StockSnapshotRequest(symbol_or_symbols=SYMS))
    s = snap["ACME"]
    assert s.minute_bar.timestamp.minute == 32
    assert s.daily_bar.timestamp == datetime(2025, 10, 3, 4, tzinfo=UTC)
    assert s.daily_bar.close == s.minute_bar.close  # today's bar so far
    assert s.previous_daily_bar.timestamp == datetime(2025, 10, 2, 4, tzinfo=UTC)
    assert s.daily_bar.volume == sum(b.volume for b in bars(
        data_client, TimeFrame.Minute, DEFAULT_START, symbols=["ACME"])["ACME"])


def test_sdk_follows_page_tokens(book: BarBook) -> None:
    """Pages smaller than the SDK's limit make alpaca-py follow next_page_token; the result
    is the same as one big page, with and without a user limit across symbols."""
    start = datetime(2025, 10, 2, 19, 30, tzinfo=UTC)
    with SimServer(book=book, max_page_size=7) as small:
        client = StockHistoricalDataClient(small.key, small.secret, url_override=small.base_url)
        paged = bars(client, TimeFrame.Minute, start)
        limited = bars(client, TimeFrame.Minute, start, limit=40)
    assert {k: len(v) for k, v in paged.items()} == {s: 30 for s in SYMS}
    assert all([b.timestamp for b in v] == sorted({b.timestamp for b in v})
               for v in paged.values())
    assert {k: len(v) for k, v in limited.items()} == {"ACME": 30, "BOLT": 10}
    assert [b.close for b in limited["BOLT"]] == [b.close for b in paged["BOLT"][:10]]
