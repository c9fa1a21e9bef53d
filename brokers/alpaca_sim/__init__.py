"""A loopback stand-in for Alpaca: trading REST v2, market-data REST v2 and both WebSocket
streams, fed by Parquet bars replayed on a controllable clock.

The real ``alpaca-py`` clients work against it with only ``url_override`` changed. Start it
in-process with :class:`brokers.alpaca_sim.testing.SimServer` or standalone with
``python cli.py alpaca-sim``. Behaviour and fill rules: ``docs/alpaca-sim.md``.

Implemented Alpaca documents: Trading API v2 (``/v2/account``, ``/v2/clock``,
``/v2/calendar``, ``/v2/assets``, ``/v2/orders``, ``/v2/positions``), Market Data API v2
stocks (bars, latest bar/quote/trade, snapshots), the real-time stock data stream
(``/v2/{feed}``, msgpack) and the trading stream (``/stream``, ``trade_updates``).
"""

from __future__ import annotations

__all__ = ["SimServer"]


def __getattr__(name: str) -> object:
    # Lazy, so importing the market engine does not pull in aiohttp and threads.
    if name == "SimServer":
        from brokers.alpaca_sim.testing import SimServer

        return SimServer
    raise AttributeError(name)
