"""Download bars from Alpaca's market-data API into the Parquet bar store, incrementally.

The pieces: ``feeds/download_plan.py`` decides what to fetch (pure), ``feeds/parts.py`` names,
inspects, compacts and locks the part files, ``brokers/alpaca/transport.py`` is the HTTP
transport shared with the live path (keys, throttle, alpaca-py client, failure classes), and
``ratchet/commands/data.py`` parses the flags and prints. This module runs a plan: fetch, validate,
write each window as it completes.

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
- **Rate limits.** ``brokers.alpaca.throttle.RateLimiter`` (a token bucket) paces requests
  (``--rate-limit`` per minute, Alpaca's free plan allows 200),
  ``X-RateLimit-Remaining``/``X-RateLimit-Reset`` are honoured (we wait for the reset when the
  budget is spent or a 429 arrives), 5xx and connection errors back off exponentially, and
  every request has a timeout (the shared transport, ``brokers/alpaca/transport.py``).
  alpaca-py's own fixed 3-second retry sleep is turned off because the limiter does the
  waiting.
- **Recent bars.** A bar is recorded as covered only once it is complete and older than the
  15-minute delay of Alpaca's free plan, so a download during the session is finished by the
  next run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import requests

from brokers.alpaca.credentials import ENV_KEY_ID, ENV_SECRET, Credentials
from brokers.alpaca.throttle import RateLimiter
from brokers.alpaca.transport import (
    ReadFailure,
    ThrottledSession,
    api_message,
    api_status,
    classify_read_error,
    data_client,
    is_retryable_status,
)
from feeds.coverage import NY
from feeds.download_plan import (
    Chunk,
    DownloadPlan,
    Range,
    Timeframe,
    complete_before,
    from_ns,
    make_plan,
    ns_delta,
    regular_time_after,
    to_ns,
)
from feeds.parts import (
    PART_PREFIX,
    adopt_single_file,
    clean_stale_temp,
    compact_dataset,
    coverage_json,
    dataset_path,
    inspect_dataset,
    store_lock,
)
from feeds.store import append_bars, validate_columns
from ratchet.common.errors import ConfigError, DataError, RetryableError, UserError

if TYPE_CHECKING:
    from alpaca.data.historical import StockHistoricalDataClient

logger = logging.getLogger(__name__)

#: (connect, read) seconds per request: alpaca-py sets none, a hung server would block.
TIMEOUT = (10.0, 60.0)


class DownloadFailed(RetryableError):
    """The download stopped on a transient failure; completed windows are saved."""


class UnknownSymbolError(ConfigError):
    """Alpaca has no bars at all for a symbol in the requested range (or rejects it)."""


def make_client(credentials: Credentials, data_url: str | None,
                limiter: RateLimiter) -> StockHistoricalDataClient:
    """alpaca-py's ``StockHistoricalDataClient`` (raw JSON bars) on the shared transport,
    paced by ``limiter``. The SDK's retry of 429/504 GETs stays on (reads are idempotent),
    without its fixed 3-second sleep: the limiter waits, honouring X-RateLimit-Reset."""
    return data_client(credentials, data_url, ThrottledSession(TIMEOUT, limiter),
                       raw_data=True, sdk_retry=True)


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
    """Read what each symbol's dataset covers, then plan the missing windows (``make_plan``)."""
    stored = {sym: inspect_dataset(dataset_path(root, tf.name, sym), tf) for sym in symbols}
    return make_plan(stored, tf, start, end, feed=feed, adjustment=adjustment, full=full,
                     window_days=window_days, where=root)


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
                status = api_status(exc)
                if classify_read_error(exc) is ReadFailure.RETRYABLE and not last:
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
        """The named failure (``ratchet/common/errors.py``) of a failed bars request."""
        msg = api_message(exc)
        failure = classify_read_error(exc)
        if failure is ReadFailure.AUTH:
            return ConfigError(
                f"Alpaca refused the API keys (HTTP 401: {msg}): check {ENV_KEY_ID} and "
                f"{ENV_SECRET} (or --keys-file) and --data-url"
            )
        if failure is ReadFailure.FORBIDDEN:
            hint = ("use --feed iex, or an --end at least 15 minutes ago"
                    if "sip" in msg.lower() or "subscription" in msg.lower()
                    else "check your market-data subscription and keys")
            return ConfigError(f"Alpaca forbids this request (HTTP 403: {msg}): {hint}")
        if is_retryable_status(status):
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
        cap = to_ns(complete_before(self.now, tf))
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
                covered = (to_ns(chunk.start), min(to_ns(chunk.end), cap))
                n_bars = 0
                for sym in chunk.symbols:
                    if sym in rejected:
                        continue
                    frame = frames.get(sym)
                    mine = covered
                    if frame is not None and not frame.empty:
                        # Coverage ends at the last bar received when the window has
                        # session time after it: the source had nothing more *yet*.
                        data_end = to_ns(frame["timestamp"].iloc[-1]) + ns_delta(tf.bar)
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
            "coverage": coverage_json(coverage),
            "downloaded_at": self.now.isoformat(),
        }

    def _write(self, plan: DownloadPlan, sym: str, frame: pd.DataFrame,
               coverage: Sequence[Range], seq: int, start: pd.Timestamp) -> Path:
        ds = dataset_path(self.root, plan.timeframe.name, sym)
        adopt_single_file(ds)
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
            newest = to_ns(r.last) + ns_delta(tf.bar) if r.last is not None else max(
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
                self._write(plan, sym, empty, pending[sym], seq[sym], from_ns(pending[sym][0][0]))
                pending[sym] = []
            if r.parts and compact_dataset(ds, tf, seq[sym] + 1, self._metadata(plan, sym, [])):
                result.compacted.append(sym)


class _Rejected(UserError):
    """A 4xx from the data API that may name one bad symbol of a multi-symbol request."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(f"HTTP {status}: {msg}")
        self.status = status
        self.msg = msg


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
    "Chunk",
    "DownloadFailed",
    "DownloadPlan",
    "DownloadResult",
    "Downloader",
    "UnknownSymbolError",
    "download",
    "make_client",
    "plan_download",
]
