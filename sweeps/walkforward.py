"""Walk-forward windows: train on one span, test the chosen cell on the span after it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ratchet.common.errors import ConfigError

_SPAN = re.compile(r"^\s*(\d+)\s*([DWMY])\s*$", re.IGNORECASE)


def parse_span(text: str) -> pd.DateOffset:
    """``12M`` -> 12 months; units D (calendar days), W, M, Y."""
    m = _SPAN.match(text)
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"--walk-forward span {text!r}: write a number and D, W, M or Y "
                          "(e.g. 12M/3M)")
    n, unit = int(m.group(1)), m.group(2).upper()
    return {"D": pd.DateOffset(days=n), "W": pd.DateOffset(weeks=n),
            "M": pd.DateOffset(months=n), "Y": pd.DateOffset(years=n)}[unit]


def parse_walk_forward(text: str) -> tuple[pd.DateOffset, pd.DateOffset]:
    """``TRAIN/TEST`` such as ``12M/3M``."""
    if text.count("/") != 1:
        raise ConfigError(f"--walk-forward {text!r}: write TRAIN/TEST, e.g. 12M/3M")
    train, test = text.split("/")
    return parse_span(train), parse_span(test)


@dataclass(frozen=True)
class Window:
    """One walk-forward step; times are UTC nanoseconds, ends exclusive."""

    index: int
    train_start: int
    train_end: int
    test_start: int
    test_end: int

    def describe(self) -> dict[str, str]:
        """ISO times for tables and JSON."""
        def iso(ns: int) -> str:
            return pd.Timestamp(ns, tz="UTC").isoformat()
        return {"train_start": iso(self.train_start), "train_end": iso(self.train_end),
                "test_start": iso(self.test_start), "test_end": iso(self.test_end)}


def make_windows(first_ns: int, last_ns: int, train: pd.DateOffset, test: pd.DateOffset,
                 anchored: bool) -> list[Window]:
    """Rolling (or anchored) windows over [first, last]; the last test span may be short."""
    first = pd.Timestamp(first_ns, tz="UTC")
    last = pd.Timestamp(last_ns, tz="UTC")
    out: list[Window] = []
    train_start = first
    train_end = first + train
    while train_end <= last:
        test_end = min(train_end + test, last + pd.Timedelta(1, "ns"))
        out.append(Window(len(out), train_start.value, train_end.value, train_end.value,
                          test_end.value))
        train_end = train_end + test
        if not anchored:
            train_start = train_start + test
    if not out:
        raise ConfigError(
            f"--walk-forward: the data ({first.date()} to {last.date()}) is shorter than one "
            "training span plus a test span; use shorter spans or more data"
        )
    return out


def choose(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The best qualified training row (ties: the first by parameters, deterministic)."""
    ok = [r for r in rows if r.get("qualified") and r.get("objective") is not None]
    if not ok:
        return None
    return sorted(ok, key=lambda r: (-float(r["objective"]), str(r["params"])))[0]
