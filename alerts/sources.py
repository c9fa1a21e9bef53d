"""Where alert events come from in a paper session, with no calls sprinkled in trading code.

* ``AuditAlerts``: an audit-trail listener (``analyzers.audit.Audit.listeners``). The audit
  already sees every fill, closed trade, rejection, lost stop and reconciliation difference;
  this turns those rows into events.
* ``SessionMonitor``: a thread that polls the streams' status (down longer than a threshold,
  back up) and the broker's time (a daily summary once the session has closed), using the
  last state the session saved (``on_state``).
* ``stopping_event``: the bot stopping, and why.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from alerts.events import AlertEvent, AlertSink, Category
from ratchet.common.logs import REDACTOR

logger = logging.getLogger(__name__)

NEW_YORK = ZoneInfo("America/New_York")
_STREAM_NAMES = {"market data": "market-data stream", "trade updates": "trade-updates stream"}


def _num(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _qty(x: float | None) -> str:
    return "?" if x is None else f"{x:g}"


def _px(x: float | None) -> str:
    return "?" if x is None else f"{x:,.2f}"


def _when(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class AuditAlerts:
    """Audit rows -> alert events. Call it with each row (``Audit.listeners``)."""

    def __init__(self, sink: AlertSink, announce_start: bool = True) -> None:
        self.sink = sink
        self.announce_start = announce_start  # off for --once (cron: a run per bar)
        self._pending_exit: dict[str, Any] | None = None
        self._rejected: set[str] = set()

    def __call__(self, row: Sequence[Any]) -> None:
        """Handle one audit row ``(time, kind, symbol, action, reason, qty, price, cid,
        detail)``; an exit fill is held until the next row (the closed trade and its P&L
        follow it at once)."""
        time_, kind, symbol, action, reason, qty, price, cid, detail = row[:9]
        when = _when(str(time_))
        qty_f, price_f = _num(qty), _num(price)
        pending = self._pending_exit
        if pending is not None:
            self._pending_exit = None
            if kind == "trade" and action == "close" and symbol == pending["symbol"]:
                self._exit(pending, when, str(reason), qty_f, price_f, detail, cid)
                return
            self._partial_exit(pending)
        if kind == "fill":
            if action == "buy":
                self.sink.emit(AlertEvent(
                    "entry_fill", Category.FILL,
                    f"{symbol} BUY {_qty(qty_f)} @ {_px(price_f)} filled",
                    f"{reason} order {cid} filled: bought {_qty(qty_f)} {symbol} at "
                    f"{_px(price_f)}", when, symbol,
                    {"side": "buy", "qty": qty_f, "price": price_f, "reason": reason,
                     "client_order_id": cid}))
            else:
                self._pending_exit = {"symbol": symbol, "qty": qty_f, "price": price_f,
                                      "purpose": reason, "cid": cid, "time": when}
        elif kind == "trade" and action == "close":
            self._exit(None, when, str(reason), qty_f, price_f, detail, cid, symbol=symbol)
        elif (kind == "order" and action in ("rejected", "margin")) or \
                (kind == "broker" and action == "rejected"):
            if cid and cid in self._rejected:
                return
            self._rejected.add(cid)
            why = "insufficient buying power" if action == "margin" else \
                reason if kind == "broker" else "rejected"
            self.sink.emit(AlertEvent(
                "order_rejected", Category.PROBLEM, f"{symbol} order rejected",
                f"order {cid} ({_qty(qty_f)} {symbol}) was rejected: {why}", when, symbol,
                {"client_order_id": cid, "reason": why}))
        elif kind == "decision" and action == "replace_lost_stop":
            self.sink.emit(AlertEvent(
                "stop_lost", Category.PROBLEM, f"{symbol} protective stop {reason}",
                f"the resting stop {cid} is {reason} (canceled by someone else, refused or "
                "expired): the bot places a new one", when, symbol,
                {"client_order_id": cid, "status": reason}))
        elif kind == "reconcile" and action == "place_stop":
            outcome = str(_detail(detail).get("outcome", ""))
            placed = outcome in ("accepted", "ambiguous", "")
            self.sink.emit(AlertEvent(
                "stop_placed" if placed else "stop_not_placed", Category.PROBLEM,
                f"{symbol} had no resting stop" + ("" if placed else ": stop NOT placed"),
                f"a position of {_qty(qty_f)} {symbol} had no stop at the broker: "
                + (f"placed {cid} at {_px(price_f)}" if placed else
                   f"{cid} at {_px(price_f)} was {outcome}: the position is unprotected")
                + (f" ({outcome})" if placed and outcome else ""), when,
                symbol, {"client_order_id": cid, "price": price_f, "outcome": outcome}))
        elif kind == "reconcile" and action == "reconcile":
            text = _detail(detail).get("detail", "")
            self.sink.emit(AlertEvent(
                "reconcile", Category.PROBLEM, f"reconciliation differences ({reason})",
                f"the broker's positions/orders differed from the saved state at {reason}: "
                f"{text}", when, "", {"reason": reason, "summary": text}))
        elif kind == "broker" and action == "not_notified":
            self.sink.emit(AlertEvent(
                "not_notified", Category.PROBLEM, f"{symbol} order {reason} after the last bar",
                f"order {cid} ended {reason} ({_qty(qty_f)} @ {_px(price_f)}) after the last "
                "bar of the run: check the position at the broker", when, symbol,
                {"client_order_id": cid}))
        elif kind == "session" and action == "start" and self.announce_start:
            self.sink.emit(AlertEvent("started", Category.INFO, f"session started ({reason})",
                                      "", when, "", {"mode": reason}))

    def flush(self) -> None:
        """Emit an exit fill still held (the run ends)."""
        pending, self._pending_exit = self._pending_exit, None
        if pending is not None:
            self._partial_exit(pending)

    def _exit(self, fill: dict[str, Any] | None, when: datetime | None, exit_reason: str,
              qty: float | None, price: float | None, detail: Any, cid: str,
              symbol: str = "") -> None:
        symbol = fill["symbol"] if fill is not None else symbol
        pnl = _num(_detail(detail).get("pnl"))
        pnl_text = "?" if pnl is None else f"{pnl:+,.2f}"
        self.sink.emit(AlertEvent(
            "exit_fill", Category.FILL,
            f"{symbol} SELL {_qty(qty)} @ {_px(price)} filled ({exit_reason}), P&L {pnl_text}",
            f"position closed by {exit_reason}: sold {_qty(qty)} {symbol} at {_px(price)}, "
            f"P&L {pnl_text} (order {cid})", when, symbol,
            {"side": "sell", "qty": qty, "price": price, "reason": exit_reason, "pnl": pnl,
             "client_order_id": cid}))

    def _partial_exit(self, fill: dict[str, Any]) -> None:
        sym = fill["symbol"]
        self.sink.emit(AlertEvent(
            "exit_fill", Category.FILL,
            f"{sym} SELL {_qty(fill['qty'])} @ {_px(fill['price'])} filled ({fill['purpose']})",
            f"{fill['purpose']} order {fill['cid']} sold {_qty(fill['qty'])} {sym} at "
            f"{_px(fill['price'])}; the position is not closed yet", fill["time"], sym,
            {"side": "sell", "qty": fill["qty"], "price": fill["price"],
             "reason": fill["purpose"], "pnl": None, "client_order_id": fill["cid"]}))


def _detail(detail: Any) -> dict[str, Any]:
    if isinstance(detail, dict):
        return detail
    try:
        out = json.loads(detail) if detail else {}
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def summary_event(state: dict[str, Any], day: date, day_start_value: float | None
                  ) -> AlertEvent:
    """The daily summary from a saved state: equity, day P&L, positions with their stops."""
    value = _num(state.get("value")) or 0.0
    pnl = value - day_start_value if day_start_value is not None else None
    stops = state.get("stops") or {}
    lines = []
    for sym, p in sorted((state.get("positions") or {}).items()):
        stop = _num((stops.get(sym) or {}).get("price"))
        lines.append(f"{sym} {_qty(_num(p.get('qty')))} @ {_px(_num(p.get('avg_price')))}, "
                     f"stop {_px(stop) if stop is not None else 'NONE'}")
    pnl_text = "?" if pnl is None else f"{pnl:+,.2f}"
    body = (f"equity {value:,.2f}, day P&L {pnl_text}, cash {_num(state.get('cash')) or 0:,.2f}; "
            + (f"{len(lines)} open position(s): " + "; ".join(lines) if lines
               else "no open positions"))
    return AlertEvent("daily_summary", Category.INFO, f"daily summary {day.isoformat()}", body,
                      _when(str(state.get("broker_time"))), "",
                      {"equity": value, "day_pnl": pnl, "positions": len(lines)})


class SessionMonitor:
    """Polls stream status and the broker time on its own thread.

    ``statuses()``: objects with ``.name`` and ``.state`` (``live`` = up). A stream seen up
    once and then not up for ``down_after`` seconds gives ``stream_down``; up again after
    that, ``stream_up``. ``now()``: the broker time; once it passes ``session_close(day)``
    for a day the session traded, ``daily_summary`` goes out (from the last ``on_state``).
    """

    def __init__(self, sink: AlertSink, statuses: Callable[[], Sequence[Any]],
                 now: Callable[[], datetime],
                 session_close: Callable[[date], datetime | None],
                 down_after: float = 60.0, poll: float = 0.5) -> None:
        self.sink = sink
        self.statuses = statuses
        self.now = now
        self.session_close = session_close
        self.down_after = down_after
        self.poll = poll
        self._up_seen: set[str] = set()
        self._down_since: dict[str, float] = {}
        self._alerted: set[str] = set()
        self._state: dict[str, Any] | None = None
        self._day_start: dict[date, float] = {}
        self._summarized: set[date] = set()
        self._closes: dict[date, datetime | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_state(self, state: dict[str, Any]) -> None:
        """The session saved ``state`` (trading thread: remembers it; looks the day's close
        up here, once per day, so the calendar is only ever read on the trading thread)."""
        value = _num(state.get("value"))
        when = _when(str(state.get("broker_time")))
        day = when.astimezone(NEW_YORK).date() if when is not None else None
        if day is not None and day not in self._closes:
            try:
                self._closes[day] = self.session_close(day)
            except Exception:  # noqa: BLE001 - no calendar: no summary for that day
                self._closes[day] = None
        with self._lock:
            self._state = state
            if day is not None and value is not None:
                self._day_start.setdefault(day, value)

    def start(self) -> SessionMonitor:
        """Start polling."""
        self._thread = threading.Thread(target=self._run, name="alerts-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self, final_check: bool = True) -> None:
        """Stop polling (before the streams are closed on purpose); one last check."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if final_check:
            self.check_close()

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.check_streams()
                self.check_close()
            except Exception:
                logger.exception("alert monitor failed")

    def check_streams(self, mono: float | None = None) -> None:
        """Compare the streams' states with the last poll."""
        mono = time.monotonic() if mono is None else mono
        for st in self.statuses():
            name = str(st.name)
            up = str(getattr(st.state, "value", st.state)) == "live"
            label = _STREAM_NAMES.get(name, f"{name} stream")
            if up:
                self._up_seen.add(name)
                since = self._down_since.pop(name, None)
                if name in self._alerted:
                    self._alerted.discard(name)
                    secs = mono - since if since is not None else 0.0
                    self.sink.emit(AlertEvent(
                        "stream_up", Category.PROBLEM, f"{label} back up",
                        f"{label} reconnected after {secs:.0f} s down; missed bars are "
                        "backfilled and the account reconciled", self._safe_now(), "",
                        {"stream": name, "down_seconds": round(secs, 1)}))
                continue
            if name not in self._up_seen:
                continue  # not connected yet at startup: not an outage
            since = self._down_since.setdefault(name, mono)
            if name not in self._alerted and mono - since >= self.down_after:
                self._alerted.add(name)
                error = REDACTOR.redact(str(getattr(st, "last_error", "") or ""))
                self.sink.emit(AlertEvent(
                    "stream_down", Category.PROBLEM, f"{label} down",
                    f"{label} has been down for {mono - since:.0f} s"
                    + (f" (last error: {error})" if error else "")
                    + "; the bot keeps reconnecting", self._safe_now(), "",
                    {"stream": name, "down_seconds": round(mono - since, 1)}))

    def _safe_now(self) -> datetime | None:
        try:
            return self.now()
        except Exception:  # noqa: BLE001 - a time for the message only
            return None

    def check_close(self) -> None:
        """Send the daily summary of each traded day whose session has closed."""
        now = self._safe_now()
        if now is None:
            return
        with self._lock:
            state = self._state
            days = sorted(self._day_start)
        for day in days:
            if day in self._summarized or state is None:
                continue
            close = self._closes.get(day)
            if close is None or now < close:
                continue
            self._summarized.add(day)
            self.sink.emit(summary_event(state, day, self._day_start.get(day)))


def stopping_event(why: str, problem: bool, steps: int | None = None,
                   start_value: float | None = None, end_value: float | None = None,
                   positions: dict[str, Any] | None = None,
                   stops: dict[str, Any] | None = None,
                   when: datetime | None = None) -> AlertEvent:
    """The bot stopping: why, and where it left the account."""
    parts = [f"stopped: {REDACTOR.redact(why)}"]
    if steps is not None:
        parts.append(f"{steps} bar steps")
    if start_value is not None and end_value is not None:
        parts.append(f"value {end_value:,.2f} ({end_value - start_value:+,.2f})")
    if positions is not None:
        stops = stops or {}
        held = [f"{s} {_qty(_num(p.get('qty')))} (stop "
                f"{_px(_num((stops.get(s) or {}).get('price')))})"
                for s, p in sorted(positions.items())]
        parts.append("open: " + (", ".join(held) if held else "none")
                     + ("; resting stops stay at the broker" if held else ""))
    return AlertEvent("stopping", Category.PROBLEM, "bot stopped" if problem else "bot stopping",
                      "; ".join(parts), when, "", {"why": why, "error": problem})
