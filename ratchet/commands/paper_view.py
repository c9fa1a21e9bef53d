"""What ``cli.py paper`` shows while a session runs: one line per bar step, or a live
dashboard (``--dashboard``). Both are the session's ``view``: called with a ``Snapshot``
after each save of the state file."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from brokers.alpaca.clock import NEW_YORK
from brokers.alpaca.state import LIVE
from brokers.alpaca.store import AlpacaStore
from ratchet.engine.paper import Snapshot

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


class StepPrinter:
    """One short line per bar step (the default output of ``paper`` without --dashboard):
    bar time (New York), symbols updated on it, orders sent so far, equity, positions."""

    def __init__(self, echo: Callable[[str], None], live: bool) -> None:
        self.echo = echo
        self.live = live
        self._steps = 0

    def __call__(self, snap: Snapshot) -> None:
        store = snap.store
        steps = store.status.steps
        if steps == self._steps:
            return  # the start or the shutdown save, not a new bar step
        self._steps = steps
        self.echo(self.line(snap))

    def line(self, snap: Snapshot) -> str:
        """The status line of the newest step."""
        store, view, state = snap.store, snap.view, snap.state
        bars = state.get("last_bar", {})
        newest = max(bars.values()) if bars else None
        updated = sum(1 for t in bars.values() if t == newest)
        when = datetime.fromisoformat(newest).astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M") \
            if newest else "-"
        sent = f"{store.client.submit_count} orders sent" if self.live else \
            f"{len(view.working)} working (dry run)"
        return (f"{when}  {updated}/{len(bars) or len(snap.state.get('symbols', []))} symbols"
                f"  {sent}  equity {view.value:,.2f}  {len(view.positions)} open")


# ------------------------------------------------------------------------------- dashboard


class Dashboard:
    """A live console view (rich): positions, stops, P&L, working orders, last bar, streams."""

    def __init__(self, console: Console, start_value: float | None = None) -> None:
        from rich.live import Live

        self.console = console
        self.start_value = start_value
        self.live = Live(console=console, auto_refresh=False, transient=False)
        self._last = 0.0

    def __enter__(self) -> Dashboard:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def __call__(self, snap: Snapshot) -> None:
        self.live.update(self.render(snap), refresh=True)

    def render(self, snap: Snapshot) -> RenderableType:
        """The dashboard as one rich renderable."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        view, store = snap.view, snap.store
        if self.start_value is None:
            self.start_value = view.value
        label = "LIVE (paper account)" if snap.mode == LIVE else "DRY RUN - no orders are sent"
        pnl = view.value - (self.start_value or view.value)
        last = store.status.last_bar
        streams = ", ".join(f"{s.name} {s.state.value} ({s.connects}x)"
                            for s in store.stream_statuses())
        # one short fact per line: the header fits an 80-column terminal without wrapping
        lines = [
            f"[bold]{label}[/bold]  {snap.endpoint}",
            f"value {view.value:,.2f}   cash {view.cash:,.2f}   P&L {pnl:+,.2f}",
            f"last bar {last.astimezone(NEW_YORK):%Y-%m-%d %H:%M} NY   steps "
            f"{store.status.steps}   "
            f"data {store.status.state}" if last is not None else
            f"last bar -   steps {store.status.steps}   data {store.status.state}",
            _clock_line(store),
            f"streams: {streams}",
        ]
        texts = [Text.from_markup(line, overflow="ellipsis") for line in lines]
        for text in texts:
            text.no_wrap = True
        head = Group(*texts)
        pos = Table(title="positions", title_justify="left")
        for col in ("symbol", "qty", "avg", "last", "unrealized", "stop"):
            pos.add_column(col, justify="right")
        for sym, p in view.positions.items():
            stop = view.stops.get(sym, {}).get("price")
            pos.add_row(sym, f"{p['qty']:g}", f"{p['avg_price']:.2f}", f"{p.get('last', 0):.2f}",
                        f"{p.get('unrealized_pnl', 0):+,.2f}",
                        f"{stop:.2f}" if stop else "[red]none[/red]")
        work = Table(title="working orders", title_justify="left")
        for col in ("client order id", "side", "type", "qty", "price", "state"):
            work.add_column(col)
        for w in view.working + list(view.stops.values()):
            work.add_row(w["cid"], w["side"], w["type"], f"{w['qty']:g}",
                         f"{w['price']:.2f}" if w.get("price") else "", w["state"])
        return Group(head, pos, work)


def _clock_line(store: AlpacaStore) -> str:
    c = store.clock.last
    if c is None:
        return "market clock unknown"
    if c.is_open:
        return f"market open until {c.next_close.astimezone(NEW_YORK):%H:%M %Z}"
    wait = c.next_open - store.now()
    hours, rem = divmod(max(0, int(wait.total_seconds())), 3600)
    return (f"market closed; opens {c.next_open.astimezone(NEW_YORK):%a %Y-%m-%d %H:%M %Z} "
            f"(in {hours}h {rem // 60:02d}m)")
