"""Matplotlib charts of a run, returned as base64 PNG data URIs for a self-contained page.

Uses the object-oriented API (``matplotlib.figure.Figure``, rendered by Agg) so nothing
touches pyplot's global state or needs a display. Every chart takes its time positions from a
``TimeAxis``: bars are placed by index, so nights and weekends take no room, and ticks are
labelled in New York time.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    PercentFormatter,
)

from analyzers.report_assets import theme

NY = "America/New_York"
DPI = 144

P = ParamSpec("P")
R = TypeVar("R")


def styled(func: Callable[P, R]) -> Callable[P, R]:
    """Draw (and save) the chart inside the report's matplotlib style."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with rc_context(theme.MPL_STYLE):  # type: ignore[arg-type] # the stub wants literal keys
            return func(*args, **kwargs)

    return wrapper


def to_utc(values: Any) -> pd.DatetimeIndex:
    """Timestamps as a UTC DatetimeIndex (naive values are taken as UTC)."""
    idx = pd.DatetimeIndex(pd.to_datetime(values))
    return idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")


def figure_uri(fig: Figure) -> str:
    """Render a figure to a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.06)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class TimeAxis:
    """An x axis of bar positions over sorted unique timestamps, labelled in New York time."""

    def __init__(self, timestamps: Any) -> None:
        self.utc = to_utc(timestamps).unique().sort_values()
        self.local = self.utc.tz_convert(NY)

    def __len__(self) -> int:
        return len(self.utc)

    @property
    def intraday(self) -> bool:
        """True when bars are shorter than a day (minutes, hours)."""
        if len(self.utc) < 2:
            return False
        # Timedelta arithmetic: the index may be in ns or us (pandas 3 keeps Parquet's unit).
        return bool(self.utc.to_series().diff().median() < pd.Timedelta(hours=20))

    def positions(self, timestamps: Any) -> np.ndarray:
        """Position of the bar holding each timestamp (the last bar starting at or before it)."""
        if len(self.utc) == 0:
            return np.zeros(0, dtype=np.int64)
        pos = self.utc.searchsorted(to_utc(timestamps), side="right") - 1
        return np.clip(pos, 0, len(self.utc) - 1)

    @property
    def label(self) -> str:
        """Axis label naming the time zone and the compression of closed hours."""
        if self.intraday:
            return "New York time (US/Eastern) · trading hours only, nights and weekends omitted"
        return "Date (New York) · trading days only"

    def ticks(self, lo: int = 0, hi: int | None = None, max_ticks: int = 9
              ) -> tuple[list[int], list[str]]:
        """Tick positions and labels at natural boundaries (hour, day, month, year)."""
        local = self.local[lo:hi]
        if len(local) == 0:
            return [], []
        span = local[-1] - local[0]
        if self.intraday and span <= pd.Timedelta(days=2):
            key, fmt = local.floor("h"), "%H:%M"
        elif span <= pd.Timedelta(days=120):
            key, fmt = local.normalize(), "%b %d"
        elif span <= pd.Timedelta(days=4 * 366):
            key, fmt = local.year * 12 + local.month, "%b %Y"
        else:
            key, fmt = local.year, "%Y"
        keys = np.asarray(key)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        starts = starts[:: max(1, math.ceil(len(starts) / max_ticks))]
        labels = []
        for i, p in enumerate(starts):
            text = local[p].strftime(fmt)
            # Hour ticks carry the date when the day changes, so the reader never loses it.
            if fmt == "%H:%M" and (i == 0 or local[p].date() != local[starts[i - 1]].date()):
                text = local[p].strftime("%b %d\n%H:%M")
            labels.append(text)
        return [int(p) + lo for p in starts], labels

    def apply(self, ax: Axes, lo: int = 0, hi: int | None = None, label: bool = True,
              max_ticks: int = 9, one_line: bool = False) -> None:
        """Set ticks, limits and (optionally) the axis label on ``ax``."""
        hi_ = len(self) if hi is None else hi
        pos, labels = self.ticks(lo, hi_, max_ticks=max_ticks)
        if one_line:
            labels = [s.replace("\n", " ") for s in labels]
        ax.set_xticks(pos, labels)
        ax.set_xlim(lo - 0.5, max(hi_ - 0.5, lo + 0.5))
        if label:
            ax.set_xlabel(self.label)


def _money(x: float, _pos: Any = None) -> str:
    if abs(x) >= 1e6:
        return f"${x / 1e6:,.2f}M"
    return f"${x:,.0f}"


def _price(x: float, _pos: Any = None) -> str:
    return f"{x:,.2f}"


#: Above this ratio of the highest to the lowest value plotted, the equity chart uses a log
#: scale: a +2,000% buy-and-hold would otherwise flatten the strategy's curve to a line.
LOG_SCALE_RATIO = 3.0


def wide_range(equity: pd.DataFrame) -> bool:
    """True when account value and buy-and-hold span more than ``LOG_SCALE_RATIO``x."""
    cols = [c for c in ("value", "benchmark") if c in equity]
    vals = pd.concat([equity[c] for c in cols]).dropna() if cols else pd.Series(dtype=float)
    vals = vals[vals > 0]
    return bool(len(vals)) and float(vals.max() / vals.min()) > LOG_SCALE_RATIO


@styled
def equity_chart(equity: pd.DataFrame, axis: TimeAxis) -> str | None:
    """Account value against equal-weight buy-and-hold of the run's symbols (log scale when
    the range is wide, see ``wide_range``)."""
    if equity.empty:
        return None
    x = axis.positions(equity["timestamp"])
    fig = Figure(figsize=(11, 3.5), layout="constrained")
    ax = fig.add_subplot()
    start = float(equity["value"].iloc[0])
    ax.axhline(start, color=theme.MUTED, lw=0.8, ls=(0, (2, 3)), zorder=1)
    if "benchmark" in equity and equity["benchmark"].notna().any():
        ax.plot(x, equity["benchmark"], color=theme.BENCHMARK, lw=1.2,
                label="Buy and hold (equal weight)")
    ax.plot(x, equity["value"], color=theme.STRATEGY, lw=1.7, label="Strategy")
    if wide_range(equity):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(_money))
    fig.legend(loc="outside upper right", ncols=2)
    axis.apply(ax)
    return figure_uri(fig)


def drawdown(values: pd.Series) -> pd.Series:
    """Fractional decline from the running peak (0 at a new high, -0.1 is 10 % below it)."""
    values = pd.Series(values, dtype="float64")
    return values / values.cummax() - 1.0


@styled
def drawdown_chart(equity: pd.DataFrame, axis: TimeAxis) -> str | None:
    """Underwater curve of the account value (and of buy-and-hold, for context)."""
    if equity.empty:
        return None
    x = axis.positions(equity["timestamp"])
    dd = drawdown(equity["value"]).to_numpy() * 100
    fig = Figure(figsize=(11, 2.4), layout="constrained")
    ax = fig.add_subplot()
    if "benchmark" in equity and equity["benchmark"].notna().any():
        ax.plot(x, drawdown(equity["benchmark"]) * 100, color=theme.BENCHMARK, lw=0.9,
                label="Buy and hold")
    ax.fill_between(x, dd, 0, color=theme.LOSS, alpha=0.18, lw=0)
    ax.plot(x, dd, color=theme.LOSS, lw=1.1, label="Strategy")
    if len(dd) and dd.min() < 0:
        i = int(np.argmin(dd))
        ax.plot([x[i]], [dd[i]], "o", color=theme.LOSS, ms=4)
        ax.annotate(f"max {dd[i]:.2f}%", (x[i], dd[i]), xytext=(6, -2),
                    textcoords="offset points", fontsize=8.5, color=theme.LOSS, va="top")
    ax.set_ylim(top=max(0.0, ax.get_ylim()[1]))
    ax.yaxis.set_major_formatter(PercentFormatter(100))
    fig.legend(loc="outside upper right", ncols=2)
    axis.apply(ax)
    return figure_uri(fig)


@styled
def returns_bar_chart(returns: pd.Series, fmt: str = "%b %d") -> str | None:
    """Bars of period returns (fractions) indexed by period start, green up and red down."""
    if returns.empty:
        return None
    fig = Figure(figsize=(11, 2.4), layout="constrained")
    ax = fig.add_subplot()
    vals = returns.to_numpy(dtype="float64") * 100
    colours = [theme.GAIN if v >= 0 else theme.LOSS for v in vals]
    x = np.arange(len(vals))
    ax.bar(x, vals, color=colours, width=0.72)
    ax.axhline(0, color=theme.MUTED, lw=0.8)
    step = max(1, math.ceil(len(vals) / 16))
    ax.set_xticks(x[::step], [pd.Timestamp(t).strftime(fmt) for t in returns.index[::step]])
    # A few days would make huge bars: keep room for at least 15 and centre them.
    slots = max(len(vals), 15)
    left = (slots - len(vals)) / 2
    ax.set_xlim(-0.6 - left, len(vals) - 0.4 + left)
    ax.grid(axis="x", visible=False)
    ax.yaxis.set_major_formatter(PercentFormatter(100))
    if len(vals) <= 31:
        for xi, v in zip(x, vals, strict=True):
            ax.annotate(f"{v:+.2f}%", (xi, v), xytext=(0, 3 if v >= 0 else -3),
                        textcoords="offset points", ha="center",
                        va="bottom" if v >= 0 else "top", fontsize=7.5, color=theme.MUTED)
        ax.margins(y=0.18)
    return figure_uri(fig)


def _legend_handles(reasons: Sequence[str], with_stop: bool) -> list[Line2D]:
    handles = [Line2D([], [], color=theme.PRICE, lw=1.1, label="close")]
    if with_stop:
        handles.append(Line2D([], [], color=theme.STOP_LINE, lw=1.2, label="stop level"))
    if reasons:
        handles.append(Line2D([], [], color=theme.ENTRY, marker="^", ls="", ms=7,
                              label="entry"))
    handles += [
        Line2D([], [], color=theme.reason_colour(r), marker="v", ls="", ms=7, label=f"exit: {r}")
        for r in reasons
    ]
    return handles


def _draw_symbol(ax: Axes, prices: pd.DataFrame, trades: pd.DataFrame, axis: TimeAxis,
                 shade: bool = True, marker_size: float = 42) -> None:
    """Close, stop step line and trade markers of one symbol on ``ax``."""
    x = axis.positions(prices["timestamp"])
    ax.plot(x, prices["close"], color=theme.PRICE, lw=0.9, zorder=2)
    ax.step(x, prices["stop"], where="post", color=theme.STOP_LINE, lw=1.1, zorder=3)
    if trades.empty:
        return
    xin, xout = axis.positions(trades["entry_time"]), axis.positions(trades["exit_time"])
    if shade:
        for a, b in zip(xin, xout, strict=True):
            ax.axvspan(a, b, color=theme.STRATEGY, alpha=0.06, lw=0, zorder=0)
    ax.scatter(xin, trades["entry_price"], marker="^", s=marker_size, color=theme.ENTRY,
               edgecolors="white", linewidths=0.6, zorder=5)
    ax.scatter(xout, trades["exit_price"], marker="v", s=marker_size,
               color=[theme.reason_colour(r) for r in trades["exit_reason"]],
               edgecolors="white", linewidths=0.6, zorder=5)


@styled
def trades_chart(prices: pd.DataFrame, trades: pd.DataFrame, symbols: Sequence[str],
                 axis: TimeAxis) -> str | None:
    """One panel per symbol: close, the stop level as a step line, entries and exits."""
    if not symbols or prices.empty:
        return None
    fig = Figure(figsize=(11, 0.7 + 2.3 * len(symbols)), layout="constrained")
    axes = fig.subplots(len(symbols), 1, sharex=True, squeeze=False)[:, 0]
    has_stop = bool(prices["stop"].notna().any())
    for ax, sym in zip(axes, symbols, strict=True):
        p = prices[prices["symbol"] == sym].sort_values("timestamp")
        t = trades[trades["symbol"] == sym]
        # Dense panels: smaller markers, and no shading (it would turn into stripes).
        dense = len(t) > 60
        _draw_symbol(ax, p, t, axis, shade=not dense, marker_size=22 if dense else 42)
        ax.set_title(f"{sym}  ·  {len(t)} trade{'s' if len(t) != 1 else ''}", pad=4)
        ax.yaxis.set_major_formatter(FuncFormatter(_price))
        axis.apply(ax, label=ax is axes[-1])
    reasons = sorted(trades["exit_reason"].astype(str).unique()) if not trades.empty else []
    fig.legend(handles=_legend_handles(reasons, has_stop), loc="outside upper right",
               ncols=3 + len(reasons))
    return figure_uri(fig)


@styled
def trade_closeup(prices: pd.DataFrame, trade: pd.Series) -> str | None:
    """One trade with some bars either side: close, stop, entry and exit."""
    p = prices[prices["symbol"] == trade["symbol"]].sort_values("timestamp")
    if p.empty:
        return None
    full = TimeAxis(p["timestamp"])
    i, j = full.positions([trade["entry_time"], trade["exit_time"]])
    pad = max(12, (j - i) // 2)
    lo, hi = max(0, i - pad), min(len(full), j + pad + 1)
    window = p.iloc[lo:hi]
    axis = TimeAxis(window["timestamp"])
    fig = Figure(figsize=(5.6, 2.9), layout="constrained")
    ax = fig.add_subplot()
    _draw_symbol(ax, window, trade.to_frame().T, axis, marker_size=70)
    ax.yaxis.set_major_formatter(FuncFormatter(_price))
    axis.apply(ax, label=False, max_ticks=4, one_line=True)
    ax.tick_params(axis="x", labelsize=7.5)
    return figure_uri(fig)


@styled
def trade_returns_chart(trades: pd.DataFrame) -> str | None:
    """Histogram of trade returns (%), stacked by exit reason."""
    if trades.empty:
        return None
    returns = trades["return_pct"].to_numpy(dtype="float64") * 100
    reasons = sorted(trades["exit_reason"].astype(str).unique())
    groups = [returns[trades["exit_reason"].astype(str).to_numpy() == r] for r in reasons]
    bins = np.histogram_bin_edges(returns, bins=int(np.clip(len(returns) // 3, 8, 30)))
    fig = Figure(figsize=(5.6, 2.9), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(groups, bins=bins.tolist(), stacked=True,
            color=[theme.reason_colour(r) for r in reasons], label=reasons, edgecolor="white",
            linewidth=0.6)
    ax.axvline(0, color=theme.MUTED, lw=0.8, ls=(0, (2, 3)))
    ax.xaxis.set_major_formatter(PercentFormatter(100))
    ax.set_xlabel("return per trade")
    ax.set_ylabel("trades")
    ax.grid(axis="x", visible=False)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(loc="outside upper right", ncols=len(reasons))
    return figure_uri(fig)


def shared_time_axis(frames: Sequence[pd.DataFrame]) -> TimeAxis | None:
    """A common time axis for several equity curves, or None when they cannot share one.

    Runs share an axis when all are intraday or all daily and their periods overlap; a
    minute run next to a years-long daily run would be a sliver on a shared axis.
    """
    frames = [f for f in frames if not f.empty]
    if not frames:
        return None
    axes = [TimeAxis(f["timestamp"]) for f in frames]
    if len({a.intraday for a in axes}) > 1:
        return None
    latest_start = max(a.utc[0] for a in axes)
    earliest_end = min(a.utc[-1] for a in axes)
    if latest_start > earliest_end:
        return None
    return TimeAxis(pd.concat([f["timestamp"] for f in frames], ignore_index=True))


@styled
def comparison_chart(series: Sequence[tuple[str, pd.DataFrame]],
                     benchmarks: Sequence[tuple[str, pd.DataFrame]]) -> str | None:
    """Overlaid equity curves of several runs, each as % return from its start.

    On a shared time axis when the runs overlap in time (with the buy-and-hold curves
    dashed); otherwise against the share of each run's bars elapsed.
    """
    if all(eq.empty for _, eq in series):
        return None
    axis = shared_time_axis([eq for _, eq in series])
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.axhline(0, color=theme.MUTED, lw=0.8, ls=(0, (2, 3)))

    def xs(eq: pd.DataFrame) -> np.ndarray:
        if axis is not None:
            return axis.positions(eq["timestamp"])
        return np.linspace(0.0, 100.0, len(eq)) if len(eq) > 1 else np.zeros(len(eq))

    if axis is not None:
        for label, eq in benchmarks:
            if eq.empty or eq["benchmark"].isna().all():
                continue
            b = eq["benchmark"].to_numpy(dtype="float64")
            ax.plot(xs(eq), (b / b[0] - 1) * 100, color=theme.BENCHMARK, lw=1.0,
                    ls=(0, (4, 2)), label=label)
    for i, (label, eq) in enumerate(series):
        if eq.empty:
            continue
        v = eq["value"].to_numpy(dtype="float64")
        ax.plot(xs(eq), (v / v[0] - 1) * 100, color=theme.run_colour(i), lw=1.6, label=label)
    ax.yaxis.set_major_formatter(PercentFormatter(100))
    ax.set_ylabel("return since start")
    if axis is not None:
        axis.apply(ax)
    else:
        ax.set_xlim(0, 100)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.0f}%"))
        ax.set_xlabel("share of each run's bars elapsed (the runs cover different periods "
                      "or bar sizes)")
    handles, _ = ax.get_legend_handles_labels()
    fig.legend(loc="outside upper right", ncols=min(4, len(handles)))
    return figure_uri(fig)
