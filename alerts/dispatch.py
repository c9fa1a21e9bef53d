"""Send alert events through Apprise, off the trading thread.

One worker thread per alert URL, each with its own bounded queue, so a slow or dead endpoint
delays only its own messages. ``emit`` (called on the trading thread) only filters by level
and puts the event on the queues: it never blocks, never raises, never does I/O.

Each worker: take an event, wait ``gather`` seconds for the rest of a burst (a bar's fills
arrive together), respect ``min_interval`` between messages (the rate limit: whatever queued
meanwhile joins the next message), send with a timeout, retry with exponential backoff.
A failing endpoint is logged once (then at debug level) and once more when it recovers.

Alert URLs carry tokens and passwords: every secret-looking part is registered with
``ratchet.common.logs.REDACTOR``; logs name an endpoint by its scheme and number only
(``json #1``). Apprise's own log records are lowered to DEBUG (the debug log file, redacted).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from alerts.events import LEVELS, AlertEvent, Category
from ratchet.common.errors import ConfigError
from ratchet.common.logs import REDACTOR

logger = logging.getLogger(__name__)

#: (title, body, category) -> delivered?
Notifier = Callable[[str, str, Category], bool]

_STOP = object()
_HOSTS_NOT_SECRET = ("localhost",)


class AlertURLError(ConfigError):
    """An alert URL Apprise cannot use (the message never contains the URL)."""


def _looks_like_host(host: str) -> bool:
    return "." in host or ":" in host or host in _HOSTS_NOT_SECRET


_HOSTNAME = re.compile(r"^(?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]+$")


def _plain_value(value: str) -> bool:
    """A query value that is a host name, an IP address or a short word (``smtp=127.0.0.1``,
    ``mode=starttls``): not a secret, and redacting it would mangle unrelated text (the
    endpoint written in the state file)."""
    return bool(_HOSTNAME.match(value)) or (value.isalpha() and len(value) <= 12)


def register_secrets(url: str) -> None:
    """Register every part of ``url`` that may be a credential with the log redactor.

    Apprise puts tokens in any slot (``slack://TokenA/TokenB/TokenC``: the first is the
    "host"), so user, password, a dot-less host, every path segment, query value and the
    fragment are treated as secrets; the whole URL too.
    """
    parts: list[str] = [url]
    try:
        split = urlsplit(url)
    except ValueError:
        REDACTOR.add(*parts)
        return
    netloc = split.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    if userinfo:
        user, _, password = userinfo.partition(":")
        parts += [user, unquote(user)]
        REDACTOR.add(password, unquote(password))  # any length the redactor takes
    host = hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport
    if host and not _looks_like_host(host):
        parts.append(host)
    parts += [seg for seg in split.path.split("/") if seg]
    parts += [unquote(seg) for seg in split.path.split("/") if seg]
    parts += [v for _, v in parse_qsl(split.query, keep_blank_values=False)
              if not _plain_value(v)]
    if split.fragment:
        parts.append(split.fragment)
    REDACTOR.add(*(p for p in parts if p and len(p) >= 6))


def scheme_of(url: str) -> str:
    """The scheme of an alert URL (``json``, ``mailto``, ``slack``...), lower case."""
    return url.split("://", 1)[0].lower() if "://" in url else "?"


def split_urls(values: Iterable[str]) -> list[str]:
    """Alert URLs from flags / a config list / an environment variable (space separated)."""
    out: list[str] = []
    for value in values:
        out += [u for u in str(value).split() if u]
    return out


@dataclass(frozen=True)
class DispatchConfig:
    """Timing of the alert workers (the defaults suit chat services and e-mail)."""

    timeout: float = 10.0          # seconds per attempt (connect and read)
    retries: int = 3               # attempts after the first
    backoff: float = 2.0           # first retry after this, doubling
    max_backoff: float = 60.0
    gather: float = 0.5            # wait this long after an event for the rest of a burst
    min_interval: float = 2.0      # at most one message per endpoint this often
    max_batch: int = 50            # events in one message (the rest: the next message)
    max_queue: int = 1000          # events waiting per endpoint; beyond: dropped, counted


def _apprise_notifier(url: str, timeout: float, label: str) -> Notifier:
    """A notifier for one Apprise URL (``AlertURLError`` if Apprise cannot use it)."""
    import apprise

    asset = apprise.AppriseAsset(app_id="ratchet", app_desc="ratchet trading bot",
                                 storage_mode="memory")  # nothing written to disk
    plugin = apprise.Apprise.instantiate(url, asset=asset, suppress_exceptions=True)
    if plugin is None:
        raise AlertURLError(
            f"alert URL {label} is not a URL Apprise can send to (scheme "
            f"{scheme_of(url)!r}): see https://github.com/caronc/apprise/wiki for the forms")
    plugin.socket_connect_timeout = timeout
    plugin.socket_read_timeout = timeout
    client = apprise.Apprise(asset=asset)
    client.add(plugin)
    types = {Category.PROBLEM: apprise.NotifyType.WARNING,
             Category.FILL: apprise.NotifyType.SUCCESS,
             Category.INFO: apprise.NotifyType.INFO}

    def notify(title: str, body: str, category: Category) -> bool:
        return bool(client.notify(body=body or title, title=title,
                                  notify_type=types.get(category, apprise.NotifyType.INFO)))

    return notify


class _QuietApprise(logging.Filter):
    """Apprise logs every failed attempt as a warning: keep those in the debug log only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_apprise_log = logging.getLogger("apprise")
if not any(isinstance(f, _QuietApprise) for f in _apprise_log.filters):
    _apprise_log.addFilter(_QuietApprise())


def format_batch(events: Sequence[AlertEvent], prefix: str) -> tuple[str, str, Category]:
    """(title, body, category) of one message for ``events`` (a burst becomes one)."""
    worst = Category.PROBLEM if any(e.category == Category.PROBLEM for e in events) else \
        Category.FILL if any(e.category == Category.FILL for e in events) else Category.INFO
    if len(events) == 1:
        e = events[0]
        return f"{prefix}{e.title}", e.body or e.title, worst
    counts: dict[str, int] = {}
    for e in events:
        counts[e.category.value] = counts.get(e.category.value, 0) + 1
    what = ", ".join(f"{n} {c}{'s' if n > 1 else ''}" for c, n in sorted(counts.items()))
    return f"{prefix}{len(events)} events ({what})", "\n".join(e.line() for e in events), worst


class _Endpoint(threading.Thread):
    """One alert URL: its queue, rate limit, retries and failure state."""

    def __init__(self, label: str, notify: Notifier, cfg: DispatchConfig, prefix: str,
                 on_sent: Callable[[str, list[AlertEvent], bool], None] | None) -> None:
        super().__init__(name=f"alerts-{label}", daemon=True)
        self.label = label
        self.notify = notify
        self.cfg = cfg
        self.prefix = prefix
        self.on_sent = on_sent
        self.q: queue.Queue[Any] = queue.Queue(maxsize=cfg.max_queue)
        self.failing = False
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._next_allowed = 0.0
        self._closing = threading.Event()
        self._deadline = float("inf")

    # ------------------------------------------------------------------ trading thread

    def put(self, event: AlertEvent) -> None:
        try:
            self.q.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                logger.warning("alerts to %s are %d behind: dropping new ones until it catches "
                               "up", self.label, self.cfg.max_queue)

    # ------------------------------------------------------------------ worker thread

    def _sleep(self, seconds: float) -> None:
        # short naps: close() may bring the deadline forward while we wait
        end = time.monotonic() + max(0.0, seconds)
        while (left := min(end, self._deadline) - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))

    def run(self) -> None:
        stop = False
        while not stop:
            item = self.q.get()
            if item is _STOP:
                return
            batch: list[AlertEvent] = [item]
            wait_until = max(time.monotonic() + self.cfg.gather, self._next_allowed)
            while len(batch) < self.cfg.max_batch:
                left = wait_until - time.monotonic()
                if self._closing.is_set():
                    left = 0.0
                try:
                    more = self.q.get(timeout=left) if left > 0 else self.q.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                batch.append(more)
            self._send(batch)
            self._next_allowed = time.monotonic() + self.cfg.min_interval
            if self._closing.is_set() and time.monotonic() >= self._deadline:
                return
        # closing: what is still queued goes out in one last message if time allows
        rest = []
        while True:
            try:
                more = self.q.get_nowait()
            except queue.Empty:
                break
            if more is not _STOP:
                rest.append(more)
        if rest and time.monotonic() < self._deadline:
            self._send(rest)

    def _send(self, batch: list[AlertEvent]) -> None:
        title, body, category = format_batch(batch, self.prefix)
        attempts = 1 + (0 if self.failing else self.cfg.retries)
        delay = self.cfg.backoff
        ok = False
        error = ""
        for attempt in range(attempts):
            if attempt:
                if self._closing.is_set() and time.monotonic() + delay > self._deadline:
                    break
                self._sleep(delay)
                delay = min(delay * 2, self.cfg.max_backoff)
            try:
                ok = self.notify(title, body, category)
                error = "" if ok else "not delivered"
            except Exception as exc:  # noqa: BLE001 - any failure of a plugin is "not sent"
                ok, error = False, f"{type(exc).__name__}: {exc}"
            if ok:
                break
        if ok:
            self.sent += 1
            if self.failing:
                logger.warning("alerts to %s are delivered again", self.label)
            self.failing = False
        else:
            self.failed += 1
            if not self.failing:
                logger.warning("alert to %s failed (%s) after %d attempts; it is retried with "
                               "each new alert, failures logged at debug level from now on",
                               self.label, REDACTOR.redact(error), attempts)
            else:
                logger.debug("alert to %s failed again (%s)", self.label,
                             REDACTOR.redact(error))
            self.failing = True
        if self.on_sent is not None:
            self.on_sent(self.label, batch, ok)

    def close(self, deadline: float) -> None:
        self._deadline = deadline
        self._closing.set()
        with contextlib.suppress(queue.Full):  # full: the worker stops at the deadline
            self.q.put_nowait(_STOP)


class AlertDispatcher:
    """The ``AlertSink`` that sends through Apprise: one worker thread per URL.

    ``notifiers`` (tests): ready-made ``(label, notifier)`` pairs instead of URLs.
    """

    def __init__(self, urls: Sequence[str] = (), level: str = "all", prefix: str = "ratchet: ",
                 config: DispatchConfig | None = None,
                 notifiers: Sequence[tuple[str, Notifier]] = (),
                 on_sent: Callable[[str, list[AlertEvent], bool], None] | None = None) -> None:
        if level not in LEVELS:
            raise ConfigError(f"--alert-level {level!r}: use one of {', '.join(LEVELS)}")
        self.level = level
        self.categories = LEVELS[level]
        self.config = cfg = config or DispatchConfig()
        pairs = list(notifiers)
        for i, url in enumerate(urls, 1):
            register_secrets(url)
            label = f"{scheme_of(url)} #{i}"
            pairs.append((label, _apprise_notifier(url, cfg.timeout, label)))
        self.endpoints = [_Endpoint(label, fn, cfg, prefix, on_sent) for label, fn in pairs]
        self._started = False

    @property
    def labels(self) -> list[str]:
        """``json #1``, ``mailto #2``: how logs and the console name the endpoints."""
        return [e.label for e in self.endpoints]

    def start(self) -> AlertDispatcher:
        """Start the worker threads."""
        if not self._started:
            for e in self.endpoints:
                e.start()
            self._started = True
        return self

    def emit(self, event: AlertEvent) -> None:
        """Queue ``event`` for every endpoint if its category is wanted (never blocks)."""
        if event.category not in self.categories:
            return
        for e in self.endpoints:
            e.put(event)

    def close(self, timeout: float = 10.0) -> dict[str, int]:
        """Send what is queued (up to ``timeout`` seconds in all), stop the workers.

        A worker stuck on a hanging endpoint is left behind (daemon thread): the process is
        never held up by an alert. Returns the counts of sent / failed / dropped messages.
        """
        deadline = time.monotonic() + timeout
        if self._started:
            for e in self.endpoints:
                e.close(deadline)
            for e in self.endpoints:
                e.join(max(0.0, deadline - time.monotonic()))
        stuck = [e.label for e in self.endpoints if e.is_alive()]
        left = sum(e.q.qsize() for e in self.endpoints)
        if stuck or left:
            logger.warning("alerts: %d not delivered at exit (%s still busy)", left,
                           ", ".join(stuck) or "none")
        return {"sent": sum(e.sent for e in self.endpoints),
                "failed": sum(e.failed for e in self.endpoints),
                "dropped": sum(e.dropped for e in self.endpoints) + left}

    def send_now(self, event: AlertEvent) -> dict[str, bool]:
        """Send one event to every endpoint synchronously, without retries (``alert-test``)."""
        out: dict[str, bool] = {}
        for e in self.endpoints:
            title, body, category = format_batch([event], e.prefix)
            try:
                out[e.label] = bool(e.notify(title, body, category))
            except Exception as exc:  # noqa: BLE001 - reported as not delivered
                logger.debug("alert-test %s: %s", e.label, REDACTOR.redact(str(exc)))
                out[e.label] = False
        return out
