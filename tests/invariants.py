"""An independent checker of a backtest run folder against the SPEC (issue 10).

``check_run(run_dir, bars)`` reads a run folder (``analyzers.load_run``) and the raw bars it
ran on (``{symbol: DataFrame}`` with ``timestamp, open, high, low, close, volume``), redoes
the session filter from the NYSE calendar (``exchange_calendars`` directly), recomputes the
SMAs and Wilder's ATR with its own code, and checks:

* entries only on fresh MA cross-ups after warm-up, and every such bar decided (buy or skip);
* size and caps at decision time (risk budget, max position %, cash);
* limit price (the close rounded down to the tick) and the limit timeout (first bar past it);
* the fallback buys at most the unfilled remainder, on the bar the entry timed out;
* the stop level on every bar = max(fixed, trailing), never lower than before; every stop
  order at that level rounded down;
* exit reasons: ``stop``/``trail`` = the binding leg, ``signal`` = a cross-down bar; the
  trade's reason is the one that sold the most shares;
* max positions and one working entry per symbol;
* orders only on bars of the session, fills only in regular hours (extended-hours limits
  in the extended session when enabled); no new entry on the session's last bar;
* equity = cash + marked positions on every step, cash = start - buys + sells - commission;
* sum of trade P&L (+ open positions' P&L) = final equity - starting cash.

It imports nothing from ``strategies`` or ``feeds``: the rules are re-derived here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyzers import load_run

NY = "America/New_York"
_BAR_SECONDS = {"1Min": 60, "5Min": 300, "15Min": 900, "1Hour": 3600, "1Day": 86400}


@dataclass
class CheckReport:
    """Checks run and the violations found (each a one-line description)."""

    checks: int = 0
    violations: list[str] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def check(self, ok: bool, kind: str, msg: str) -> None:
        """Count one check; keep ``msg`` when it failed."""
        self.checks += 1
        self.by_kind[kind] += 1
        if not ok:
            self.violations.append(f"[{kind}] {msg}")

    def merge(self, other: CheckReport) -> None:
        """Add another report's figures to this one."""
        self.checks += other.checks
        self.violations += other.violations
        for k, v in other.by_kind.items():
            self.by_kind[k] += v


# ------------------------------------------------------------------------------ helpers


def _internal_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """config.json's settings under ``Settings`` attribute names and units (fractions),
    which the checks below use."""
    from ratchet.common.config import settings_from_saved

    return dataclasses.asdict(settings_from_saved(saved))


def floor_tick(price: float) -> float:
    """Alpaca's tick, rounded down: cents at or above $1, 4 decimals below."""
    if price >= 1.0:
        return math.floor(price * 100 + 1e-7) / 100
    return math.floor(price * 10_000 + 1e-7) / 10_000


def cid_time(cid: str) -> pd.Timestamp:
    """Decision bar start encoded in a client order id (``...-YYYYmmddTHHMMSS-purpose``)."""
    stamp = cid.rsplit("-", 2)[1]
    return pd.Timestamp(pd.to_datetime(stamp, format="%Y%m%dT%H%M%S"), tz="UTC")


def sma(close: np.ndarray, n: int) -> np.ndarray:
    """Simple moving average; windows within a hair of a tie are summed exactly."""
    out = np.full(len(close), np.nan)
    if len(close) < n:
        return out
    c = np.concatenate([[0.0], np.cumsum(close)])
    out[n - 1:] = (c[n:] - c[:-n]) / n
    return out


def exact_sma(close: np.ndarray, n: int, i: int) -> float:
    """SMA at ``i`` with an exactly rounded sum (near-tie cross decisions)."""
    return math.fsum(close[i - n + 1: i + 1].tolist()) / n


def wilder_atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int) -> np.ndarray:
    """Wilder's ATR: mean of the first n true ranges (from bar 1), then (prev*(n-1)+tr)/n."""
    size = len(close)
    out = [math.nan] * size
    if size <= n:
        return np.array(out)
    h, lo, c = high.tolist(), low.tolist(), close.tolist()
    tr = [math.nan] + [max(h[i], c[i - 1]) - min(lo[i], c[i - 1]) for i in range(1, size)]
    prev = math.fsum(tr[1: n + 1]) / n
    out[n] = prev
    for i in range(n + 1, size):
        prev = prev * (1.0 - 1.0 / n) + tr[i] * (1.0 / n)
        out[i] = prev
    return np.array(out)


def session_flags(ts: pd.DatetimeIndex, bar_seconds: int, extended: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(regular, extended, last) per bar from the XNYS calendar."""
    import exchange_calendars as xcals

    n = len(ts)
    if bar_seconds >= 86_400:
        return np.ones(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    local = ts.tz_convert(NY)
    days = local.tz_localize(None).normalize()
    cal = xcals.get_calendar("XNYS", start=str(min(days.min().year, 2000)) + "-01-01")
    sched = cal.schedule
    sched = sched[(sched.index >= days.min()) & (sched.index <= days.max())]
    pos = sched.index.get_indexer(days)
    has = pos >= 0
    p = np.where(has, pos, 0)
    if not len(sched):
        z = np.zeros(n, bool)
        return z, z, z

    def naive_utc(col: str) -> np.ndarray:
        return pd.DatetimeIndex(sched[col]).tz_convert("UTC").tz_localize(None) \
            .as_unit("ns").to_numpy()[p]

    opens, closes = naive_utc("open"), naive_utc("close")
    t = ts.tz_convert("UTC").tz_localize(None).as_unit("ns").to_numpy()
    day_ny = pd.DatetimeIndex(days)
    xo = (day_ny + pd.Timedelta(hours=4)).tz_localize(NY).tz_convert("UTC").tz_localize(None)
    xc = (day_ny + pd.Timedelta(hours=20)).tz_localize(NY).tz_convert("UTC").tz_localize(None)
    xo, xc = xo.as_unit("ns").to_numpy(), xc.as_unit("ns").to_numpy()
    regular = has & (t >= opens) & (t < closes)
    ext = has & ~regular & (t >= xo) & (t < xc)
    end = t + np.timedelta64(bar_seconds, "s")
    last = (regular & (end >= closes)) | (ext & (end >= xc))
    return regular, ext, last


@dataclass
class SymbolBars:
    """One symbol's bars as the Strategy saw them, with indicators and session flags.

    Times are int64 UTC nanoseconds (bar starts)."""

    ts: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    fast: np.ndarray
    slow: np.ndarray
    atr: np.ndarray
    regular: np.ndarray
    extended: np.ndarray
    last: np.ndarray
    index: dict[int, int]

    def at(self, when: int) -> int | None:
        """Row of the bar starting at ``when`` (None if there is none)."""
        return self.index.get(when)

    def cross(self, i: int, slow_n: int, fast_n: int, up: bool) -> bool | None:
        """Fresh cross at row ``i`` (None in warm-up). Near ties use exact sums."""
        if i < 1 or math.isnan(self.slow[i - 1]) or math.isnan(self.fast[i - 1]):
            return None
        vals = []
        for j in (i - 1, i):
            f, s = float(self.fast[j]), float(self.slow[j])
            if abs(f - s) <= 1e-9 * max(abs(s), 1.0):
                f = exact_sma(self.close, fast_n, j)
                s = exact_sma(self.close, slow_n, j)
            vals.append((f, s))
        (f0, s0), (f1, s1) = vals
        return (f0 <= s0 and f1 > s1) if up else (f0 >= s0 and f1 < s1)

    def crosses(self, slow_n: int, fast_n: int, up: bool) -> np.ndarray:
        """Rows with a fresh cross (vectorised; near ties settled exactly)."""
        f, s = self.fast, self.slow
        with np.errstate(invalid="ignore"):
            if up:
                hit = (f[:-1] <= s[:-1]) & (f[1:] > s[1:])
            else:
                hit = (f[:-1] >= s[:-1]) & (f[1:] < s[1:])
            near = np.abs(f - s) <= 1e-9 * np.maximum(np.abs(s), 1.0)
        cand = np.nonzero(hit | near[:-1] | near[1:])[0] + 1
        return np.array([i for i in cand if self.cross(int(i), slow_n, fast_n, up)], int)


def prepare_bars(frame: pd.DataFrame, cfg: dict[str, Any], end: int | None) -> SymbolBars:
    """Filter ``frame`` to the bars the Strategy trades and compute its indicators."""
    f = frame.sort_values("timestamp")
    ts = pd.DatetimeIndex(pd.to_datetime(f["timestamp"], utc=True)).as_unit("ns")
    if end is not None:
        keep_end = ts.asi8 <= end
        f, ts = f[keep_end], ts[keep_end]
    secs = _BAR_SECONDS[cfg["bar_interval"]]
    ext_on = bool(cfg.get("extended_hours"))
    regular, ext, last = session_flags(ts, secs, ext_on)
    keep = regular | ext if ext_on else regular
    f = f[keep]
    ts_ns = ts.asi8[keep]
    regular, ext, last = regular[keep], ext[keep], last[keep]
    h, lo, c = (f[k].to_numpy(np.float64) for k in ("high", "low", "close"))
    return SymbolBars(ts_ns, h, lo, c, sma(c, cfg["fast_period"]), sma(c, cfg["slow_period"]),
                      wilder_atr(h, lo, c, cfg["atr_period"]), regular, ext, last,
                      {int(t): i for i, t in enumerate(ts_ns.tolist())})


def _ns(value: Any) -> int:
    return int(pd.Timestamp(value).as_unit("ns").value)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


def _when(text: str | None, end: bool = False) -> int | None:
    if not text:
        return None
    ts = pd.Timestamp(text)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if end and len(text.strip()) <= 10:
        ts = ts + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
    return _ns(ts)


_NEVER = 2**62


@dataclass
class Order:
    """One row of orders.parquet, times in ns."""

    cid: str
    symbol: str
    side: str
    type: str
    purpose: str
    qty: float
    limit_price: float
    stop_price: float
    status: str
    filled_qty: float
    decided: int
    fills: list[tuple[int, float, float]]
    final: int


def _orders(frame: pd.DataFrame) -> list[Order]:
    out = []
    for r in frame.to_dict("records"):
        fills = [(_ns(t), float(q), float(p)) for t, q, p in json.loads(r["fills"] or "[]")]
        hist = json.loads(r["status_history"] or "[]")
        final = _ns(hist[-1][0]) if hist and r["status"] not in (
            "submitted", "accepted", "partially_filled", "created") else _NEVER
        out.append(Order(r["client_order_id"], r["symbol"], r["side"], r["type"], r["purpose"],
                         float(r["qty"]), float(r["limit_price"]), float(r["stop_price"]),
                         r["status"], float(r["filled_qty"]), _ns(cid_time(r["client_order_id"])),
                         fills, final))
    # stop orders of one bar are numbered (stop9, stop10): order them by that number
    out.sort(key=lambda o: (o.decided, o.cid.rstrip("0123456789"),
                            int(o.cid[len(o.cid.rstrip("0123456789")):] or 0)))
    return out


# ------------------------------------------------------------------------------ the checker


def check_run(run_dir: Path, bars: dict[str, pd.DataFrame]) -> CheckReport:
    """Check one backtest run folder against the SPEC; returns the report."""
    run = load_run(run_dir)
    cfg = _internal_settings(run.config["settings"])
    rep = CheckReport()
    end = _when(run.config.get("end"), end=True)
    start = _when(run.config.get("start"))
    syms = list(run.config["symbols"])
    data = {s: prepare_bars(bars[s], cfg, end) for s in syms}
    orders = _orders(run.orders)
    audit = run.audit
    dec = audit[audit["kind"] == "decision"]
    decisions = [
        {"t": _ns(t), "symbol": s, "action": a, "reason": str(r), "cid": c if isinstance(c, str)
         else "", "detail": json.loads(d) if isinstance(d, str) and d else {}}
        for t, s, a, r, c, d in zip(dec.time, dec.symbol, dec.action, dec.reason,
                                    dec.client_order_id, dec.detail, strict=True)]
    # a cancel decided on a bar takes effect then (its notification may come a step later)
    for d in decisions:
        if d["action"] == "cancel_entry":
            for o in orders:
                if o.cid == d["cid"]:
                    o.final = min(o.final, d["t"])
    trades = [dict(r, entry_time=_ns(r["entry_time"]), exit_time=_ns(r["exit_time"]))
              for r in run.trades.to_dict("records")]
    equity = run.equity.sort_values("timestamp")
    bar_s = _BAR_SECONDS[cfg["bar_interval"]]
    ext_on = bool(cfg.get("extended_hours"))
    ma = cfg.get("signal", "ma") == "ma"
    eq_ts = pd.DatetimeIndex(equity.timestamp).as_unit("ns").asi8
    cash_at = dict(zip(eq_ts.tolist(), equity.cash.tolist(), strict=True))
    stop_px = run.prices.dropna(subset=["stop"])
    levels = dict(zip(zip(stop_px.symbol, pd.DatetimeIndex(stop_px.timestamp).as_unit("ns")
                          .asi8.tolist(), strict=True), stop_px.stop.tolist(), strict=True))

    _check_entries(rep, cfg, data, orders, decisions, cash_at, start, ma)
    _check_timeouts_and_fallbacks(rep, cfg, data, orders, decisions, bar_s)
    _check_stops_and_exits(rep, cfg, data, orders, trades, levels, ma)
    _check_capacity(rep, cfg, orders, decisions)
    _check_sessions(rep, data, orders, ext_on)
    _check_books(rep, cfg, data, orders, trades, equity, eq_ts)
    return rep


def _check_entries(rep: CheckReport, cfg: dict[str, Any], data: dict[str, SymbolBars],
                   orders: list[Order], decisions: list[dict[str, Any]],
                   cash_at: dict[int, float], start: int | None, ma: bool) -> None:
    buy_by_cid = {d["cid"]: d for d in decisions
                  if d["action"] == "buy" and d["reason"] == "signal"}
    for o in orders:
        if o.purpose != "entry":
            continue
        sb = data[o.symbol]
        i = sb.at(o.decided)
        rep.check(i is not None, "entry", f"{o.cid}: decided on no bar of {o.symbol}")
        if i is None:
            continue
        close, atr = float(sb.close[i]), float(sb.atr[i])
        if ma:
            rep.check(bool(sb.cross(i, cfg["slow_period"], cfg["fast_period"], up=True)),
                      "entry", f"{o.cid}: no fresh cross-up on its bar")
        rep.check(not math.isnan(atr), "entry", f"{o.cid}: ATR still warming up")
        rep.check(not sb.last[i], "entry", f"{o.cid}: new entry on the session's last bar")
        if o.type == "limit":
            rep.check(o.limit_price == floor_tick(close) and o.limit_price <= close, "limit",
                      f"{o.cid}: limit {o.limit_price} for close {close} (expected "
                      f"{floor_tick(close)})")
        else:
            rep.check(not cfg["use_limit_orders"] and bool(sb.regular[i]), "limit",
                      f"{o.cid}: market entry with limit orders on, or outside regular hours")
        d = buy_by_cid.get(o.cid)
        rep.check(d is not None, "size", f"{o.cid}: no buy decision row")
        if d is None:
            continue
        det = d["detail"]
        eq = float(det.get("equity", math.nan))
        rep.check(math.isclose(det.get("atr", math.nan), atr, rel_tol=1e-9), "size",
                  f"{o.cid}: ATR {det.get('atr')} != recomputed {atr}")
        risk_shares = eq * cfg["risk_per_trade_pct"] / (cfg["atr_stop_multiplier"] * atr)
        tol = 1e-6 * max(eq, 1.0)
        rep.check(o.qty <= math.floor(risk_shares + 1e-9) + 1e-9, "size",
                  f"{o.cid}: {o.qty} > risk shares {risk_shares:.3f}")
        rep.check(o.qty * close <= cfg["max_position_pct"] * eq + tol, "size",
                  f"{o.cid}: {o.qty} x {close} over {cfg['max_position_pct']} of equity {eq}")
        cash = cash_at.get(o.decided)
        if cash is not None:
            rep.check(o.qty * close <= cash + tol, "size",
                      f"{o.cid}: {o.qty} x {close} > cash {cash}")
        if det.get("binding") == "risk" and not cfg["fractional_shares"]:
            rep.check(o.qty == math.floor(risk_shares + 1e-9), "size",
                      f"{o.cid}: risk-bound size {o.qty} != floor({risk_shares})")
    if not ma:
        return
    # Every fresh cross-up of a warm bar was decided (a buy or a skip): no symbol is muted
    # by another one's start, end or gap.
    decided = {(d["symbol"], d["t"]) for d in decisions}
    for sym, sb in data.items():
        for i in sb.crosses(cfg["slow_period"], cfg["fast_period"], up=True):
            t = int(sb.ts[i])
            if (start is not None and t < start) or math.isnan(sb.atr[i]):
                continue
            rep.check((sym, t) in decided, "decided", f"{sym} {_iso(t)}: cross-up not decided")


def _check_timeouts_and_fallbacks(rep: CheckReport, cfg: dict[str, Any],
                                  data: dict[str, SymbolBars], orders: list[Order],
                                  decisions: list[dict[str, Any]], bar_s: int) -> None:
    wait = int(max(cfg["limit_order_timeout"], bar_s) * 1e9)
    cancel_at = {(d["cid"], d["reason"]): d["t"] for d in decisions
                 if d["action"] == "cancel_entry"}
    last_entry: dict[str, Order] = {}
    for o in orders:
        if o.purpose == "entry" and o.type == "limit":
            last_entry[o.symbol] = o
            sb = data[o.symbol]
            i = sb.at(o.decided)
            if i is None:
                continue
            k = int(np.searchsorted(sb.ts, o.decided + wait, side="left"))
            due = int(sb.ts[k]) if k < len(sb.ts) else None
            for t, _, _ in o.fills:
                rep.check(due is None or t <= due, "timeout",
                          f"{o.cid}: filled at {_iso(t)}, after its timeout bar")
            t_out = cancel_at.get((o.cid, "limit_timeout"))
            if t_out is not None:
                rep.check(t_out == due, "timeout", f"{o.cid}: timed out at {_iso(t_out)}, "
                          f"not on the first bar past the timeout")
            elif o.status != "filled" and due is not None and not any(
                    (o.cid, r) in cancel_at for r in ("signal", "stop")):
                rep.check(o.final <= due, "timeout",
                          f"{o.cid}: still working after its timeout bar {_iso(due)}")
        elif o.purpose == "fallback":
            parent = last_entry.get(o.symbol)
            rep.check(parent is not None, "fallback", f"{o.cid}: no entry before it")
            if parent is None:
                continue
            remainder = parent.qty - parent.filled_qty
            rep.check(0 < o.qty <= remainder + 1e-9, "fallback",
                      f"{o.cid}: {o.qty} shares for a remainder of {remainder}")
            rep.check(cancel_at.get((parent.cid, "limit_timeout")) == o.decided, "fallback",
                      f"{o.cid}: not sent on the bar its entry timed out")
            rep.check(o.type == "market", "fallback", f"{o.cid}: not a market order")


def _trade_rows(orders: list[Order], trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Closed trades plus positions still open at the end (with the order that opened them)."""
    out = list(trades)
    by_sym: dict[str, list[Order]] = defaultdict(list)
    for o in orders:
        by_sym[o.symbol].append(o)
    for sym, g in by_sym.items():
        held = sum(q if o.side == "buy" else -q for o in g for _, q, _ in o.fills)
        if held <= 1e-9:
            continue
        after = max((t["exit_time"] for t in trades if t["symbol"] == sym), default=-1)
        first = min(((f[0], o) for o in g if o.side == "buy" for f in o.fills
                     if f[0] > after), default=None, key=lambda x: x[0])
        if first is not None:
            out.append({"symbol": sym, "entry_order_id": first[1].cid, "exit_time": None,
                        "exit_reason": "", "exit_reasons": "", "qty": held,
                        "exit_order_id": ""})
    return out


def _check_stops_and_exits(rep: CheckReport, cfg: dict[str, Any], data: dict[str, SymbolBars],
                           orders: list[Order], trades: list[dict[str, Any]],
                           levels: dict[tuple[str, int], float], ma: bool) -> None:
    by_cid = {o.cid: o for o in orders}
    trail, mult = cfg["trail_stop_pct"], cfg["atr_stop_multiplier"]
    stops_of: dict[str, list[Order]] = defaultdict(list)
    entries_of: dict[str, list[Order]] = defaultdict(list)
    for o in orders:
        if o.purpose == "stop":
            stops_of[o.symbol].append(o)
        elif o.purpose == "entry":
            entries_of[o.symbol].append(o)
    for t in _trade_rows(orders, trades):
        sym = t["symbol"]
        sb = data[sym]
        first = by_cid.get(t["entry_order_id"])
        if first is None:
            rep.check(False, "stop", f"{sym}: trade without its entry order")
            continue
        fills = sorted(first.fills)
        if not fills:
            continue
        t_fill, _, p_fill = fills[0]
        entry = first
        if first.purpose == "fallback":  # the ATR is the one of the entry's decision bar
            before = [e for e in entries_of[sym] if e.decided < first.decided]
            entry = before[-1] if before else first
        i0, i_fill = sb.at(entry.decided), sb.at(t_fill)
        if i0 is None or i_fill is None:
            rep.check(False, "stop", f"{sym}: entry or fill bar missing")
            continue
        fixed = p_fill - mult * float(sb.atr[i0])
        exit_t = t["exit_time"]
        i_end = sb.at(exit_t) if exit_t is not None else len(sb.ts)
        if i_end is None:
            rep.check(False, "exit", f"{sym}: exit at {_iso(exit_t)}, not a bar of {sym}")
            continue
        # highest high known before bar i (hh_before[i - i_fill]) and after it
        highs = np.maximum.accumulate(np.concatenate([[p_fill], sb.high[i_fill:i_end + 1]]))
        lvl = np.maximum(fixed, highs * (1 - trail))  # lvl[k]: after k bars from the fill
        prev = -math.inf
        for k, i in enumerate(range(i_fill, i_end)):
            got = levels.get((sym, int(sb.ts[i])))
            if got is None:
                continue  # the position was already closing on this bar
            want = float(lvl[k + 1])
            rep.check(math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), "stop",
                      f"{sym} {_iso(int(sb.ts[i]))}: stop {got} != max(fixed, trail) {want}")
            rep.check(got >= prev - 1e-12, "stop", f"{sym} {_iso(int(sb.ts[i]))}: stop down")
            prev = got
        last_px = -math.inf
        for s in stops_of[sym]:
            if s.decided < t_fill or (exit_t is not None and s.decided > exit_t):
                continue
            j = sb.at(s.decided)
            if j is None:
                continue
            # placed as a fill arrives (before the bar's high moves the trail) or after the
            # bar's ratchet: the level before or after bar j, rounded down
            k = j - i_fill
            wants = {floor_tick(float(lvl[k])), floor_tick(float(lvl[k + 1]))}
            rep.check(any(math.isclose(s.stop_price, w, abs_tol=1e-9) for w in wants), "stop",
                      f"{s.cid}: stop price {s.stop_price}, level rounded down {sorted(wants)}")
            rep.check(s.stop_price >= last_px, "stop", f"{s.cid}: stop lowered")
            last_px = s.stop_price
        if exit_t is None:
            continue
        legs = [x.split(":") for x in str(t.get("exit_reasons") or "").split(",") if x]
        sold = {r: float(q) for r, q in legs}
        if sold:
            rep.check(math.isclose(sum(sold.values()), float(t["qty"]), abs_tol=1e-6), "exit",
                      f"{sym} {_iso(exit_t)}: exit legs {sold} != {t['qty']} shares")
            top = max(sold, key=lambda r: sold[r])
            rep.check(t["exit_reason"] == top, "exit",
                      f"{sym} {_iso(exit_t)}: reason {t['exit_reason']} but {top} sold most")
        ex = by_cid.get(t["exit_order_id"])
        if ex is None:
            continue
        reasons = set(sold) or {t["exit_reason"]}
        if len(reasons) != 1:
            continue
        j = sb.at(ex.decided)
        if ex.purpose == "stop":  # the resting stop filled at the open: the state before it
            want = "stop" if fixed >= highs[i_end - i_fill] * (1 - trail) else "trail"
            rep.check(t["exit_reason"] == want, "exit",
                      f"{sym} {_iso(exit_t)}: stop fill says {t['exit_reason']}, binding "
                      f"was {want}")
        elif j is not None and reasons == {"signal"}:
            if ma:
                rep.check(bool(sb.cross(j, cfg["slow_period"], cfg["fast_period"], up=False)),
                          "exit", f"{ex.cid}: signal exit without a cross-down")
        elif j is not None:  # the strategy sold for its stop: the state after bar j
            want = "stop" if fixed >= highs[j - i_fill + 1] * (1 - trail) else "trail"
            rep.check(t["exit_reason"] == want, "exit",
                      f"{ex.cid}: strategy stop exit says {t['exit_reason']}, binding {want}")


def _check_capacity(rep: CheckReport, cfg: dict[str, Any], orders: list[Order],
                    decisions: list[dict[str, Any]]) -> None:
    held: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for o in orders:
        for t, q, _ in o.fills:
            held[o.symbol].append((t, q if o.side == "buy" else -q))
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for o in orders:
        if o.purpose in ("entry", "fallback"):
            spans[o.symbol].append((o.decided, o.final))
    for sym, sp in spans.items():
        for (d0, f0), (d1, _) in zip(sp, sp[1:], strict=False):
            rep.check(d1 >= f0, "one_entry", f"{sym}: a second entry at {_iso(d1)} while the "
                                             f"one from {_iso(d0)} was working")
    pos_t = {s: (np.array([t for t, _ in sorted(v)], np.int64),
                 np.cumsum([q for _, q in sorted(v)])) for s, v in held.items()}

    def position(sym: str, when: int) -> float:
        ts, cum = pos_t[sym]
        k = int(np.searchsorted(ts, when, side="right"))
        return float(cum[k - 1]) if k else 0.0

    for d in decisions:
        if d["action"] != "buy" or d["reason"] != "signal":
            continue
        t = d["t"]
        busy = {s for s in pos_t if s != d["symbol"] and position(s, t) > 1e-9}
        busy |= {s for s, sp in spans.items() if s != d["symbol"]
                 and any(d0 < t < f for d0, f in sp)}
        rep.check(len(busy) + 1 <= cfg["max_positions"], "max_positions",
                  f"{d['symbol']} {_iso(t)}: entry with {len(busy)} other symbols busy")


def _check_sessions(rep: CheckReport, data: dict[str, SymbolBars], orders: list[Order],
                    ext_on: bool) -> None:
    for o in orders:
        sb = data[o.symbol]
        rep.check(sb.at(o.decided) is not None, "session",
                  f"{o.cid}: decided on {_iso(o.decided)}, not a bar of the session")
        for t, _, _ in o.fills:
            j = sb.at(t)
            ok = j is not None and (bool(sb.regular[j]) or (
                ext_on and bool(sb.extended[j]) and o.type == "limit"))
            rep.check(ok, "session", f"{o.cid}: filled at {_iso(t)}, outside its session")
            rep.check(t > o.decided, "session", f"{o.cid}: filled at {_iso(t)}, not after "
                                                "its decision bar")


def _check_books(rep: CheckReport, cfg: dict[str, Any], data: dict[str, SymbolBars],
                 orders: list[Order], trades: list[dict[str, Any]], equity: pd.DataFrame,
                 eq_ts: np.ndarray) -> None:
    comm, start = cfg["commission"], float(cfg["cash"])
    rows = sorted((t, o.symbol, q if o.side == "buy" else -q, p)
                  for o in orders for t, q, p in o.fills)
    tol = 1e-6 * start
    f_t = np.array([r[0] for r in rows], np.int64)
    flow = np.array([-q * p - abs(q) * p * comm for _, _, q, p in rows])
    cum = np.concatenate([[0.0], np.cumsum(flow)])
    cash = start + cum[np.searchsorted(f_t, eq_ts, side="right")]
    got_cash = equity.cash.to_numpy()
    bad = np.nonzero(np.abs(cash - got_cash) > tol)[0]
    rep.check(len(bad) == 0, "equity", f"cash differs from the fills on {len(bad)} steps" +
              (f", first {_iso(int(eq_ts[bad[0]]))}" if len(bad) else ""))
    marked = np.zeros(len(eq_ts))
    for sym in {r[1] for r in rows}:
        sb = data[sym]
        mine = [(t, q) for t, s, q, _ in rows if s == sym]
        st = np.array([t for t, _ in mine], np.int64)
        pos = np.concatenate([[0.0], np.cumsum([q for _, q in mine])])
        held = pos[np.searchsorted(st, eq_ts, side="right")]
        bar_i = np.searchsorted(sb.ts, eq_ts, side="right") - 1
        px = np.where(bar_i >= 0, sb.close[np.maximum(bar_i, 0)], 0.0)
        marked += held * px
    value = got_cash + marked
    got_value = equity.value.to_numpy()
    bad = np.nonzero(np.abs(value - got_value) > tol)[0]
    rep.check(len(bad) == 0, "equity", f"value != cash + marked positions on {len(bad)} steps"
              + (f", first {_iso(int(eq_ts[bad[0]]))}: {got_value[bad[0]]} vs {value[bad[0]]}"
                 if len(bad) else ""))
    rep.check(int(equity.positions.max() if len(equity) else 0) <= cfg["max_positions"],
              "max_positions", "more positions at once than max_positions")
    if not len(eq_ts):
        return
    # sum of P&L: closed trades + open positions' P&L = final value - starting cash
    final = float(got_value[-1])
    open_pnl = 0.0
    for sym in {r[1] for r in rows}:
        after = max((t["exit_time"] for t in trades if t["symbol"] == sym), default=-1)
        tail = [(q, p) for t, s, q, p in rows if s == sym and t > after]
        qty = sum(q for q, _ in tail)
        if abs(qty) < 1e-9:
            continue
        sb = data[sym]
        last = float(sb.close[int(np.searchsorted(sb.ts, eq_ts[-1], side="right")) - 1])
        open_pnl += qty * last - sum(q * p + abs(q) * p * comm for q, p in tail)
    total = sum(float(t["pnl"]) for t in trades) + open_pnl
    rep.check(math.isclose(total, final - start, abs_tol=tol), "pnl",
              f"sum of trade P&L {total:.4f} != final {final:.4f} - start {start}")
    buys: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for sym in {r[1] for r in rows}:
        b = [(ts, q) for ts, s, q, _ in rows if s == sym and q > 0]
        buys[sym] = (np.array([x[0] for x in b], np.int64),
                     np.concatenate([[0.0], np.cumsum([x[1] for x in b])]))
    for t in trades:
        bts, bcum = buys.get(t["symbol"], (np.array([], np.int64), np.zeros(1)))
        lo = int(np.searchsorted(bts, t["entry_time"], side="left"))
        hi = int(np.searchsorted(bts, t["exit_time"], side="right"))
        bought = float(bcum[hi] - bcum[lo])
        rep.check(math.isclose(bought, float(t["qty"]), abs_tol=1e-6), "pnl",
                  f"{t['symbol']} {_iso(t['entry_time'])}: bought {bought} != qty {t['qty']}")
