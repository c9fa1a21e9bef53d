"""Download bars from Alpaca's market-data API into the Parquet bar store, incrementally.

Everything goes through alpaca-py's ``StockHistoricalDataClient.get_stock_bars`` (which pages
through ``next_page_token`` itself). Around it:

- **Layout.** Each symbol is a dataset folder ``<root>/<interval>/<SYMBOL>/`` of part files
  written by ``feeds.store.append_bars`` (atomic: temp file, fsync, rename). Our parts are
  named ``dl-<seq>-<window start>.parquet``; a higher sequence number wins on equal
  timestamps, so a re-fetched window silently replaces the older copy.
- **Coverage.** Every part records, in its Parquet metadata (``ratchet.coverage``), the time
  ranges it is the complete answer for, including windows in which Alpaca had no bars (so
  holidays, halts and pre-listing years are not fetched again). Parts written by others
  (imports, the bundled base file) count for the span from their first to their last bar.
  Coverage is written in the same atomic rename as the bars, so it can never claim more than
  what is on disk.
- **Incremental / resume.** Missing = the requested range minus coverage, cut into windows
  (a week of minute bars, a month of 5-minute bars... a decade of daily bars), skipping
  windows without an NYSE session. Windows are fetched oldest first; each completed window is
  a new part. An interruption (Ctrl-C, kill, network failure, a crash) loses at most the
  window in flight; running the same command again fetches only what is still missing.
- **Rate limits.** A token bucket paces requests (``--rate-limit`` per minute, Alpaca's free
  plan allows 200), ``X-RateLimit-Remaining``/``X-RateLimit-Reset`` are honoured (we wait for
  the reset when the budget is spent or a 429 arrives), 5xx and connection errors back off
  exponentially, and every request has a timeout. alpaca-py's own fixed 3-second retry sleep
  is turned off because the limiter does the waiting.
- **Recent bars.** A bar is recorded as covered only once it is complete and older than the
  15-minute delay of Alpaca's free plan, so a download during the session is finished by the
  next run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import requests
from requests.adapters import HTTPAdapter

from common.errors import ConfigError, DataError, RetryableError, UserError
from common.logs import REDACTOR
from feeds.coverage import NY, ny_midnight, sessions
from feeds.store import append_bars, is_valid_symbol, read_bars, validate_columns

if TYPE_CHECKING:
    from alpaca.data.historical import StockHistoricalDataClient

logger = logging.getLogger(__name__)

KEY_ENV = "APCA_API_KEY_ID"
SECRET_ENV = "APCA_API_SECRET_KEY"  # noqa: S105 - the variable's name, not a secret
DATA_URL_ENV = "APCA_API_DATA_URL"
FEEDS: tuple[str, ...] = ("iex", "sip")
ADJUSTMENTS: tuple[str, ...] = ("raw", "split", "dividend", "all")
#: Alpaca's free-plan delay for SIP data; bars younger than this are fetched again next run.
RECENT_DELAY = pd.Timedelta(minutes=15)
#: Symbols per request: Alpaca's page limit applies across symbols, so this only saves requests.
MAX_SYMBOLS_PER_REQUEST = 50
#: Compact a dataset's downloaded parts into one when a run leaves more than this many.
COMPACT_PARTS = 24
PART_PREFIX = "dl-"
_PART_RE = re.compile(r"^dl-(\d{6})-")
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True)
class Timeframe:
    """One supported bar interval: its store name, Alpaca's unit, bar length, window size."""

    name: str
    amount: int
    unit: str
    bar: pd.Timedelta
    window_days: int

    def to_alpaca(self) -> Any:
        """alpaca-py ``TimeFrame`` for this interval."""
        from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

        return TimeFrame(self.amount, TimeFrameUnit(self.unit))


#: Supported intervals (the store's names). Window sizes keep one request near one page
#: (10,000 bars) for a single symbol even with extended hours (up to 960 minute bars a day).
TIMEFRAMES: dict[str, Timeframe] = {
    "1Min": Timeframe("1Min", 1, "Min", pd.Timedelta(minutes=1), 7),
    "5Min": Timeframe("5Min", 5, "Min", pd.Timedelta(minutes=5), 35),
    "15Min": Timeframe("15Min", 15, "Min", pd.Timedelta(minutes=15), 100),
    "1Hour": Timeframe("1Hour", 1, "Hour", pd.Timedelta(hours=1), 366),
    "1Day": Timeframe("1Day", 1, "Day", pd.Timedelta(days=1), 3660),
}


class DownloadFailed(RetryableError):
    """The download stopped on a transient failure; completed windows are saved."""


class UnknownSymbolError(ConfigError):
    """Alpaca has no bars at all for a symbol in the requested range (or rejects it)."""


# --------------------------------------------------------------------------- user input


def parse_timeframe(text: str) -> Timeframe:
    """The ``Timeframe`` for ``--timeframe``; an unknown name is a ``ConfigError``."""
    for name, tf in TIMEFRAMES.items():
        if text.strip().lower() == name.lower():
            return tf
    raise ConfigError(
        f"--timeframe {text!r} is not supported: use one of {', '.join(TIMEFRAMES)}"
    )


def parse_symbols(values: Sequence[str]) -> list[str]:
    """Upper-cased, de-duplicated symbols from ``--symbols A,B --symbols C``."""
    out: list[str] = []
    for value in values:
        for raw in value.split(","):
            sym = raw.strip().upper()
            if not sym:
                continue
            if not is_valid_symbol(sym):
                raise ConfigError(
                    f"--symbols: {raw.strip()!r} is not a ticker symbol (letters, digits, "
                    "'.' or '-', e.g. AAPL or BRK.B)"
                )
            if sym not in out:
                out.append(sym)
    if not out:
        raise ConfigError("--symbols is empty: name at least one symbol, e.g. --symbols AAPL,MSFT")
    return out


_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_when(text: str, option: str, *, end: bool, now: pd.Timestamp) -> pd.Timestamp:
    """A ``--start``/``--end`` value as a UTC timestamp.

    ``YYYY-MM-DD`` is a New York date: ``--start`` is its midnight and ``--end`` includes the
    whole day. Times without an offset are New York time. ``now`` and ``today`` work too.
    """
    value = text.strip()
    fix = (f"{option} {text!r} is not a date or time: use YYYY-MM-DD (a New York date) or "
           "ISO 8601 such as 2025-10-01T09:30 or 2025-10-01T13:30Z")
    if value.lower() == "now":
        return now
    if value.lower() == "today":
        value = now.tz_convert(NY).strftime("%Y-%m-%d")
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(fix) from None
    if pd.isna(ts):
        raise ConfigError(fix)
    if _DATE_ONLY.match(value):
        day = ny_midnight(ts)
        return ny_midnight(ts + pd.Timedelta(days=1)) if end else day
    if ts.tzinfo is None:
        ts = ts.tz_localize(NY, nonexistent="shift_forward", ambiguous=False)
    return ts.tz_convert("UTC")


def parse_range(start: str, end: str | None, now: pd.Timestamp) -> tuple[pd.Timestamp,
                                                                          pd.Timestamp]:
    """Validated [start, end) in UTC; ``end`` defaults to (and is clipped at) ``now``."""
    t0 = parse_when(start, "--start", end=False, now=now)
    t1 = parse_when(end, "--end", end=True, now=now) if end else now
    if t0 >= now:
        raise ConfigError(f"--start {start} is in the future: Alpaca only has past bars")
    if t0 >= t1:
        raise ConfigError(
            f"--start {start} is not before --end {end or 'now'}: give a start earlier than "
            "the end (dates are inclusive New York dates)"
        )
    if t1 > now:
        logger.info("--end %s is in the future; downloading up to now", end)
        t1 = now
    return t0, t1


def parse_choice(value: str, option: str, choices: Sequence[str]) -> str:
    """``value`` lower-cased if it is one of ``choices``, else a ``ConfigError``."""
    v = value.strip().lower()
    if v not in choices:
        raise ConfigError(f"{option} {value!r} is not valid: use one of {', '.join(choices)}")
    return v


_KEY_NAMES = {"APCA_API_KEY_ID", "ALPACA_API_KEY", "ALPACA_API_KEY_ID", "API_KEY", "KEY_ID"}
_SECRET_NAMES = {"APCA_API_SECRET_KEY", "ALPACA_SECRET_KEY", "ALPACA_API_SECRET_KEY",
                 "SECRET_KEY", "API_SECRET"}


def _read_keys_file(path: Path) -> tuple[str | None, str | None]:
    if not path.is_file():
        raise ConfigError(f"--keys-file {path} does not exist: pass the file holding your keys")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--keys-file {path} is unreadable ({exc.__class__.__name__})") from None
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            logger.warning("keys file %s is readable by other users: chmod 600 it", path)
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if any("=" in ln for ln in lines):
        values: dict[str, str] = {}
        for ln in lines:
            name, _, val = ln.removeprefix("export ").partition("=")
            values[name.strip().upper()] = val.strip().strip("'\"")
        key = next((values[k] for k in _KEY_NAMES if values.get(k)), None)
        secret = next((values[k] for k in _SECRET_NAMES if values.get(k)), None)
        return key, secret
    return (lines[0] if lines else None, lines[1] if len(lines) > 1 else None)


def load_keys(keys_file: Path | None, environ: Mapping[str, str]) -> tuple[str, str]:
    """(key id, secret) from ``keys_file`` if given, else from the environment.

    The file holds either two lines (key id, then secret) or ``KEY=VALUE`` lines using the
    environment variable names. Both values are registered with the log redactor.
    """
    if keys_file is not None:
        key, secret = _read_keys_file(Path(keys_file))
        where = f"--keys-file {keys_file}"
    else:
        key, secret = environ.get(KEY_ENV), environ.get(SECRET_ENV)
        where = "the environment"
    if not key or not secret:
        raise ConfigError(
            f"missing Alpaca API key in {where}: set {KEY_ENV} and {SECRET_ENV}, or pass "
            "--keys-file FILE (two lines: key id, secret)"
        )
    REDACTOR.add(key, secret)
    return key, secret


def resolve_data_url(option: str | None, environ: Mapping[str, str]) -> str | None:
    """Market-data base URL from ``--data-url`` or ``APCA_API_DATA_URL`` (None: Alpaca's)."""
    url = option or environ.get(DATA_URL_ENV) or None
    if url is None:
        return None
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(
            f"--data-url {url!r} is not an http(s) URL: use e.g. https://data.alpaca.markets"
        )
    # alpaca-py appends /v2/... itself; a pasted ".../v2" would double it.
    return url.removesuffix("/v2")


# --------------------------------------------------------------------------- rate limiting


def _header_float(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class RateLimiter:
    """Client-side pacing for Alpaca's per-minute request budget.

    A token bucket refilled at ``per_minute / 60`` tokens a second, holding up to a tenth of
    a minute's budget (so a long download is spread evenly instead of bursting the whole
    minute's budget and then stalling). ``acquire()`` runs before every HTTP request and
    waits when needed; ``observe()`` runs after every response (``status=None`` for a
    connection error) and pauses further requests until ``X-RateLimit-Reset`` when the
    server's budget is spent or a 429 arrives (at most ``max_wait`` seconds per pause), or
    for an exponential back-off after 5xx/connection errors. Clock and sleep are injectable
    so tests run without real waiting.
    """

    def __init__(
        self,
        per_minute: float = 200.0,
        backoff: float = 1.0,
        max_wait: float = 65.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute <= 0:
            raise ConfigError("--rate-limit must be a positive number of requests per minute")
        self.backoff = float(backoff)
        self.max_wait = float(max_wait)
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self._set_rate(float(per_minute))
        self._tokens = self.capacity
        self._stamp = clock()
        self._not_before = 0.0
        self._failures = 0
        self.requests = 0
        self.throttled = 0
        self.errors = 0
        self.waited = 0.0

    def _set_rate(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 10.0)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def acquire(self) -> None:
        """Wait until a request may be sent (bucket token and any server-imposed pause)."""
        self._refill()
        wait = max(0.0, self._not_before - self._clock())
        if self._tokens < 1.0:
            wait = max(wait, (1.0 - self._tokens) / self.rate)
        if wait > 0:
            logger.debug("rate limiter: waiting %.2fs", wait)
            self._sleep(wait)
            self.waited += wait
            self._refill()
        self._tokens -= 1.0
        self.requests += 1

    def _until_reset(self, headers: Mapping[str, str]) -> float | None:
        reset = _header_float(headers, "X-RateLimit-Reset")
        if reset is None:
            return None
        return max(0.0, reset - self._wall())

    def _pause(self, seconds: float) -> None:
        self._not_before = max(self._not_before, self._clock() + min(seconds, self.max_wait))

    def observe(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Learn from a response: the server's budget, 429s, server errors."""
        limit = _header_float(headers, "X-RateLimit-Limit")
        if limit and 0 < limit < self.per_minute:
            # The server's plan is smaller than what we were told: follow it.
            self._set_rate(limit)
            self._tokens = min(self._tokens, self.capacity)
        if status == 429:
            self.throttled += 1
            self._failures += 1
            until = self._until_reset(headers)
            self._pause(until if until is not None else self.backoff * 2 ** (self._failures - 1))
            logger.info("rate limited (429); pausing %.2fs",
                        max(0.0, self._not_before - self._clock()))
            return
        if status is None or status >= 500:
            self.errors += 1
            self._failures += 1
            self._pause(self.backoff * 2 ** (self._failures - 1))
            return
        self._failures = 0
        remaining = _header_float(headers, "X-RateLimit-Remaining")
        if remaining is not None and remaining <= 0:
            until = self._until_reset(headers)
            self._pause(until if until is not None else 60.0 / self.rate)


class PacedAdapter(HTTPAdapter):
    """A requests adapter that asks the ``RateLimiter`` before each send and sets a timeout."""

    def __init__(self, limiter: RateLimiter, timeout: tuple[float, float] = (10.0, 60.0)) -> None:
        super().__init__()
        self.limiter = limiter
        self.timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send one request, paced; record the response for the limiter."""
        self.limiter.acquire()
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout  # alpaca-py sets none: a hung server would block
        try:
            response = super().send(request, **kwargs)
        except requests.RequestException:
            self.limiter.observe(None, {})
            raise
        self.limiter.observe(response.status_code, response.headers)
        return response


def make_client(key: str, secret: str, data_url: str | None,
                limiter: RateLimiter) -> StockHistoricalDataClient:
    """alpaca-py's ``StockHistoricalDataClient`` (raw JSON bars), paced by ``limiter``."""
    from alpaca.data.historical import StockHistoricalDataClient

    client = StockHistoricalDataClient(key, secret, raw_data=True, url_override=data_url)
    # The limiter waits before each retry (honouring X-RateLimit-Reset); the SDK's fixed
    # 3-second sleep would only add to it.
    client._retry_wait = 0
    adapter = PacedAdapter(limiter)
    client._session.mount("http://", adapter)
    client._session.mount("https://", adapter)
    return client


# --------------------------------------------------------------------------- coverage

Range = tuple[int, int]  # [start, end) in int64 ns UTC


def _ns(ts: pd.Timestamp) -> int:
    return int(pd.Timestamp(ts).as_unit("ns").value)


def _ts(ns: int) -> pd.Timestamp:
    return pd.Timestamp(int(ns), tz="UTC")


def merge_ranges(ranges: Sequence[Range]) -> list[Range]:
    """Sorted union of half-open ranges (touching ranges join)."""
    out: list[Range] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def subtract_ranges(want: Range, have: Sequence[Range]) -> list[Range]:
    """Parts of ``want`` not inside any of ``have`` (merged, sorted)."""
    out: list[Range] = []
    cursor, stop = want
    for a, b in merge_ranges(have):
        if b <= cursor:
            continue
        if a >= stop:
            break
        if a > cursor:
            out.append((cursor, a))
        cursor = max(cursor, b)
        if cursor >= stop:
            break
    if cursor < stop:
        out.append((cursor, stop))
    return out


def _coverage_json(ranges: Sequence[Range]) -> str:
    return json.dumps([[_ts(a).isoformat(), _ts(b).isoformat()] for a, b in merge_ranges(ranges)])


def _parse_coverage(text: bytes) -> list[Range]:
    return [(_ns(pd.Timestamp(a)), _ns(pd.Timestamp(b))) for a, b in json.loads(text)]


def dataset_path(root: Path, timeframe: str, symbol: str) -> Path:
    """The dataset folder of ``symbol`` (``<root>/<timeframe>/<SYMBOL>``)."""
    return Path(root) / timeframe / symbol.upper()


def part_files(dataset: Path) -> list[Path]:
    """Existing files of a dataset: the part files of its folder, else its single file."""
    if dataset.is_dir():
        return sorted(p for p in dataset.glob("*.parquet") if not p.name.startswith("."))
    single = dataset.with_suffix(".parquet")
    return [single] if single.is_file() else []


def _extent_end(last_ns: int, tf: Timeframe) -> int:
    if tf.name == "1Day":
        # The next New York midnight (DST days are 23 or 25 hours long).
        return _ns(ny_midnight(_ts(last_ns).tz_convert(NY) + pd.Timedelta(days=1)))
    return last_ns + _ns_delta(tf.bar)


def _ns_delta(delta: pd.Timedelta) -> int:
    return int(delta.value)


@dataclass
class StoredDataset:
    """What a dataset already holds, as far as downloading is concerned."""

    path: Path
    coverage: list[Range] = field(default_factory=list)
    feeds: set[str] = field(default_factory=set)
    adjustments: set[str] = field(default_factory=set)
    max_seq: int = 0
    parts: int = 0
    has_data: bool = False
    quarantined: list[Path] = field(default_factory=list)


def inspect_dataset(dataset: Path, tf: Timeframe) -> StoredDataset:
    """Coverage, feed and part numbering of one dataset (reads metadata, not the bars).

    A downloaded part that cannot be read (which our atomic writes never produce, but a disk
    can) is renamed to ``.corrupt-<name>`` so its range is fetched again.
    """
    info = StoredDataset(dataset)
    for f in part_files(dataset):
        m = _PART_RE.match(f.name)
        if m:
            info.max_seq = max(info.max_seq, int(m.group(1)))
        try:
            pf = pq.ParquetFile(f)
            meta = pf.schema_arrow.metadata or {}
            rows = pf.metadata.num_rows
            if b"ratchet.coverage" in meta:
                info.coverage.extend(_parse_coverage(meta[b"ratchet.coverage"]))
            elif rows:
                ts = pf.read(columns=["timestamp"]).column("timestamp")
                ts = ts.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy()
                info.coverage.append((int(ts.min()), _extent_end(int(ts.max()), tf)))
        except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
            if m:
                bad = f.with_name(f".corrupt-{f.name}")
                f.rename(bad)
                logger.warning("%s is unreadable (%s); moved it to %s and will fetch its range "
                               "again", f, exc.__class__.__name__, bad.name)
                info.quarantined.append(bad)
                continue
            raise DataError(
                f"{f} is not a readable Parquet bar file ({exc.__class__.__name__}); remove it "
                "or re-import it, then run the download again"
            ) from None
        info.parts += 1
        info.has_data = info.has_data or rows > 0
        if b"ratchet.feed" in meta:
            info.feeds.add(meta[b"ratchet.feed"].decode())
        if b"ratchet.adjustment" in meta:
            info.adjustments.add(meta[b"ratchet.adjustment"].decode())
    info.coverage = merge_ranges(info.coverage)
    return info


def has_session(a: int, b: int, tf: Timeframe) -> bool:
    """True if [a, b) can hold a bar: it overlaps an NYSE session day (any hour: pre/post
    market bars exist), or for daily bars, holds a session's New York midnight stamp."""
    start, end = _ts(a), _ts(b - 1)
    sched = sessions(start, end)
    if sched.empty:
        return False
    if tf.name != "1Day":
        return True
    stamps = pd.DatetimeIndex(sched.index).tz_localize(NY).tz_convert("UTC")
    return bool(((stamps >= start) & (stamps <= end)).any())


def regular_time_after(a: int, b: int, tf: Timeframe) -> bool:
    """True if [a, b) holds regular-session time (daily: a session's midnight stamp) that a
    bar could have filled: bars ending before it mean the source stopped early (its clock, a
    loopback replay, a delisting), not that the range is complete."""
    if b <= a:
        return False
    if tf.name == "1Day":
        return has_session(a, b, tf)
    sched = sessions(_ts(a), _ts(b - 1))
    if sched.empty:
        return False
    opens = sched["open"].array.as_unit("ns").asi8
    closes = sched["close"].array.as_unit("ns").asi8
    return bool(((np.maximum(opens, a) < np.minimum(closes, b))).any())


def split_windows(rng: Range, days: int) -> list[Range]:
    """Cut [a, b) at New York midnights every ``days`` days (aligned across symbols)."""
    a, b = rng
    out: list[Range] = []
    cursor = a
    while cursor < b:
        local_day = _ts(cursor).tz_convert(NY).tz_localize(None).normalize()
        nxt = min(b, _ns(ny_midnight(local_day + pd.Timedelta(days=days))))
        out.append((cursor, nxt))
        cursor = nxt
    return out


def complete_before(now: pd.Timestamp, tf: Timeframe) -> pd.Timestamp:
    """Bars starting before this instant are complete and past the free-plan delay."""
    settled = now - RECENT_DELAY
    if tf.name == "1Day":
        # Day d's bar is final once its extended session (until 20:00 New York) is over.
        day = (settled - pd.Timedelta(hours=20)).tz_convert(NY).tz_localize(None).normalize()
        return ny_midnight(day + pd.Timedelta(days=1))
    step = _ns_delta(tf.bar)
    ns = _ns(settled)
    return _ts(ns - ns % step)


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Chunk:
    """One request: these symbols over [start, end)."""

    symbols: tuple[str, ...]
    start: pd.Timestamp
    end: pd.Timestamp


@dataclass
class DownloadPlan:
    """What to fetch: chunks in time order, plus what each symbol already had."""

    timeframe: Timeframe
    start: pd.Timestamp
    end: pd.Timestamp
    chunks: list[Chunk]
    stored: dict[str, StoredDataset]
    missing: dict[str, list[Range]]

    @property
    def total(self) -> int:
        """Symbol-windows to fetch (the progress bar's total)."""
        return sum(len(c.symbols) for c in self.chunks)

    def up_to_date(self) -> list[str]:
        """Symbols with nothing to fetch."""
        return [s for s, m in self.missing.items() if not m]


def plan_download(
    root: Path,
    symbols: Sequence[str],
    tf: Timeframe,
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    feed: str,
    adjustment: str,
    full: bool = False,
    window_days: int | None = None,
) -> DownloadPlan:
    """Work out the missing windows of every symbol and group equal windows into requests."""
    days = window_days or tf.window_days
    stored: dict[str, StoredDataset] = {}
    missing: dict[str, list[Range]] = {}
    by_window: dict[Range, list[str]] = {}
    for sym in symbols:
        info = inspect_dataset(dataset_path(root, tf.name, sym), tf)
        for what, have, want in (("feed", info.feeds, feed), ("adjustment", info.adjustments,
                                                              adjustment)):
            other = have - {want}
            if other:
                raise ConfigError(
                    f"{sym} {tf.name} in {root} was downloaded with {what}={','.join(other)}, "
                    f"not {want}: pass --{what} {','.join(other)} or use another --out folder"
                )
        stored[sym] = info
        have = [] if full else info.coverage
        gaps = subtract_ranges((_ns(start), _ns(end)), have)
        windows = [w for g in gaps for w in split_windows(g, days) if has_session(*w, tf)]
        missing[sym] = windows
        for w in windows:
            by_window.setdefault(w, []).append(sym)
    chunks: list[Chunk] = []
    for (a, b), syms in sorted(by_window.items()):
        for i in range(0, len(syms), MAX_SYMBOLS_PER_REQUEST):
            chunks.append(Chunk(tuple(syms[i:i + MAX_SYMBOLS_PER_REQUEST]), _ts(a), _ts(b)))
    return DownloadPlan(tf, start, end, chunks, stored, missing)


# --------------------------------------------------------------------------- fetching


@dataclass
class SymbolResult:
    """What one symbol got in this run."""

    symbol: str
    bars: int = 0
    windows: int = 0
    parts: int = 0
    first: pd.Timestamp | None = None
    last: pd.Timestamp | None = None
    had_data: bool = False


@dataclass
class DownloadResult:
    """Outcome of a download run (also filled in when it stops early)."""

    symbols: dict[str, SymbolResult]
    requests: int = 0
    throttled: int = 0
    waited: float = 0.0
    chunks_done: int = 0
    chunks_total: int = 0
    unknown: dict[str, str] = field(default_factory=dict)
    compacted: list[str] = field(default_factory=list)

    @property
    def bars(self) -> int:
        """Bars fetched in this run, all symbols."""
        return sum(r.bars for r in self.symbols.values())


def bars_frame(items: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Alpaca bar JSON objects (``t o h l c v n vw``) as a store frame."""
    df = pd.DataFrame.from_records(list(items), columns=["t", "o", "h", "l", "c", "v", "n", "vw"])
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime(df["t"], utc=True, format="ISO8601"),
            "open": pd.to_numeric(df["o"], errors="coerce").astype(np.float64),
            "high": pd.to_numeric(df["h"], errors="coerce").astype(np.float64),
            "low": pd.to_numeric(df["l"], errors="coerce").astype(np.float64),
            "close": pd.to_numeric(df["c"], errors="coerce").astype(np.float64),
            "volume": pd.to_numeric(df["v"], errors="coerce").astype(np.float64),
            "trade_count": pd.to_numeric(df["n"], errors="coerce").astype(np.float64),
            "vwap": pd.to_numeric(df["vw"], errors="coerce").astype(np.float64),
        }
    )


def _api_message(exc: Exception) -> str:
    try:
        return str(exc.message)  # type: ignore[attr-defined]
    except (ValueError, KeyError, TypeError, AttributeError):
        return str(exc)[:200]


class Downloader:
    """Runs a ``DownloadPlan``: fetch each chunk, write each symbol's window as a part."""

    def __init__(
        self,
        client: StockHistoricalDataClient,
        root: Path,
        *,
        feed: str,
        adjustment: str = "raw",
        limiter: RateLimiter | None = None,
        retries: int = 4,
        drop_bad: bool = False,
        now: pd.Timestamp | None = None,
        on_chunk: Callable[[Chunk, int], None] | None = None,
    ) -> None:
        self.client = client
        self.root = Path(root)
        self.feed = feed
        self.adjustment = adjustment
        self.limiter = limiter
        self.retries = retries
        self.drop_bad = drop_bad
        self.now = now or pd.Timestamp.now(tz="UTC")
        self.on_chunk = on_chunk

    # -- one request, with retries ------------------------------------------------------

    def _request(self, chunk: Chunk, tf: Timeframe) -> dict[str, list[dict[str, Any]]]:
        from alpaca.common.exceptions import APIError
        from alpaca.data.enums import Adjustment, DataFeed
        from alpaca.data.requests import StockBarsRequest

        req = StockBarsRequest(
            symbol_or_symbols=list(chunk.symbols),
            timeframe=tf.to_alpaca(),
            start=chunk.start.to_pydatetime(),
            end=chunk.end.to_pydatetime(),
            feed=DataFeed(self.feed),
            adjustment=Adjustment(self.adjustment),
        )
        what = f"{','.join(chunk.symbols)} {chunk.start:%Y-%m-%d}..{chunk.end:%Y-%m-%d}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                raw = self.client.get_stock_bars(req)
                if not isinstance(raw, dict):
                    raise ValueError(f"unexpected response type {type(raw).__name__}")
                return raw
            except APIError as exc:
                status = exc.status_code
                if status in _RETRY_STATUS and not last:
                    logger.info("HTTP %s for %s; retrying (%d/%d)", status, what, attempt + 1,
                                self.retries)
                    self._backoff_if_no_limiter(attempt)
                    continue
                raise self._classify(exc, status, chunk, what) from None
            except requests.RequestException as exc:
                if not last:
                    logger.info("%s for %s; retrying (%d/%d)", exc.__class__.__name__, what,
                                attempt + 1, self.retries)
                    self._backoff_if_no_limiter(attempt)
                    continue
                raise DownloadFailed(
                    f"cannot reach the Alpaca data API ({exc.__class__.__name__}) while "
                    f"fetching {what}: check --data-url and the network, then re-run the same "
                    "command to resume"
                ) from None
            except (ValueError, AttributeError, KeyError, TypeError) as exc:
                if not last:
                    continue
                raise DownloadFailed(
                    f"malformed response from the Alpaca data API for {what} ({exc}); re-run "
                    "the same command to resume"
                ) from None
        raise AssertionError("unreachable")

    def _backoff_if_no_limiter(self, attempt: int) -> None:
        if self.limiter is None:
            time.sleep(min(30.0, 2.0**attempt))

    def _classify(self, exc: Exception, status: int | None, chunk: Chunk,
                  what: str) -> Exception:
        msg = _api_message(exc)
        if status == 401:
            return ConfigError(
                f"Alpaca refused the API keys (HTTP 401: {msg}): check {KEY_ENV} and "
                f"{SECRET_ENV} (or --keys-file) and --data-url"
            )
        if status == 403:
            hint = ("use --feed iex, or an --end at least 15 minutes ago"
                    if "sip" in msg.lower() or "subscription" in msg.lower()
                    else "check your market-data subscription and keys")
            return ConfigError(f"Alpaca forbids this request (HTTP 403: {msg}): {hint}")
        if status in _RETRY_STATUS:
            return DownloadFailed(
                f"Alpaca data API kept failing with HTTP {status} ({msg}) while fetching {what}; "
                "completed windows are saved: re-run the same command later to resume"
            )
        if status is not None and 400 <= status < 500:
            if "timeframe" in msg.lower():
                return ConfigError(f"Alpaca rejected the timeframe (HTTP {status}: {msg})")
            return _Rejected(status, msg)
        return DownloadFailed(f"Alpaca data API error HTTP {status} ({msg}) fetching {what}; "
                              "re-run the same command to resume")

    # -- running ---------------------------------------------------------------------

    def fetch_chunk(self, chunk: Chunk, tf: Timeframe) -> tuple[dict[str, pd.DataFrame],
                                                                dict[str, str]]:
        """Bars per symbol for ``chunk`` (a rejected symbol is isolated, not fatal)."""
        try:
            raw = self._request(chunk, tf)
        except _Rejected as rej:
            if len(chunk.symbols) == 1:
                return {}, {chunk.symbols[0]: f"HTTP {rej.status}: {rej.msg}"}
            # One bad symbol fails the whole multi-symbol request: ask one at a time.
            frames: dict[str, pd.DataFrame] = {}
            bad: dict[str, str] = {}
            for sym in chunk.symbols:
                f, b = self.fetch_chunk(Chunk((sym,), chunk.start, chunk.end), tf)
                frames.update(f)
                bad.update(b)
            return frames, bad
        lo, hi = chunk.start, chunk.end
        frames = {}
        for sym in chunk.symbols:
            items = raw.get(sym) or []
            frame = bars_frame(items)
            # Alpaca's end is inclusive; our windows are half-open.
            frame = frame[(frame["timestamp"] >= lo) & (frame["timestamp"] < hi)]
            frame = frame.sort_values("timestamp", kind="stable")
            frame = frame.drop_duplicates("timestamp", keep="last").reset_index(drop=True)
            frames[sym] = self._validated(frame, sym, chunk)
        return frames, {}

    def _validated(self, frame: pd.DataFrame, sym: str, chunk: Chunk) -> pd.DataFrame:
        if frame.empty:
            return frame
        cols = {c: frame[c].to_numpy() for c in frame.columns if c != "timestamp"}
        cols["timestamp"] = frame["timestamp"].array.as_unit("ns").asi8
        label = Path(f"{sym} bars from Alpaca {chunk.start:%Y-%m-%d}..{chunk.end:%Y-%m-%d}")
        try:
            good = validate_columns(cols, label, drop_bad=self.drop_bad)
        except DataError as exc:
            raise DataError(str(exc).replace("fix the file or ", "")) from None
        if len(good["timestamp"]) == len(frame):
            return frame
        out = pd.DataFrame({k: v for k, v in good.items() if k != "timestamp"})
        out.insert(0, "timestamp", pd.to_datetime(good["timestamp"], utc=True))
        return out

    def run(self, plan: DownloadPlan) -> DownloadResult:
        """Fetch every chunk of ``plan`` in time order, saving each window as it completes."""
        tf = plan.timeframe
        cap = _ns(complete_before(self.now, tf))
        result = DownloadResult(
            {s: SymbolResult(s, had_data=plan.stored[s].has_data) for s in plan.missing},
            chunks_total=len(plan.chunks),
        )
        seq = {s: st.max_seq for s, st in plan.stored.items()}
        pending: dict[str, list[Range]] = {s: [] for s in plan.missing}
        try:
            for chunk in plan.chunks:
                frames, rejected = self.fetch_chunk(chunk, tf)
                result.unknown.update(rejected)
                covered = (_ns(chunk.start), min(_ns(chunk.end), cap))
                n_bars = 0
                for sym in chunk.symbols:
                    if sym in rejected:
                        continue
                    frame = frames.get(sym)
                    mine = covered
                    if frame is not None and not frame.empty:
                        # Coverage ends at the last bar received when the window has
                        # session time after it: the source had nothing more *yet*.
                        data_end = _ns(frame["timestamp"].iloc[-1]) + _ns_delta(tf.bar)
                        if regular_time_after(data_end, mine[1], tf):
                            mine = (mine[0], min(mine[1], data_end))
                    if mine[1] > mine[0]:
                        pending[sym].append(mine)
                    if frame is None or frame.empty:
                        continue
                    seq[sym] += 1
                    self._write(plan, sym, frame, pending[sym], seq[sym], chunk.start)
                    pending[sym] = []
                    r = result.symbols[sym]
                    r.bars += len(frame)
                    r.parts += 1
                    first, last = frame["timestamp"].iloc[0], frame["timestamp"].iloc[-1]
                    r.first = first if r.first is None else min(r.first, first)
                    r.last = last if r.last is None else max(r.last, last)
                    n_bars += len(frame)
                for sym in chunk.symbols:
                    result.symbols[sym].windows += 1
                result.chunks_done += 1
                if self.on_chunk is not None:
                    self.on_chunk(chunk, n_bars)
            self._finish(plan, result, pending, seq)
        finally:
            if self.limiter is not None:
                result.requests = self.limiter.requests
                result.throttled = self.limiter.throttled
                result.waited = self.limiter.waited
        return result

    def _metadata(self, plan: DownloadPlan, sym: str, coverage: Sequence[Range]) -> dict[str, str]:
        return {
            "source": "alpaca",
            "feed": self.feed,
            "adjustment": self.adjustment,
            "timeframe": plan.timeframe.name,
            "symbol": sym,
            "coverage": _coverage_json(coverage),
            "downloaded_at": self.now.isoformat(),
        }

    def _write(self, plan: DownloadPlan, sym: str, frame: pd.DataFrame,
               coverage: Sequence[Range], seq: int, start: pd.Timestamp) -> Path:
        ds = dataset_path(self.root, plan.timeframe.name, sym)
        _adopt_single_file(ds)
        part = f"{PART_PREFIX}{seq:06d}-{start.tz_convert(NY):%Y%m%dT%H%M}"
        path = append_bars(ds, frame, part, metadata=self._metadata(plan, sym, coverage))
        logger.debug("wrote %s (%d bars)", path, len(frame))
        return path

    def _finish(self, plan: DownloadPlan, result: DownloadResult,
                pending: dict[str, list[Range]], seq: dict[str, int]) -> None:
        tf = plan.timeframe
        # All columns, even when empty: the store keeps only columns every part has.
        empty = bars_frame([])
        for sym, r in result.symbols.items():
            if sym in result.unknown:
                continue
            if not r.had_data and r.bars == 0:
                if plan.missing[sym]:
                    result.unknown[sym] = "no bars"
                continue
            ds = dataset_path(self.root, tf.name, sym)
            # Empty windows with session time after the newest bar are not remembered: the
            # source had no bars there yet (a later run asks again), e.g. a replay's clock.
            newest = _ns(r.last) + _ns_delta(tf.bar) if r.last is not None else max(
                (e for _, e in plan.stored[sym].coverage), default=None)
            if newest is not None:
                pending[sym] = [w for w in pending[sym]
                                if w[1] <= newest or not regular_time_after(max(w[0], newest),
                                                                             w[1], tf)]
            if pending[sym] and (r.parts or ds.is_dir()):
                # Empty windows after the last bar (weekend tail, delisted...): remember them
                # so they are not asked for again. (Not worth turning a single-file dataset
                # into a folder for.)
                seq[sym] += 1
                self._write(plan, sym, empty, pending[sym], seq[sym], _ts(pending[sym][0][0]))
                pending[sym] = []
            if r.parts and compact_dataset(ds, tf, seq[sym] + 1, self._metadata(plan, sym, [])):
                result.compacted.append(sym)


class _Rejected(UserError):
    """A 4xx from the data API that may name one bad symbol of a multi-symbol request."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(f"HTTP {status}: {msg}")
        self.status = status
        self.msg = msg


def _adopt_single_file(ds: Path) -> None:
    """Finish a half-done move of ``<SYMBOL>.parquet`` into its folder (crash between the
    store's mkdir and rename), so the file and the folder never both hold the symbol."""
    single = ds.with_suffix(".parquet")
    if single.is_file() and ds.is_dir() and not any(ds.glob("*.parquet")):
        single.rename(ds / "0000-base.parquet")


def compact_dataset(ds: Path, tf: Timeframe, seq: int, metadata: dict[str, str],
                    threshold: int = COMPACT_PARTS) -> bool:
    """Merge a folder of downloaded parts into one part once there are more than
    ``threshold``. Only folders whose parts are all ours are compacted. The merged part is
    written (atomically) before the old ones are removed, and it wins on equal timestamps, so
    a crash in between leaves duplicates of equal bars, never a loss."""
    parts = part_files(ds)
    if len(parts) <= threshold or not all(_PART_RE.match(p.name) for p in parts):
        return False
    coverage = inspect_dataset(ds, tf).coverage
    merged = read_bars(ds)
    meta = dict(metadata)
    meta["coverage"] = _coverage_json(coverage)
    new = append_bars(ds, merged, f"{PART_PREFIX}{seq:06d}-merged", metadata=meta)
    for p in parts:
        if p != new:
            p.unlink()
    logger.info("compacted %d parts of %s into %s", len(parts), ds, new.name)
    return True


@contextlib.contextmanager
def store_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on ``<root>/<interval>`` so two downloads never write the same store."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".download.lock"
    try:
        import fcntl
    except ImportError:  # not on Windows: no locking there
        yield
        return
    fh = lock.open("a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(
                f"another download is writing {folder} (lock {lock}): wait for it to finish"
            ) from None
        yield
    finally:
        fh.close()


def clean_stale_temp(root: Path, timeframe: str, symbols: Sequence[str]) -> int:
    """Remove temp files a killed download left behind (only our own part names)."""
    n = 0
    for sym in symbols:
        ds = dataset_path(root, timeframe, sym)
        if ds.is_dir():
            for tmp in ds.glob(f".{PART_PREFIX}*.tmp"):
                tmp.unlink(missing_ok=True)
                n += 1
    return n


def download(
    client: StockHistoricalDataClient,
    root: Path,
    symbols: Sequence[str],
    tf: Timeframe,
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    feed: str = "iex",
    adjustment: str = "raw",
    full: bool = False,
    window_days: int | None = None,
    limiter: RateLimiter | None = None,
    retries: int = 4,
    drop_bad: bool = False,
    now: pd.Timestamp | None = None,
    on_plan: Callable[[DownloadPlan], None] | None = None,
    on_chunk: Callable[[Chunk, int], None] | None = None,
) -> DownloadResult:
    """Plan and run a download under the store lock (see the module docstring)."""
    root = Path(root)
    with store_lock(root / tf.name):
        removed = clean_stale_temp(root, tf.name, symbols)
        if removed:
            logger.info("removed %d temp file(s) left by an interrupted download", removed)
        plan = plan_download(root, symbols, tf, start, end, feed=feed, adjustment=adjustment,
                             full=full, window_days=window_days)
        if on_plan is not None:
            on_plan(plan)
        downloader = Downloader(client, root, feed=feed, adjustment=adjustment, limiter=limiter,
                                retries=retries, drop_bad=drop_bad, now=now, on_chunk=on_chunk)
        return downloader.run(plan)


__all__ = [
    "TIMEFRAMES",
    "Chunk",
    "DownloadFailed",
    "DownloadPlan",
    "DownloadResult",
    "Downloader",
    "RateLimiter",
    "Timeframe",
    "UnknownSymbolError",
    "download",
    "load_keys",
    "make_client",
    "parse_range",
    "parse_symbols",
    "parse_timeframe",
    "plan_download",
    "resolve_data_url",
]
