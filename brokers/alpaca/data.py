"""``AlpacaData``: a live Backtrader feed of Alpaca bars, with ``signal`` and ``atr`` lines.

Implements the data side of Alpaca's "Real-time stock pricing data" and GET /v2/stocks/bars
(docs.alpaca.markets/docs/real-time-stock-pricing-data) in Backtrader's live-feed shape
(modelled on backtrader's ``feeds/ibdata.py``):

* history first: the store warms the ``signal``/``atr`` computation up from REST; those bars
  are NOT delivered (the Strategy must not trade on them);
* then bars from the stream, one step per Cerebro iteration (the store decides which);
* after a reconnect, the gap is backfilled from REST and delivered with the ``DELAYED``
  notification, then ``LIVE`` again; no bar is missing, none is delivered twice.

The feed is thin on purpose: the store owns every connection and decision; ``deliver`` and
``finish`` are its only entry points.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import backtrader as bt
import numpy as np

from brokers.alpaca.parsing import BarRecord
from feeds.btfeed import ns_to_bt


class AlpacaData(bt.feed.DataBase):
    """One symbol's live bars. Params: ``store`` (AlpacaStore), ``symbol``."""

    lines: Any = ("signal", "atr")  # Backtrader turns these into line objects
    params = (
        ("store", None),
        ("symbol", ""),
    )

    def __init__(self) -> None:
        super().__init__()
        if self.p.store is None or not self.p.symbol:
            raise ValueError("AlpacaData needs store= and symbol=")
        self._queue: deque[tuple[BarRecord, float, float, str]] = deque()
        self._finished = False
        self._laststatus = self.CONNECTED  # notifications may come before Cerebro starts us
        self.p.store.register(self)

    def islive(self) -> bool:
        """Live: Cerebro disables preload/runonce and polls bar by bar."""
        return True

    def haslivedata(self) -> bool:
        """A bar is waiting."""
        return bool(self._queue)

    def start(self) -> None:
        super().start()
        self.put_notification(self.DELAYED if self._queue else self.LIVE)

    def deliver(self, bar: BarRecord, signal: float, atr: float, source: str) -> None:
        """Queue one bar (called by the store, main thread)."""
        self._queue.append((bar, signal, atr, source))

    def finish(self) -> None:
        """No more bars: Cerebro ends the run once every feed has finished."""
        self._finished = True

    def _load(self) -> Any:
        if not self._queue:
            return False if self._finished else None
        bar, signal, atr, source = self._queue.popleft()
        self.put_notification(self.DELAYED if source == "backfill" else self.LIVE)
        ns = int(bar.ts.timestamp() * 1_000_000) * 1000
        lines = self.lines
        lines.datetime[0] = float(ns_to_bt(np.array([ns], dtype=np.int64))[0])
        lines.open[0] = bar.open
        lines.high[0] = bar.high
        lines.low[0] = bar.low
        lines.close[0] = bar.close
        lines.volume[0] = bar.volume
        lines.openinterest[0] = 0.0
        lines.signal[0] = signal
        lines.atr[0] = atr
        return True
