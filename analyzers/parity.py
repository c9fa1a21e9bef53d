"""Parity: how far a paper run drifted from the backtest of the very bars it traded.

``compare(run_dir)`` reads a paper (or dry-run) run folder (``bars.parquet``: the warm-up
and every bar the Strategy saw; ``audit.csv``; ``orders.parquet``; ``equity.parquet``;
``config.json``), runs the backtest over exactly those bars with the run's settings and
starting value, and lines up:

* decisions: each order decision ``(decision bar, symbol, side, size)``; the same in both, or
  not; every difference with a named cause when one can be found (a late or missed bar, a
  fill the backtest did not expect, a partial fill, a restart, a setting changed); the share
  identical;
* fills: per order in both, the live fill price against the backtest's, slippage in cents
  per share and basis points (positive = worse for us), the time from the decision bar's
  close to the live fill; totals;
* P&L: both equity curves, the end difference, and how much of it slippage explains.

The result is a ``ParityReport`` (``to_json`` -> ``parity.json``); ``console_lines`` and
``html_section`` render it. The backtest uses the same calendar gate as paper trading (no new
entry on the session's last bar), so a clean rehearsal is 100% identical.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd

from analyzers.audit import AUDIT_COLUMNS, Audit
from analyzers.recorder import RunRecorder
from analyzers.runfolder import load_run
from brokers.backtest import make_backtest_broker
from feeds.btfeed import make_feed
from feeds.store import BarArrays
from ratchet.common.config import Settings, public_settings, settings_from_saved
from ratchet.common.errors import DataError
from ratchet.common.nytime import NY
from strategies.ratchet import RatchetStrategy
from strategies.rules import atr_wilder
from strategies.signals import make_signal

ORDER_ACTIONS = ("buy", "sell")
PARITY_FILE = "parity.json"


# ------------------------------------------------------------------------------ the report


@dataclass
class Decision:
    """One order decision: the decision bar (start, UTC ISO), symbol, side, size, why."""

    time: str
    symbol: str
    side: str
    qty: float
    reason: str
    cid: str = ""


@dataclass
class Difference:
    """A decision made on one side only, or with another size."""

    time: str
    symbol: str
    live: Decision | None
    backtest: Decision | None
    cause: str
    detail: str


@dataclass
class FillRow:
    """One order filled in both: live vs backtest price and the slippage."""

    client_order_id: str
    symbol: str
    side: str
    qty: float
    live_price: float
    backtest_price: float
    slippage_cents: float      # per share; positive = worse for us
    slippage_bps: float
    slippage_dollars: float
    decision_to_fill_s: float | None  # decision bar close -> first live fill (broker time)
    partial: bool


@dataclass
class ParityReport:
    """Everything ``cli.py parity`` reports (``parity.json``)."""

    run: str
    mode: str
    symbols: list[str]
    interval: str
    start: str | None
    end: str | None
    bars: int
    live_decisions: int
    backtest_decisions: int
    identical: int
    pct_identical: float
    differences: list[Difference]
    causes: dict[str, int]
    first_difference: Difference | None
    fills: list[FillRow]
    unmatched_fills: list[dict[str, Any]]
    totals: dict[str, Any]
    pnl: dict[str, Any]
    settings_changed: dict[str, list[Any]] = field(default_factory=dict)
    equity: dict[str, list[Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return _clean(asdict(self))

    def passes(self, tolerance_pct: float) -> bool:
        """Do the decisions differ by at most ``tolerance_pct`` percent?"""
        return 100.0 - self.pct_identical <= tolerance_pct + 1e-9


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.floating):
        return _clean(float(x))
    if isinstance(x, np.integer):
        return int(x)
    return x


# ------------------------------------------------------------------------------ the backtest


def _settings(config: dict[str, Any]) -> Settings:
    raw = dict(config.get("settings") or {})
    raw["symbols"] = tuple(raw.get("symbols") or config.get("symbols") or ())
    return settings_from_saved(raw)


def run_settings(run_dir: str | Path) -> Settings:
    """The settings a run folder was made with (its ``config.json``)."""
    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read ({exc}): is {run_dir} a run folder?") from None
    return _settings(config)


def _arrays(bars: pd.DataFrame, symbol: str) -> BarArrays:
    b = bars[bars["symbol"] == symbol].sort_values("timestamp")
    ts = pd.DatetimeIndex(b["timestamp"]).as_unit("ns").asi8.astype(np.int64)
    return BarArrays(symbol, ts, *(b[c].to_numpy(np.float64).copy()
                                   for c in ("open", "high", "low", "close", "volume")))


class SessionGate:
    """The calendar part of paper trading's gate: a new order only for a bar inside the
    regular session that ends before the close (NYSE calendar, early closes included)."""

    def __init__(self, first: datetime, last: datetime, bar_seconds: int) -> None:
        import exchange_calendars as xcals

        cal = xcals.get_calendar("XNYS", start=(first - timedelta(days=7)).date().isoformat(),
                                 end=(last + timedelta(days=7)).date().isoformat())
        sched = cal.schedule
        self.bounds = {d.date(): (o.to_pydatetime(), c.to_pydatetime())
                       for d, o, c in zip(sched.index, sched["open"], sched["close"],
                                          strict=True)}
        self.bar = timedelta(seconds=bar_seconds)

    def __call__(self, bar_time: datetime) -> bool:
        from zoneinfo import ZoneInfo

        day = bar_time.astimezone(ZoneInfo("America/New_York")).date()
        b = self.bounds.get(day)
        return b is not None and b[0] <= bar_time and bar_time + self.bar < b[1]


@dataclass
class BacktestOutcome:
    """What the parity backtest produced."""

    audit: pd.DataFrame
    orders: dict[str, dict[str, Any]]
    equity: pd.DataFrame


def run_backtest_on(bars: pd.DataFrame, settings: Settings, start: pd.Timestamp,
                    gate: SessionGate | None) -> BacktestOutcome:
    """The Strategy over ``bars`` (warm-up first), trading from ``start``, with ``gate``."""
    signal = make_signal(settings)
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True)
    cerebro.setbroker(make_backtest_broker(settings))
    start_ns = int(start.value)
    for sym in settings.symbols:
        arrays = _arrays(bars, sym)
        if len(arrays) == 0:
            continue
        sig = signal.compute(arrays.to_frame())["signal"].to_numpy(np.float64)
        atr = atr_wilder(arrays.high, arrays.low, arrays.close, settings.atr_period)
        first = int(np.searchsorted(arrays.ts, start_ns))
        arrays, sig, atr = arrays.slice(first, len(arrays)), sig[first:], atr[first:]
        if len(arrays) == 0:
            continue
        cerebro.adddata(make_feed(arrays, sig, atr), name=sym)
    audit = Audit()
    cerebro.addstrategy(RatchetStrategy, settings=settings, audit=audit, market_open=gate)
    cerebro.addanalyzer(RunRecorder, _name="recorder")
    strategy = cerebro.run()[0]
    recorder: RunRecorder = strategy.analyzers.recorder
    frame = pd.DataFrame(audit.rows, columns=list(AUDIT_COLUMNS))
    orders = {rec["client_order_id"]: rec for rec in recorder.orders.values()}
    return BacktestOutcome(frame, orders, recorder.equity_frame())


# ------------------------------------------------------------------------------ comparing


def _decisions(audit: pd.DataFrame, since: pd.Timestamp | None = None) -> list[Decision]:
    if audit.empty:
        return []
    rows = audit[(audit["kind"] == "decision") & audit["action"].isin(ORDER_ACTIONS)]
    out = []
    for r in rows.itertuples():
        when = pd.Timestamp(r.time)
        when = when.tz_localize(UTC) if when.tzinfo is None else when.tz_convert(UTC)
        if since is not None and when < since:
            continue
        cid = "" if pd.isna(r.client_order_id) else str(r.client_order_id)
        out.append(Decision(when.isoformat(), str(r.symbol), str(r.action),
                            round(float(r.qty), 6), str(r.reason), cid))
    return out


def _fills_of(raw: Any) -> list[tuple[pd.Timestamp, float, float]]:
    if isinstance(raw, str):
        raw = json.loads(raw or "[]")
    return [(pd.Timestamp(t).tz_convert(UTC) if pd.Timestamp(t).tzinfo else
             pd.Timestamp(t).tz_localize(UTC), float(q), float(p)) for t, q, p in (raw or [])]


@dataclass
class _Context:
    live_audit: pd.DataFrame
    live_orders: dict[str, dict[str, Any]]
    bt_orders: dict[str, dict[str, Any]]
    bars: pd.DataFrame
    bar_seconds: int
    restart_symbols: set[str]
    restored: bool
    settings_changed: dict[str, list[Any]]
    times: set[pd.Timestamp] = field(default_factory=set)
    sym_times: dict[str, set[pd.Timestamp]] = field(default_factory=dict)
    stale: set[pd.Timestamp] = field(default_factory=set)

    def __post_init__(self) -> None:
        live = self.bars[~self.bars["warmup"]]
        self.times = set(pd.DatetimeIndex(live["timestamp"]))
        for sym, part in live.groupby("symbol"):
            self.sym_times[str(sym)] = set(pd.DatetimeIndex(part["timestamp"]))
        a = self.live_audit
        self.stale = set(a.loc[(a["kind"] == "gate") & (a["reason"] == "stale_bar"), "_t"])


def _cause(d_time: pd.Timestamp, symbol: str, ctx: _Context, earlier: set[str]
           ) -> tuple[str, str]:
    """(cause, detail) of a difference at ``d_time`` in ``symbol``."""
    if ctx.settings_changed:
        names = ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in ctx.settings_changed.items())
        return "setting changed", f"the compared settings differ from the run's: {names}"
    if symbol in ctx.restart_symbols:
        return "restart", (f"{symbol} was held when the run started (adopted from an earlier "
                           "run); the backtest starts flat")
    # a missed bar: the symbol has no bar at (or just before) the decision while others do
    sym_times = ctx.sym_times.get(symbol, set())
    step = pd.Timedelta(seconds=ctx.bar_seconds)
    for t in (d_time, d_time - step):
        if t in ctx.times and t not in sym_times:
            return "missed bar", (f"no {symbol} bar at {_hm(t)} New York time reached the Strategy "
                                  "(other symbols had one)")
    audit = ctx.live_audit
    at = audit[audit["_t"] == d_time]
    gate = at[(at["kind"] == "gate")]
    skip = at[(at["kind"] == "decision") & (at["symbol"] == symbol)
              & (at["action"] == "skip_buy") & (at["reason"] == "market_closed")]
    if not gate.empty and (gate["reason"] == "stale_bar").any():
        # stale bars before any fresh one were replayed at a restart; later ones backfilled
        fresh_before = any(t < d_time and t not in ctx.stale for t in ctx.times)
        why = "replayed after a restart" if ctx.restored and not fresh_before else \
            "backfilled after a stream outage"
        return "late bar", (f"the {_hm(d_time)} bar (New York time) reached the Strategy late "
                            f"({why}): "
                            "no new order goes out on a stale bar")
    if not skip.empty:
        return "late bar", (f"the {_hm(d_time)} bar (New York time) came when the market "
                            "was closed by Alpaca's clock")
    # fills before the difference that were not the backtest's
    prior = [o for o in ctx.live_orders.values() if o["symbol"] == symbol
             and pd.Timestamp(o["created_time"]) <= d_time + step]
    for o in sorted(prior, key=lambda o: pd.Timestamp(o["created_time"])):
        cid = o["client_order_id"]
        live_f = _fills_of(o.get("fills"))
        b = ctx.bt_orders.get(cid)
        bt_f = [] if b is None else _fills_of(b.get("fills"))
        live_q = sum(q for _, q, _ in live_f)
        bt_q = sum(q for _, q, _ in bt_f)
        refused = ("rejected", "margin")
        if str(o.get("status")) in refused and (b is None or str(b.get("status")) not in
                                                 refused):
            there = "never made" if b is None else f"{b.get('status')} ({bt_q:g} filled)"
            a = ctx.live_audit
            why = a.loc[(a["client_order_id"] == cid) & (a["kind"] == "broker")
                        & (a["action"] == "rejected"), "reason"]
            return "order rejected", (f"{cid} was rejected live"
                                      + (f" ({why.iloc[0]})" if len(why) else "")
                                      + f"; in the backtest it was {there}")
        partial = len(live_f) > 1 or (live_f and live_q + 1e-9 < float(o.get("qty") or 0))
        if partial and (abs(live_q - bt_q) > 1e-9 or len(live_f) != len(bt_f)):
            return "partial fill", (f"{cid} filled in {len(live_f)} part(s), {live_q:g} of "
                                    f"{float(o.get('qty') or 0):g} live; the backtest "
                                    f"filled {bt_q:g}")
        if abs(live_q - bt_q) > 1e-9:
            return "unexpected fill", (f"{cid} filled {live_q:g} live, {bt_q:g} in the "
                                       "backtest")
        if live_f and bt_f and live_f[0][0] != bt_f[0][0] and cid not in earlier:
            return "unexpected fill", (f"{cid} filled at {live_f[0][0]:%H:%M} live, at "
                                       f"{bt_f[0][0]:%H:%M} in the backtest")
    if symbol in earlier:
        return "follows an earlier difference", (f"{symbol}'s position already differed "
                                                 "from the backtest's")
    return "unknown", "no recorded event explains it"


def _fill_rows(live_orders: dict[str, dict[str, Any]], bt_orders: dict[str, dict[str, Any]],
               decision_times: dict[str, pd.Timestamp], bar_seconds: int
               ) -> tuple[list[FillRow], list[dict[str, Any]]]:
    rows: list[FillRow] = []
    unmatched: list[dict[str, Any]] = []
    for cid, o in live_orders.items():
        live_f = _fills_of(o.get("fills"))
        if not live_f:
            continue
        live_q = sum(q for _, q, _ in live_f)
        live_px = sum(q * p for _, q, p in live_f) / live_q
        b = bt_orders.get(cid)
        bt_f = [] if b is None else _fills_of(b.get("fills"))
        if not bt_f:
            unmatched.append({"client_order_id": cid, "symbol": o["symbol"], "side": o["side"],
                              "qty": live_q, "price": live_px, "where": "live only"})
            continue
        bt_q = sum(q for _, q, _ in bt_f)
        bt_px = sum(q * p for _, q, p in bt_f) / bt_q
        sign = 1.0 if o["side"] == "buy" else -1.0
        cents = (live_px - bt_px) * sign * 100.0
        qty = min(live_q, bt_q)
        decided = decision_times.get(cid)
        to_fill = None if decided is None else \
            (live_f[0][0] - (decided + pd.Timedelta(seconds=bar_seconds))).total_seconds()
        rows.append(FillRow(cid, str(o["symbol"]), str(o["side"]), qty, live_px, bt_px,
                            cents, cents / 100.0 / bt_px * 1e4 if bt_px else math.nan,
                            cents / 100.0 * qty, to_fill,
                            len(live_f) > 1 or live_q + 1e-9 < float(o.get("qty") or 0)))
    for cid, b in bt_orders.items():
        bt_f = _fills_of(b.get("fills"))
        if bt_f and not _fills_of((live_orders.get(cid) or {}).get("fills")):
            q = sum(x for _, x, _ in bt_f)
            unmatched.append({"client_order_id": cid, "symbol": b["symbol"], "side": b["side"],
                              "qty": q, "price": sum(x * p for _, x, p in bt_f) / q,
                              "where": "backtest only"})
    rows.sort(key=lambda r: r.client_order_id)
    return rows, unmatched


def compare(run_dir: str | Path, settings: Settings | None = None) -> ParityReport:
    """Compare the paper run in ``run_dir`` with the backtest of its bars.

    ``settings``: compare against these instead of the run's own (a changed setting is then
    named as the cause of the differences it makes).
    """
    run = load_run(run_dir)
    mode = str(run.config.get("mode", ""))
    if mode not in ("paper", "dry_run"):
        # a backtest, or a sweep's stitched walk-forward-oos folder: nothing live to compare
        what = "a backtest" if mode == "backtest" else f"a {mode or 'non-paper'} run"
        raise DataError(f"{run.path} is {what}: parity compares a paper or dry-run "
                        "folder with the backtest of its bars")
    bars_path = run.path / "bars.parquet"
    if not bars_path.is_file():
        raise DataError(f"{bars_path} is missing: this run folder was written before parity "
                        "existed (or is not a paper run); run `cli.py paper` again")
    bars = pd.read_parquet(bars_path)
    run_settings = _settings(run.config)
    start_value = float(run.config.get("start_value") or run_settings.cash)
    used = (settings or run_settings).replace(cash=start_value)
    changed = {}  # by public name and unit, as config.json and show-config say them
    mine, theirs = public_settings(run_settings), public_settings(used)
    for k, v in mine.items():
        if k != "cash" and theirs[k] != v:
            changed[k] = [v, theirs[k]]
    live_bars = bars[~bars["warmup"]]
    if live_bars.empty:
        raise DataError(f"{run.path}: no bar reached the Strategy in this run: nothing to "
                        "compare")
    start = pd.Timestamp(live_bars["timestamp"].min())
    end = pd.Timestamp(live_bars["timestamp"].max())
    gate = SessionGate(start.to_pydatetime(), end.to_pydatetime(), used.bar_seconds) \
        if used.bar_seconds < 86_400 else None
    outcome = run_backtest_on(bars, used, start, gate)

    live = _decisions(run.audit, start)
    back = _decisions(outcome.audit, start)
    key = lambda d: (d.time, d.symbol, d.side)  # noqa: E731 - a local sort key
    live_by: dict[tuple[str, str, str], list[Decision]] = {}
    for d in live:
        live_by.setdefault(key(d), []).append(d)
    back_by: dict[tuple[str, str, str], list[Decision]] = {}
    for d in back:
        back_by.setdefault(key(d), []).append(d)
    start_pos = run.config.get("start_positions") or {}
    audit = run.audit.copy()
    audit["_t"] = pd.to_datetime(audit["time"], utc=True, format="ISO8601")
    ctx = _Context(
        live_audit=audit, bt_orders=outcome.orders, bars=bars,
        live_orders={str(r["client_order_id"]): dict(r) for r in
                     run.orders.to_dict("records")},
        bar_seconds=used.bar_seconds, restart_symbols={s for s, q in start_pos.items() if q},
        restored=bool(run.config.get("restored")), settings_changed=changed)
    identical = 0
    diffs: list[Difference] = []
    diverged: set[str] = set()
    for dkey in sorted(set(live_by) | set(back_by)):
        ls, bs = live_by.get(dkey, []), back_by.get(dkey, [])
        for i in range(max(len(ls), len(bs))):
            a = ls[i] if i < len(ls) else None
            b = bs[i] if i < len(bs) else None
            if a is not None and b is not None and abs(a.qty - b.qty) < 1e-9:
                identical += 1
                continue
            when = pd.Timestamp(dkey[0])
            cause, detail = _cause(when, dkey[1], ctx, diverged)
            if a is not None and b is not None:
                detail = f"size {a.qty:g} live vs {b.qty:g} in the backtest; {detail}"
            diffs.append(Difference(dkey[0], dkey[1], a, b, cause, detail))
            diverged.add(dkey[1])
    total = identical + len(diffs)
    pct = 100.0 if total == 0 else 100.0 * identical / total
    decision_times = {d.cid: pd.Timestamp(d.time) for d in live if d.cid}
    fills, unmatched = _fill_rows(ctx.live_orders, outcome.orders, decision_times,
                                  used.bar_seconds)
    slip_dollars = float(sum(f.slippage_dollars for f in fills))
    notional = float(sum(f.backtest_price * f.qty for f in fills))
    waits = [f.decision_to_fill_s for f in fills if f.decision_to_fill_s is not None]
    totals = {"fills_compared": len(fills), "slippage_dollars": slip_dollars,
              "slippage_bps": slip_dollars / notional * 1e4 if notional else 0.0,
              "slippage_cents_mean": float(np.mean([f.slippage_cents for f in fills]))
              if fills else 0.0,
              "decision_to_fill_s_median": float(np.median(waits)) if waits else None,
              "decision_to_fill_s_max": float(max(waits)) if waits else None,
              "unmatched_fills": len(unmatched)}
    live_eq, bt_eq = run.equity, outcome.equity
    live_end = float(live_eq["value"].iloc[-1]) if not live_eq.empty else start_value
    bt_end = float(bt_eq["value"].iloc[-1]) if not bt_eq.empty else start_value
    diff = live_end - bt_end
    explained = None if abs(diff) < 0.005 else max(-1.0, min(1.0, -slip_dollars / diff))
    pnl = {"start_value": start_value, "live_end": live_end, "backtest_end": bt_end,
           "live_pnl": live_end - start_value, "backtest_pnl": bt_end - start_value,
           "difference": diff, "slippage_dollars": -slip_dollars,
           "explained_by_slippage": explained}
    equity = {
        "timestamp": [t.isoformat() for t in pd.DatetimeIndex(bt_eq["timestamp"])],
        "backtest": [float(v) for v in bt_eq["value"]],
        "live": [float(v) for v in pd.Series(
            live_eq["value"].to_numpy(), index=pd.DatetimeIndex(live_eq["timestamp"])
        ).reindex(pd.DatetimeIndex(bt_eq["timestamp"]), method="ffill")]
        if not live_eq.empty and not bt_eq.empty else [],
    }
    diffs.sort(key=lambda d: (d.time, d.symbol))
    return ParityReport(
        run=run.name, mode=mode, symbols=list(used.symbols), interval=used.bar_interval,
        start=start.isoformat(), end=end.isoformat(), bars=int(len(live_bars)),
        live_decisions=len(live), backtest_decisions=len(back), identical=identical,
        pct_identical=pct, differences=diffs,
        causes=dict(Counter(d.cause for d in diffs)), first_difference=diffs[0] if diffs
        else None, fills=fills, unmatched_fills=unmatched, totals=totals, pnl=pnl,
        settings_changed=changed, equity=equity)


def write_parity(report: ParityReport, run_dir: str | Path) -> Path:
    """Write ``parity.json`` into the run folder (atomically)."""
    from ratchet.common.atomic import write_json_atomic

    path = Path(run_dir) / PARITY_FILE
    write_json_atomic(path, report.to_json())
    return path


# ------------------------------------------------------------------------------ rendering


def _dec_text(d: dict[str, Any] | Decision | None) -> str:
    if d is None:
        return "-"
    if isinstance(d, Decision):
        d = asdict(d)
    return f"{d['side'].upper()} {d['qty']:g} ({d['reason']})"


def ny_text(when: Any) -> str:
    """A UTC time (ISO text or Timestamp) as ``YYYY-MM-DD HH:MM`` New York time, as every
    other time the CLI and the report show."""
    t = pd.Timestamp(when)
    t = t.tz_localize(UTC) if t.tzinfo is None else t
    return f"{t.tz_convert(NY):%Y-%m-%d %H:%M}"


def _hm(when: Any) -> str:
    return ny_text(when)[11:]


def _z2(x: float | None) -> float:
    """``x`` rounded to cents, without a negative zero."""
    return round(float(x or 0.0), 2) + 0.0


def _z(x: float | None) -> float:
    """``x`` rounded, without a negative zero (``-0.00`` reads as a loss)."""
    return round(float(x or 0.0), 4) + 0.0


def console_lines(report: ParityReport | dict[str, Any], tolerance_pct: float = 0.0
                  ) -> list[str]:
    """A plain-text summary for the terminal."""
    r = report.to_json() if isinstance(report, ParityReport) else report
    t, p = r["totals"], r["pnl"]
    out = [f"Parity of {r['run']} ({r['mode']}): {len(r['symbols'])} symbols, {r['bars']:,} "
           f"bars, {ny_text(r['start'])} -> {ny_text(r['end'])} New York time",
           f"Decisions: {r['identical']} identical of "
           f"{r['identical'] + len(r['differences'])} "
           f"(live {r['live_decisions']}, backtest {r['backtest_decisions']}): "
           f"{r['pct_identical']:.1f}% identical (tolerance {tolerance_pct:g}%)"]
    if r["settings_changed"]:
        out.append("Settings compared differ from the run's: " + ", ".join(
            f"{k} {a} -> {b}" for k, (a, b) in r["settings_changed"].items()))
    first = r["first_difference"]
    if first is not None:
        out.append(f"First difference: {ny_text(first['time'])} {first['symbol']}: live "
                   f"{_dec_text(first['live'])}, backtest {_dec_text(first['backtest'])}; "
                   f"cause: {first['cause']} ({first['detail']})")
        out.append("Causes: " + ", ".join(f"{k} x{v}" for k, v in r["causes"].items()))
    med = t["decision_to_fill_s_median"]
    out.append(f"Fills compared: {t['fills_compared']}; slippage "
               f"{_z(t['slippage_dollars']):+,.2f} $ ({_z(t['slippage_bps']):+.1f} bps, mean "
               f"{_z(t['slippage_cents_mean']):+.2f} c/share,"
               " + = worse live); decision to fill median "
               + ("-" if med is None else f"{med:.1f} s") + f"; unmatched {t['unmatched_fills']}")
    ex = p["explained_by_slippage"]
    out.append(f"P&L: live {_z2(p['live_pnl']):+,.2f}, backtest {_z2(p['backtest_pnl']):+,.2f}"
               f", difference {_z2(p['difference']):+,.2f}"
               + ("" if ex is None else f"; slippage explains {ex * 100:.0f}%"))
    return out


def parity_chart(report: dict[str, Any]) -> str | None:
    """Live and backtest equity on one chart (a data: URI), or None."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    from analyzers.report_assets import charts, theme

    eq = report.get("equity") or {}
    if not eq.get("timestamp") or not eq.get("live"):
        return None

    @charts.styled
    def draw() -> str:
        ts = pd.DatetimeIndex(pd.to_datetime(eq["timestamp"], utc=True))
        axis = charts.TimeAxis(pd.Series(ts))
        x = axis.positions(pd.Series(ts))
        fig = Figure(figsize=(11, 3.5), layout="constrained")
        ax = fig.add_subplot()
        ax.plot(x, eq["backtest"], color=theme.BENCHMARK, lw=1.4, label="Backtest, same bars")
        ax.plot(x, eq["live"], color=theme.STRATEGY, lw=1.7, label="Paper (live)")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"${v:,.0f}"))
        fig.legend(loc="outside upper right", ncols=2)
        axis.apply(ax)
        return charts.figure_uri(fig)

    return draw()


def html_section(run_dir: str | Path) -> str:
    """The report's "Parity with the backtest" card, if the run folder has ``parity.json``."""
    from html import escape

    path = Path(run_dir) / PARITY_FILE
    if not path.is_file():
        return ""
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    lines = "".join(f"<li>{escape(line)}</li>" for line in console_lines(r)[1:])
    chart = parity_chart(r)
    img = f'<img src="{chart}" alt="live vs backtest equity">' if chart else ""
    rows = []
    for d in r["differences"][:50]:
        rows.append(f"<tr><td>{escape(ny_text(d['time']))}</td><td>{escape(d['symbol'])}</td>"
                    f"<td>{escape(_dec_text(d['live']))}</td>"
                    f"<td>{escape(_dec_text(d['backtest']))}</td>"
                    f"<td>{escape(d['cause'])}</td><td>{escape(d['detail'])}</td></tr>")
    diffs = ("<table><thead><tr><th>bar (New York)</th><th>symbol</th><th>live</th>"
             "<th>backtest</th><th>cause</th><th>detail</th></tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>") if rows else \
        "<p>Every order decision matched the backtest.</p>"
    frows = []
    for f in r["fills"][:100]:
        wait = "-" if f["decision_to_fill_s"] is None else f"{f['decision_to_fill_s']:.1f}"
        frows.append(f"<tr><td>{escape(f['client_order_id'])}</td><td>{escape(f['side'])}</td>"
                     f"<td>{f['qty']:g}</td><td>{f['live_price']:.4f}</td>"
                     f"<td>{f['backtest_price']:.4f}</td><td>{f['slippage_cents']:+.2f}</td>"
                     f"<td>{(f['slippage_bps'] or 0):+.1f}</td><td>{wait}</td></tr>")
    fills = ("<table><thead><tr><th>order</th><th>side</th><th>qty</th><th>live</th>"
             "<th>backtest</th><th>slip c/sh</th><th>bps</th><th>decision to fill s</th>"
             "</tr></thead><tbody>" + "".join(frows) + "</tbody></table>") if frows else ""
    return ('<div class="card"><h3>Parity with the backtest</h3><div class="hint">'
            "The backtest of the very bars this run traded, with its settings "
            f"(<code>cli.py parity</code>, {escape(PARITY_FILE)}).</div><ul>{lines}</ul>{img}"
            f"{diffs}{fills}</div>")
