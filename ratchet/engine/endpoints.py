"""Which Alpaca endpoint a session talks to: real money or not, and its stream URLs."""

from __future__ import annotations

from urllib.parse import urlparse

from ratchet.common.alpaca_config import LIVE_URL, PAPER_URL
from ratchet.common.errors import UserError

REAL_MONEY_HOSTS = ("api.alpaca.markets",)


class RealMoneyError(UserError):
    """A real-money endpoint without ``--i-understand-real-money``."""


def is_real_money(url: str) -> bool:
    """True for Alpaca's real-money trading host."""
    return (urlparse(url).hostname or "") in REAL_MONEY_HOSTS


def is_alpaca_host(url: str) -> bool:
    """True for Alpaca's own hosts (their clock runs in real time), False for a loopback."""
    return (urlparse(url).hostname or "").endswith("alpaca.markets")


def stream_urls(base_url: str, feed: str) -> tuple[str, str]:
    """(market-data stream, trading stream) URLs that go with a trading REST root."""
    parsed = urlparse(base_url)
    host = parsed.hostname or ""
    if host.endswith("alpaca.markets"):
        return (f"wss://stream.data.alpaca.markets/v2/{feed}",
                f"wss://{parsed.netloc}/stream")
    scheme = "wss" if parsed.scheme == "https" else "ws"
    return f"{scheme}://{parsed.netloc}/v2/{feed}", f"{scheme}://{parsed.netloc}/stream"


def check_endpoint(base_url: str, real_money_ok: bool) -> None:
    """Refuse a real-money endpoint unless it was named explicitly."""
    if is_real_money(base_url) and not real_money_ok:
        raise RealMoneyError(
            f"{base_url} trades REAL MONEY: refused. Use the paper endpoint ({PAPER_URL}), or "
            "pass --i-understand-real-money together with --base-url "
            f"{LIVE_URL} if that is really what you want")
