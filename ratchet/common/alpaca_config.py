"""``AlpacaConfig``: the typed, frozen settings of a live (paper) session against Alpaca.

``Settings`` (``ratchet.common.config``) is the strategy and its runs, the same for a backtest and a
paper session; ``AlpacaConfig`` is what only the live run needs: endpoints, the market-data
feed, timeouts, grace periods and rate limits. It is loaded the same layered way, lowest to
highest: defaults, the ``[alpaca]`` table of the config file (``--config``), environment
variables ``RATCHET_ALPACA_<NAME>`` (e.g. ``RATCHET_ALPACA_FEED=sip``), then the ``paper``
flags that exist for a field (``--feed``, ``--base-url`` ...). Each field has ONE name, the
same as its file key and (upper-cased, prefixed) environment variable; times are seconds.

API keys are not here (``brokers.alpaca.credentials``), nor are test hooks (the Strategy class,
the broker's fill fence, callbacks: ``ratchet.engine.paper_run.SessionHooks``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ratchet.common.config import ENV_PREFIX, read_config_table
from ratchet.common.errors import ConfigError

logger = logging.getLogger(__name__)

PAPER_URL = "https://paper-api.alpaca.markets"
LIVE_URL = "https://api.alpaca.markets"
DATA_URL = "https://data.alpaca.markets"

#: the config-file table and the environment prefix of these settings
TABLE = "alpaca"
ENV_ALPACA = ENV_PREFIX + "ALPACA_"
FEEDS = ("iex", "sip")


@dataclass(frozen=True)
class AlpacaConfig:
    """Endpoints, feed, timeouts, grace periods and rate limits of a live session.

    ``None`` means "derived": the data URL and stream URLs from ``base_url``, the stream
    silence from the bar interval, the stop grace from the bar interval.
    """

    #: trading REST root (paper by default; a loopback server: ``http://127.0.0.1:PORT``)
    base_url: str = PAPER_URL
    #: market-data REST root (None: Alpaca's for Alpaca hosts, else ``base_url``)
    data_url: str | None = None
    #: market-data WebSocket URL (None: from ``base_url`` and ``feed``)
    data_stream_url: str | None = None
    #: ``trade_updates`` WebSocket URL (None: from ``base_url``)
    trading_stream_url: str | None = None
    #: market-data feed, recorded with the bars
    feed: str = "iex"
    #: calendar days of REST history for the indicator warm-up
    warmup_days: float = 5.0
    #: reconnect the data stream after this many silent seconds while the market is open
    #: (None: two bars, at least 120)
    stream_silence: float | None = None
    #: seconds between market-clock reads
    clock_poll: float = 30.0
    #: seconds after a bar's close to wait for the other symbols' bars of that time
    bar_grace: float = 2.0
    #: seconds the streams get to connect at the start
    connect_timeout: float = 20.0
    #: longest wait for Alpaca's rate limit to reset before a request fails (seconds)
    rate_limit_max_wait: float = 60.0
    #: trading and market-data request budget per minute each (Alpaca: 200)
    requests_per_minute: float = 200.0
    #: a position without a live stop gets one from the broker after this many seconds
    #: (None: one bar + 15 s; the Strategy re-places its own stop on its next bar)
    stop_grace: float | None = None
    #: seconds between checks that the tracked stops are still open at Alpaca
    stop_audit: float = 60.0
    #: ``--once``: seconds a just-sent market fallback may take to fill before the exit
    once_fill_wait: float = 5.0
    #: a stream down this many seconds is an alert
    alert_stream_down: float = 60.0
    #: cancel working entry orders at a clean stop (``--once`` always leaves them)
    cancel_entries_on_exit: bool = True

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("base_url", "data_url"):
            url = getattr(self, name)
            if url is not None and urlparse(url).scheme not in ("http", "https"):
                problems.append(f"{name}: {url!r} must be an http(s):// URL")
        for name in ("data_stream_url", "trading_stream_url"):
            url = getattr(self, name)
            if url is not None and urlparse(url).scheme not in ("ws", "wss"):
                problems.append(f"{name}: {url!r} must be a ws(s):// URL")
        if self.feed not in FEEDS:
            problems.append(f"feed: {self.feed!r} must be one of {', '.join(FEEDS)}")
        for f in fields(self):
            value = getattr(self, f.name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and not value > 0 and f.name != "bar_grace":
                unit = {"warmup_days": " days", "requests_per_minute": " requests"}.get(
                    f.name, " seconds")
                problems.append(f"{f.name}: {value:g} must be > 0{unit}")
        if self.bar_grace < 0:
            problems.append(f"bar_grace: {self.bar_grace:g} must be >= 0 seconds")
        if problems:
            raise ConfigError("invalid alpaca settings: " + "; ".join(problems))

    def replace(self, **changes: Any) -> AlpacaConfig:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)

    def silence_for(self, bar_seconds: int) -> float:
        """The data-stream watchdog for bars of ``bar_seconds``."""
        return self.stream_silence if self.stream_silence is not None else \
            max(120.0, 2.0 * bar_seconds)


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in fields(AlpacaConfig)}
#: field name -> its annotation as written (``from __future__ import annotations``)
HINTS: dict[str, str] = {f.name: str(f.type) for f in fields(AlpacaConfig)}


def _coerce(name: str, value: object, source: str) -> str | float | bool | None:
    """``value`` (a file, env or flag value) as the type of field ``name``."""
    if name not in FIELDS:
        raise ConfigError(f"{source}: unknown alpaca setting {name!r}; known: "
                          f"{', '.join(FIELDS)}")
    kind = HINTS[name]  # "str", "str | None", "float", "float | None" or "bool"
    try:
        if value is None or ("None" in kind and isinstance(value, str)
                             and value.strip().lower() in ("", "none")):
            if "None" in kind:
                return None
            raise ValueError("a value is required")
        if kind == "bool":
            text = str(value).strip().lower()
            if isinstance(value, bool):
                return value
            if text in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return text in ("1", "true", "yes", "on")
            raise ValueError("expected true/false")
        if kind.startswith("float"):
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError("expected a number")
            return float(value)
        return str(value).strip()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: bad value {value!r} for {name}: {exc}") from None


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Raw values of ``RATCHET_ALPACA_<NAME>`` environment variables (lower-case names)."""
    env = os.environ if environ is None else environ
    return {k[len(ENV_ALPACA):].lower(): v for k, v in env.items() if k.startswith(ENV_ALPACA)}


def load_alpaca_config(config_file: Path | None = None,
                       flags: Mapping[str, Any] | None = None,
                       environ: Mapping[str, str] | None = None,
                       ) -> tuple[AlpacaConfig, dict[str, str]]:
    """The effective ``AlpacaConfig`` (defaults < ``[alpaca]`` of the config file <
    ``RATCHET_ALPACA_*`` < flags) and, per field, where its value came from. ``flags``
    values of ``None`` mean "flag not given"; ``config_file`` None falls back to
    ``RATCHET_CONFIG`` as for ``Settings``."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources = dict.fromkeys(FIELDS, "default")
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        table = read_config_table(config_file, TABLE)
        for key, raw in table.items():
            name = str(key).lower()
            values[name] = _coerce(name, raw, f"config file {config_file} [{TABLE}]")
            sources[name] = f"config file {config_file}"
    for name, raw in read_env(env).items():
        var = ENV_ALPACA + name.upper()
        values[name] = _coerce(name, raw, f"environment variable {var}")
        sources[name] = f"env {var}"
    for name, raw in (flags or {}).items():
        if raw is None:
            continue
        flag = "--" + name.replace("_", "-")
        values[name] = _coerce(name, raw, f"option {flag}")
        sources[name] = f"flag {flag}"
    config = AlpacaConfig(**values)
    logger.debug("alpaca settings: %s", config)
    return config, sources
