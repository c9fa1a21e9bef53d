"""Pure parts of the Alpaca adapter: credentials, throttle, journal, reconciliation, errors."""

from __future__ import annotations

import json
import logging
from collections import deque
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.enums import OrderSide, OrderType, TimeInForce

from brokers.alpaca import reconcile as rc
from brokers.alpaca.bars import LiveIndicators, StepAssembler
from brokers.alpaca.client import OrderSpec, SubmitOutcome, classify_submit_error
from brokers.alpaca.credentials import Credentials, from_env, from_file
from brokers.alpaca.journal import DuplicateIntentError, Journal, JournalState
from brokers.alpaca.parsing import BarRecord, OrderSnapshot, PositionRecord
from brokers.alpaca.throttle import Backoff, TokenBucket
from ratchet.common.errors import ConfigError
from ratchet.common.logs import RedactSecrets
from strategies.rules import atr_wilder
from strategies.signals import MASignal

T0 = datetime(2025, 10, 3, 13, 30, tzinfo=UTC)


# ------------------------------------------------------------------ credentials


def test_credentials_repr_masks_both_values() -> None:
    creds = Credentials("AKSENTINELKEY12345", "SENTINELSECRET-abcdef", "test")
    text = repr(creds) + str(creds)
    assert "AKSENTINELKEY12345" not in text and "SENTINELSECRET" not in text
    assert "AK…45" in text


def test_credentials_from_env_names_the_missing_variable_not_a_value() -> None:
    with pytest.raises(ConfigError, match="APCA_API_SECRET_KEY") as err:
        from_env({"APCA_API_KEY_ID": "AKSENTINEL9999"}, RedactSecrets())
    assert "AKSENTINEL9999" not in str(err.value)


def test_credentials_are_registered_with_the_redactor(caplog: pytest.LogCaptureFixture) -> None:
    red = RedactSecrets()
    creds = from_env({"APCA_API_KEY_ID": "AKSENTINEL777", "APCA_API_SECRET_KEY": "SK-SENT-888"},
                     red)
    assert red.redact(f"key={creds.key_id} secret={creds.secret_key}") == "key=*** secret=***"


@pytest.mark.parametrize("fmt", ["json", "toml", "env"])
def test_credentials_from_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"keys.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps({"key_id": "AKFILE1234", "secret_key": "SKFILE5678"}))
    elif fmt == "toml":
        path.write_text('key_id = "AKFILE1234"\nsecret_key = "SKFILE5678"\n')
    else:
        path.write_text("export APCA_API_KEY_ID=AKFILE1234\nAPCA_API_SECRET_KEY='SKFILE5678'\n")
    creds = from_file(path, RedactSecrets())
    assert (creds.key_id, creds.secret_key) == ("AKFILE1234", "SKFILE5678")


def test_bad_keys_file_does_not_echo_its_content(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"key_id": "AKLEAK123", "secret_key": SKLEAK456}')
    with pytest.raises(ConfigError) as err:
        from_file(path, RedactSecrets())
    assert "SKLEAK456" not in str(err.value)


# ------------------------------------------------------------------ throttle


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(base=0.5, cap=60.0)
    delays = [b.next_delay() for _ in range(12)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(d <= 60.0 for d in delays)
    assert delays[8] >= 30.0  # capped region: between cap/2 and cap
    b.reset()
    assert b.next_delay() <= 0.5


def test_token_bucket_waits_when_empty() -> None:
    ft = FakeTime()
    bucket = TokenBucket(per_minute=60, burst=2, clock=ft.clock, wall=ft.clock, sleep=ft.sleep)
    bucket.acquire()
    bucket.acquire()
    assert ft.slept == []
    bucket.acquire()
    assert ft.slept and sum(ft.slept) == pytest.approx(1.0, rel=0.01)


def test_token_bucket_honours_rate_limit_reset_header() -> None:
    """A 429 with X-RateLimit-Reset: wait until the reset, not a fixed 3 s (alpaca-py)."""
    ft = FakeTime()
    bucket = TokenBucket(per_minute=200, clock=ft.clock, wall=ft.clock, sleep=ft.sleep)
    bucket.update({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(ft.t + 7)}, 429)
    bucket.acquire()
    assert sum(ft.slept) == pytest.approx(7.0, abs=0.01)


# ------------------------------------------------------------------ submit classification


def _api_error(status: int, body: dict[str, object]) -> APIError:
    resp = requests.Response()
    resp.status_code = status
    resp._content = json.dumps(body).encode()
    return APIError(json.dumps(body), requests.HTTPError(response=resp))


@pytest.mark.parametrize(("exc", "outcome"), [
    (requests.ReadTimeout("read timed out"), SubmitOutcome.AMBIGUOUS),
    (requests.ConnectionError("connection reset by peer"), SubmitOutcome.AMBIGUOUS),
    (_api_error(500, {"code": 50010000, "message": "internal"}), SubmitOutcome.AMBIGUOUS),
    (_api_error(502, {"message": "bad gateway"}), SubmitOutcome.AMBIGUOUS),
    (_api_error(504, {"message": "gateway timeout"}), SubmitOutcome.AMBIGUOUS),
    (_api_error(429, {"code": 42910000, "message": "rate limit exceeded"}),
     SubmitOutcome.RATE_LIMITED),
    (_api_error(422, {"code": 40010001, "message": "client_order_id must be unique"}),
     SubmitOutcome.EXISTS),
    (_api_error(403, {"code": 40310000, "message": "insufficient buying power"}),
     SubmitOutcome.REJECTED),
    (_api_error(422, {"code": 42210000, "message": "stop price must be less than"}),
     SubmitOutcome.REJECTED),
    (_api_error(401, {"code": 40110000, "message": "request is not authorized"}),
     SubmitOutcome.REJECTED),
    (ValueError("garbled response"), SubmitOutcome.AMBIGUOUS),
], ids=["timeout", "reset", "500", "502", "504", "429", "dup-cid", "403", "422", "401", "bad"])
def test_classify_submit_error(exc: BaseException, outcome: SubmitOutcome) -> None:
    """Anything not provably refused is ambiguous: looked up, never resent."""
    assert classify_submit_error(exc) is outcome


# ------------------------------------------------------------------ journal


def _spec(cid: str = "ratchet-ACME-20251003T133000-entry", qty: str = "10") -> OrderSpec:
    return OrderSpec(cid, "ACME", OrderSide.BUY, OrderType.LIMIT, Decimal(qty), TimeInForce.DAY,
                     limit_price=Decimal("100.5"))


def test_journal_intent_is_durable_and_unique(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    j.record_intent(_spec().to_json(), "entry", T0)
    j.close()
    j2 = Journal(tmp_path / "j.sqlite")  # a new process after SIGKILL sees the intent
    row = j2.get(_spec().client_order_id)
    assert row is not None and row.state is JournalState.INTENT and row.unresolved
    with pytest.raises(DuplicateIntentError):
        j2.record_intent(_spec().to_json(), "entry", T0)


def test_fill_replay_is_a_no_op(tmp_path: Path) -> None:
    """Regression (hummingbot #2945/#4991): a replayed fill doubled the position."""
    j = Journal(tmp_path / "j.sqlite")
    cid = _spec().client_order_id
    j.record_intent(_spec().to_json(), "entry", T0)
    j.mark_accepted(cid, "id-1", "new")
    f1 = j.apply_fill(cid, Decimal(3), Decimal("100"), T0, "e1", Decimal(3), Decimal("100"))
    assert f1 is not None and f1.qty == 3 and f1.price == 100
    assert j.apply_fill(cid, Decimal(3), Decimal("100"), T0, "e1", Decimal(3),
                        Decimal("100")) is None
    f2 = j.apply_fill(cid, Decimal(10), Decimal("101.4"), T0, "e2", Decimal(7),
                      Decimal("102"))
    assert f2 is not None and f2.qty == 7 and f2.price == Decimal("102")
    assert j.get(cid).filled_qty == 10  # type: ignore[union-attr]


def test_cumulative_delta_when_events_were_missed_or_reordered(tmp_path: Path) -> None:
    """Regression (Lean #4014): the cumulative filled_qty was used as the fill size."""
    j = Journal(tmp_path / "j.sqlite")
    cid = _spec().client_order_id
    j.record_intent(_spec().to_json(), "entry", T0)
    j.mark_accepted(cid, "id-1", "partially_filled")
    # the 30-share event was lost; the 70 cumulative arrives first (avg 101 over 70)
    f = j.apply_fill(cid, Decimal(70), Decimal("101"), T0, "e2", Decimal(40), Decimal("102"))
    assert f is not None and f.qty == 70 and f.price == Decimal("101")
    assert j.apply_fill(cid, Decimal(30), Decimal("100"), T0, "e1", Decimal(30),
                        Decimal("100")) is None  # the late, older event changes nothing
    f3 = j.apply_fill(cid, Decimal(100), Decimal("101.3"), T0, None, None, None)
    assert f3 is not None and f3.qty == 30
    assert f3.price == Decimal("102.000000")  # (100*101.3 - 70*101) / 30
    assert sum(Decimal(x["qty"]) for x in j.fills(cid)) == 100


def test_journal_states(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    for i, mark in enumerate(("accepted", "rejected", "lost", "ambiguous")):
        cid = f"ratchet-ACME-20251003T13300{i}-entry"
        j.record_intent(_spec(cid).to_json(), "entry", T0)
        if mark == "accepted":
            j.mark_accepted(cid, f"id-{i}", "filled")
        elif mark == "rejected":
            j.mark_rejected(cid, "insufficient buying power")
        elif mark == "lost":
            j.mark_lost(cid, "not found")
        else:
            j.mark_ambiguous(cid, "timeout")
    assert [o.cid[-7:] for o in j.open_orders()] == ["3-entry"]
    assert [o.state for o in j.unresolved()] == [JournalState.AMBIGUOUS]


# ------------------------------------------------------------------ reconciliation


def _snap(cid: str, symbol: str = "ACME", side: str = "sell", otype: str = "stop",
          qty: str = "10", filled: str = "0", status: str = "new",
          stop: str | None = "95") -> OrderSnapshot:
    return OrderSnapshot(f"id-{cid}", cid, symbol, side, otype, Decimal(qty), Decimal(filled),
                         None, None, Decimal(stop) if stop else None, status, "gtc", False)


def test_position_without_stop_gets_one() -> None:
    r = rc.reconcile(["ACME"], "ratchet", [PositionRecord("ACME", Decimal(10), Decimal(100))],
                     [], [], {"ACME": Decimal(10)})
    assert r.of(rc.MissingStop) == [rc.MissingStop("ACME", Decimal(10))]


def test_saved_position_unknown_to_broker_is_closed_and_new_one_is_found() -> None:
    r = rc.reconcile(["ACME", "BOLT"], "ratchet",
                     [PositionRecord("BOLT", Decimal(5), Decimal(40))],
                     [_snap("ratchet-BOLT-20251003T133000-stop1", "BOLT", qty="5")], [],
                     {"ACME": Decimal(10)})
    assert r.of(rc.PositionClosed) == [rc.PositionClosed("ACME", Decimal(10))]
    assert r.of(rc.PositionFound) == [rc.PositionFound("BOLT", Decimal(5), Decimal(40))]
    assert not r.of(rc.MissingStop)
    assert r.positions == {"BOLT": Decimal(5)}


def test_extra_stops_keep_the_highest_and_stop_qty_is_checked() -> None:
    stops = [_snap("ratchet-ACME-20251003T133000-stop1", stop="95", qty="10"),
             _snap("ratchet-ACME-20251003T133100-stop2", stop="97", qty="8")]
    r = rc.reconcile(["ACME"], "ratchet", [PositionRecord("ACME", Decimal(10), Decimal(100))],
                     stops, [], {"ACME": Decimal(10)})
    extra = r.of(rc.ExtraStops)[0]
    assert extra.keep.endswith("stop2") and extra.cancel == ("ratchet-ACME-20251003T133000-stop1",)
    assert r.of(rc.StopQtyMismatch)[0].stop_qty == 8


def test_stop_without_position_is_cancelled_and_foreign_orders_are_left_alone() -> None:
    r = rc.reconcile(["ACME"], "ratchet", [],
                     [_snap("ratchet-ACME-20251003T133000-stop1"),
                      _snap("manual-order-1", otype="limit", stop=None)], [], {})
    assert r.of(rc.ExtraStops) == [rc.ExtraStops("ACME", "", (
        "ratchet-ACME-20251003T133000-stop1",))]
    assert [a.snapshot.client_order_id for a in r.of(rc.ForeignOrder)] == ["manual-order-1"]
    assert [a.snapshot.client_order_id for a in r.of(rc.AdoptOrder)] == [
        "ratchet-ACME-20251003T133000-stop1"]


def test_journal_orders_are_updated_or_missing(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    for cid in ("ratchet-ACME-20251003T133000-entry", "ratchet-ACME-20251003T133100-exit"):
        j.record_intent(_spec(cid).to_json(), "entry", T0)
    lookups = {"ratchet-ACME-20251003T133000-entry":
               _snap("ratchet-ACME-20251003T133000-entry", side="buy", otype="limit",
                     status="filled", filled="10", stop=None),
               "ratchet-ACME-20251003T133100-exit": None}
    r = rc.reconcile(["ACME"], "ratchet", [], [], j.open_orders(), {}, lookups)
    assert [a.cid for a in r.of(rc.OrderUpdate)] == ["ratchet-ACME-20251003T133000-entry"]
    assert [a.cid for a in r.of(rc.OrderMissing)] == ["ratchet-ACME-20251003T133100-exit"]


def test_untracked_and_short_positions_are_only_reported() -> None:
    r = rc.reconcile(["ACME"], "ratchet",
                     [PositionRecord("ZZZ", Decimal(1), Decimal(1)),
                      PositionRecord("ACME", Decimal(-3), Decimal(100))], [], [], {})
    assert r.of(rc.PositionUntracked) and r.of(rc.ShortPosition)
    assert not r.of(rc.MissingStop)


# ------------------------------------------------------------------ bars


def _bar(sym: str, minute: int, close: float = 100.0) -> BarRecord:
    return BarRecord(sym, T0 + timedelta(minutes=minute), close, close + 1, close - 1, close,
                     1000.0)


def test_step_assembler_releases_complete_steps_once() -> None:
    now = [0.0]
    asm = StepAssembler(["A", "B"], grace=2.0, clock=lambda: now[0])
    assert asm.add(_bar("A", 0))
    assert asm.release() == []  # B missing, no grace yet
    assert asm.add(_bar("B", 0))
    steps = asm.release()
    assert [sorted(s.bars) for s in steps] == [["A", "B"]]
    assert not asm.add(_bar("A", 0))  # already delivered: dropped
    asm.add(_bar("A", 1))
    now[0] = 5.0
    assert [list(s.bars) for s in asm.release()] == [["A"]]  # grace: B had no trades


def test_step_assembler_later_bar_releases_incomplete_step() -> None:
    asm = StepAssembler(["A", "B"], grace=60.0)
    asm.add(_bar("A", 0))
    asm.add(_bar("A", 1))
    asm.add(_bar("B", 1))
    assert [s.ts.minute for s in asm.release()] == [30, 31]


def test_live_atr_is_bit_identical_to_atr_wilder() -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    close = 100 + np.cumsum(rng.normal(0, 0.3, 400))
    high, low = close + rng.uniform(0.01, 0.5, 400), close - rng.uniform(0.01, 0.5, 400)
    bars = [BarRecord("A", T0 + timedelta(minutes=i), close[i], high[i], low[i], close[i], 1.0)
            for i in range(400)]
    expected = atr_wilder(high, low, close, 14)
    for warm in (0, 10, 15, 200):
        ind = LiveIndicators("A", MASignal(10, 30), 14)
        ind.warm(bars[:warm])
        got = [ind.update(b)[1] for b in bars[warm:]]
        assert np.array_equal(np.asarray(got), expected[warm:], equal_nan=True), warm


def test_redactor_covers_log_records(caplog: pytest.LogCaptureFixture) -> None:
    red = RedactSecrets(["SENTINEL-KEY-123"])
    logger = logging.getLogger("test.redact")
    caplog.handler.addFilter(red)
    logger.warning("sending key SENTINEL-KEY-123")
    assert "SENTINEL-KEY-123" not in caplog.text


# ------------------------------------------------------------------ intervals and sessions


def test_interval_aggregator_builds_5min_bars_from_minutes() -> None:
    from brokers.alpaca.bars import IntervalAggregator

    agg = IntervalAggregator(300)
    out = []
    for m in range(10):
        bar = BarRecord("A", T0 + timedelta(minutes=m), 100 + m, 101 + m, 99 + m, 100.5 + m,
                        10.0, 2.0, 100 + m)
        out.extend(agg.add(bar))
    assert [b.ts.minute for b in out] == [30, 35]  # each emitted on its last minute
    first = out[0]
    assert (first.open, first.high, first.low, first.close) == (100, 105, 99, 104.5)
    assert first.volume == 50 and first.trade_count == 10
    assert first.vwap == pytest.approx(102.0)


def test_interval_aggregator_bucket_without_last_minute_and_reset() -> None:
    from brokers.alpaca.bars import IntervalAggregator

    agg = IntervalAggregator(300)
    assert agg.add(_bar("A", 0)) == []
    assert agg.add(_bar("A", 2)) == []
    done = agg.add(_bar("A", 6))  # minute 34 had no trades: closed by the next bucket
    assert [b.ts.minute for b in done] == [30]
    assert agg.add(_bar("A", 4)) == []  # a late minute of an emitted bucket is ignored
    agg.reset()  # a reconnect in the middle of the 13:35 bucket
    assert agg.add(_bar("A", 8)) == [] and agg.add(_bar("A", 9)) == []  # skipped: incomplete
    assert agg.backfill_due(T0 + timedelta(minutes=9))  # ended: fetch it from REST
    assert [b.ts.minute for b in agg.add(_bar("A", 10)) + agg.add(_bar("A", 14))] == [40]


def test_market_clock_sessions() -> None:
    from datetime import date

    from brokers.alpaca.client import SessionDay
    from brokers.alpaca.clock import MarketClock

    def calendar(start: date, end: date) -> list[SessionDay]:
        d = date(2025, 10, 3)
        return [SessionDay(d, datetime(2025, 10, 3, 9, 30), datetime(2025, 10, 3, 16, 0))]

    clock = MarketClock(calendar, lambda: None, 60)  # type: ignore[arg-type,return-value]
    at = lambda h, m: datetime(2025, 10, 3, h, m, tzinfo=UTC)  # noqa: E731
    assert clock.session(at(13, 30)) == "regular"
    assert clock.session(at(12, 0)) == "extended"
    assert clock.session(datetime(2025, 10, 4, 0, 30, tzinfo=UTC)) == "closed"  # 20:30 NY
    assert clock.session(datetime(2025, 10, 4, 14, 0, tzinfo=UTC)) == "closed"  # Saturday
    assert clock.market_open(at(19, 58)) and not clock.market_open(at(19, 59))


def test_step_missing_a_symbol_is_completed_from_rest_before_release() -> None:
    """Regression (issue 11.2): a step released without a symbol's bar (its stream frame was
    lost) lost that bar for good. The store asks REST for the missing bar first, once."""
    from types import SimpleNamespace

    from brokers.alpaca.store import AlpacaStore, StoreStatus

    now = [0.0]
    asm = StepAssembler(["A", "B"], grace=2.0, clock=lambda: now[0])
    asked: list[tuple[list[str], datetime, datetime]] = []

    def get_bars(symbols: list[str], start: datetime, end: datetime,
                 interval: str) -> dict[str, list[BarRecord]]:
        asked.append((symbols, start, end))
        return {"B": [_bar("B", 0)]}

    fake = SimpleNamespace(assembler=asm, _completed_at=deque(maxlen=8),
                           settings=SimpleNamespace(bar_seconds=60, bar_interval="1Min"),
                           client=SimpleNamespace(get_bars=get_bars), _keep=lambda b: True,
                           status=StoreStatus())
    asm.add(_bar("A", 0))
    assert AlpacaStore._release(fake) == [] and asked == []  # within the grace: wait
    asm.add(_bar("A", 1))  # a later bar time arrived: step 0 would go without B
    steps = AlpacaStore._release(fake)  # type: ignore[arg-type]
    assert [sorted(s.bars) for s in steps][0] == ["A", "B"]
    assert asked == [(["B"], _bar("B", 0).ts, _bar("B", 0).ts + timedelta(seconds=59))]
    assert fake.status.backfilled == 1


def test_step_collector_collects_young_generations_each_step_and_all_every_fifth(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 latency: a full garbage collection the interpreter started inside a step (it
    walked every object of the process) held bar arrival -> order up to 140 ms at 60x. The
    session collects right after each step instead, all generations every fifth."""
    import gc

    from ratchet.engine.paper import StepCollector

    calls: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: calls.append(generation) or 0)
    collect = StepCollector()
    for _ in range(10):
        collect()
    assert calls == [1, 1, 1, 1, 2, 1, 1, 1, 1, 2]
