"""Alerts: tell the user what the bot did, where the user is (Slack, e-mail, ntfy, ...).

The trading path knows only ``AlertSink.emit(AlertEvent)`` (``alerts.events``); the default
sink does nothing. ``alerts.dispatch.AlertDispatcher`` sends through Apprise from its own
threads (queue, timeout, retries with backoff, rate limit that coalesces bursts), so a slow or
dead endpoint never delays an order. ``alerts.sources`` turns what a paper session already
records (audit rows, stream status, the state file) into events.
"""

from alerts.events import AlertEvent, AlertSink, Category, NullSink

__all__ = ["AlertEvent", "AlertSink", "Category", "NullSink"]
