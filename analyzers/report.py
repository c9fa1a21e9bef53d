"""A self-contained HTML report over one or more run folders.

    from analyzers.report import write_report
    write_report(["runs/20251124-093000-backtest"])      # -> runs/.../report.html

The page holds the stats, equity against buy-and-hold, drawdown, monthly (and, for short
runs, daily) returns, trades marked on price with the stop level, the exit-reason breakdown,
close-ups of the best and worst trade and the trade list; several runs get a comparison table
and overlaid equity curves first. Charts are PNGs embedded as data URIs and the CSS is inline,
so the file opens offline and can be mailed around. Times are shown in New York time.

The pure pandas helpers (``period_returns``, ``monthly_table``, ``exit_breakdown``,
``most_traded``, ``format_stat``) are public so the notebook and tests can use them.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from analyzers.report_assets import charts, theme
from analyzers.report_assets.charts import NY, TimeAxis, drawdown, to_utc
from analyzers.runfolder import Run, latest_run, load_run
from ratchet.common.atomic import write_text_atomic
from ratchet.common.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "build_report", "check_run", "drawdown", "exit_breakdown", "format_stat", "monthly_table",
    "most_traded", "period_returns", "resolve_run_path", "write_report",
]  # fmt: skip

#: Columns the report reads, per run-folder file (docs/CONTRACTS.md, "Run folder").
REQUIRED_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "trades.parquet": ("trades", ("symbol", "entry_time", "exit_time", "entry_price",
                                  "exit_price", "qty", "pnl", "return_pct", "exit_reason",
                                  "bars_held")),
    "equity.parquet": ("equity", ("timestamp", "value", "benchmark")),
    "prices.parquet": ("prices", ("timestamp", "symbol", "close", "stop")),
}

#: stats.json key -> (label, format kind), in display order.
STATS: dict[str, tuple[str, str]] = {
    "total_return": ("Total return", "signed_pct"),
    "cagr": ("CAGR", "signed_pct"),
    "sharpe": ("Sharpe ratio", "ratio"),
    "sortino": ("Sortino ratio", "ratio"),
    "max_drawdown": ("Max drawdown", "drawdown"),
    "max_drawdown_duration_days": ("Longest drawdown", "days"),
    "win_rate": ("Win rate", "pct"),
    "profit_factor": ("Profit factor", "ratio"),
    "exposure": ("Time in market", "pct"),
    "avg_exposure": ("Average exposure", "pct"),
    "trade_count": ("Trades", "int"),
    "open_positions": ("Open at the end", "positions"),
    "start": ("Start", "time"),
    "end": ("End", "time"),
    "start_value": ("Start value", "money"),
    "end_value": ("End value", "money"),
    "bars": ("Bars", "int"),
    "trading_days": ("Trading days", "int"),
    "buy_hold_return": ("Buy and hold, all symbols", "signed_pct"),
    "buy_hold_traded_return": ("Buy and hold, traded symbols", "signed_pct"),
}
#: stats.json keys shown in their own card (not as a raw value in "All statistics")
OWN_CARD = ("symbols",)

#: Short runs (at most this many calendar days) also get a daily-returns chart.
DAILY_CHART_MAX_DAYS = 100
#: Trade list rows shown in full; longer lists are cut with a note.
TRADE_LIST_MAX = 500
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# ---------------------------------------------------------------------------------------------
# Loading and checking


def resolve_run_path(path: str | Path) -> Path:
    """A run folder, or the newest run inside an output folder such as ``runs/``."""
    path = Path(path)
    if path.is_dir() and not (path / "config.json").exists() and any(
        (child / "config.json").exists() for child in path.iterdir() if child.is_dir()
    ):
        newest = latest_run(path)
        logger.info("%s holds several runs; using the newest, %s", path, newest.name)
        return newest
    return path


def check_run(run: Run) -> None:
    """Raise ``DataError`` naming the file when a run lacks a column the report reads."""
    for filename, (attr, columns) in REQUIRED_COLUMNS.items():
        frame: pd.DataFrame = getattr(run, attr)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(
                f"{run.path / filename} lacks column(s) {', '.join(missing)}: the run folder "
                "is damaged or was written by another version (see docs/CONTRACTS.md)"
            )


# ---------------------------------------------------------------------------------------------
# Analysis (pure pandas)


def _local_values(equity: pd.DataFrame, column: str = "value") -> pd.Series:
    """``equity[column]`` indexed by naive New York wall-clock time."""
    index = to_utc(equity["timestamp"]).tz_convert(NY).tz_localize(None)
    return pd.Series(equity[column].to_numpy(dtype="float64"), index=index).sort_index()


def period_returns(equity: pd.DataFrame, freq: str = "M", column: str = "value") -> pd.Series:
    """Return of each calendar period (``"D"``, ``"M"`` or ``"Y"``, New York time).

    A period's return is its last value over the previous period's last value; the first
    period is measured from the first equity row. Indexed by ``pd.Period``.
    """
    if equity.empty:
        return pd.Series(dtype="float64")
    values = _local_values(equity, column)
    last = values.groupby(values.index.to_period(freq)).last()
    base = last.shift(1)
    base.iloc[0] = values.iloc[0]
    return last / base - 1.0


def monthly_table(equity: pd.DataFrame) -> pd.DataFrame:
    """Monthly returns as a year x month table (columns 1..12, NaN where no data) + ``Year``."""
    monthly = period_returns(equity, "M")
    table = pd.DataFrame(index=pd.Index([], name="year", dtype="int64"),
                         columns=[*range(1, 13), "Year"], dtype="float64")
    if monthly.empty:
        return table
    for period, value in monthly.items():
        month: pd.Period = period  # period_returns indexes by pd.Period (typed as Hashable)
        table.loc[month.year, month.month] = value
    for period, value in period_returns(equity, "Y").items():
        year: pd.Period = period
        table.loc[year.year, "Year"] = value
    table.index = table.index.astype("int64")
    return table.sort_index()


def exit_breakdown(trades: pd.DataFrame) -> pd.DataFrame:
    """Per exit reason: trades, share, wins, win rate, total P&L, mean return, mean bars held."""
    columns = ["trades", "share", "wins", "win_rate", "pnl", "avg_return", "avg_bars"]
    if trades.empty:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="exit_reason"))
    grouped = trades.assign(win=trades["pnl"] > 0).groupby(
        trades["exit_reason"].astype(str).rename("exit_reason")
    )
    table = pd.DataFrame({
        "trades": grouped.size(),
        "wins": grouped["win"].sum(),
        "pnl": grouped["pnl"].sum(),
        "avg_return": grouped["return_pct"].mean(),
        "avg_bars": grouped["bars_held"].mean(),
    })
    table["share"] = table["trades"] / table["trades"].sum()
    table["win_rate"] = table["wins"] / table["trades"]
    return table[columns].sort_values(["trades", "pnl"], ascending=False)


def run_symbols(run: Run) -> list[str]:
    """The run's symbols: from config.json, else from prices.parquet."""
    symbols = run.config.get("symbols") or run.config.get("settings", {}).get("symbols")
    if symbols:
        return [str(s) for s in symbols]
    if "symbol" in run.prices:
        return sorted(run.prices["symbol"].astype(str).unique())
    return []


def most_traded(run: Run, limit: int = 3) -> list[str]:
    """Up to ``limit`` symbols to plot: most round trips first (ties: most P&L moved)."""
    if run.trades.empty:
        priced = set(run.prices["symbol"].astype(str)) if "symbol" in run.prices else set()
        return [s for s in run_symbols(run) if s in priced][:limit]
    stats = run.trades.groupby(run.trades["symbol"].astype(str)).agg(
        n=("pnl", "size"), moved=("pnl", lambda p: p.abs().sum())
    )
    return list(stats.sort_values(["n", "moved"], ascending=False).index[:limit])


def run_period(run: Run) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """First and last bar time (UTC) of the run, from stats.json or the equity curve."""
    for start, end in ((run.stats.get("start"), run.stats.get("end")),
                       (run.equity["timestamp"].min() if not run.equity.empty else None,
                        run.equity["timestamp"].max() if not run.equity.empty else None),
                       (run.config.get("start"), run.config.get("end"))):
        if start is not None and end is not None:
            try:
                return to_utc([start])[0], to_utc([end])[0]
            except (ValueError, TypeError):
                continue
    return None, None


# ---------------------------------------------------------------------------------------------
# Formatting


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _duration(days: float) -> str:
    if days <= 0:
        return "none"
    if days >= 1:
        return f"{days:,.1f} days"
    minutes = round(days * 24 * 60)
    hours, mins = divmod(minutes, 60)
    return f"{hours} h {mins:02d} min" if hours else f"{mins} min"


def _time(value: Any) -> str:
    ts = to_utc([value])[0].tz_convert(NY)
    if ts.hour == 0 and ts.minute == 0:
        return ts.strftime("%Y-%m-%d")
    return ts.strftime("%Y-%m-%d %H:%M")  # the zone is named once, in the page header


def format_value(kind: str, value: Any) -> str:
    """Human form of ``value`` (``kind`` from ``STATS``); missing values are an em dash."""
    if _is_missing(value):
        return "—"
    if kind == "time":
        try:
            return _time(value)
        except (ValueError, TypeError):
            return str(value)
    if kind == "positions" or isinstance(value, dict):
        if not isinstance(value, dict):
            return str(value)
        return ", ".join(f"{k} {v:,.4g}" for k, v in value.items()) or "none"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if kind == "signed_pct":
        return f"{value * 100:+,.2f}%"
    if kind == "pct":
        return f"{value * 100:,.1f}%"
    if kind == "drawdown":
        return f"{-abs(value) * 100:,.2f}%" if value else "0.00%"
    if kind == "days":
        return _duration(float(value))
    if kind == "ratio":
        return f"{value:,.2f}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "money":
        return f"${value:,.2f}"
    return str(value)


def format_stat(key: str, value: Any) -> str:
    """Human form of one stats.json entry (percentages, durations, money, times)."""
    return format_value(STATS.get(key, ("", "raw"))[1], value)


def _sign_class(value: Any) -> str:
    if _is_missing(value) or isinstance(value, str):
        return ""
    return "pos" if value > 0 else "neg" if value < 0 else ""


def _e(value: Any) -> str:
    return html.escape(str(value))


def public_run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """config.json's settings under their public names and units (ratchet.common.config.PARAMS);
    runs written before the rename (``risk_per_trade_pct`` as a fraction ...) are mapped."""
    from ratchet.common.config import BY_FIELD, PUBLIC

    out: dict[str, Any] = {}
    for key, value in (config.get("settings", {}) or {}).items():
        if key in PUBLIC and not (key == "max_position_pct" and _old_layout(config)):
            out[key] = value
        elif key in BY_FIELD:
            out[BY_FIELD[key].name] = BY_FIELD[key].to_public(value)
        else:
            out[key] = value
    return out


def _old_layout(config: dict[str, Any]) -> bool:
    """A run folder written before the public setting names (fractions under _pct)."""
    return "risk_per_trade_pct" in (config.get("settings", {}) or {})


def _settings_chips(config: dict[str, Any]) -> list[str]:
    """Short labels of the settings that shape a run."""
    s = public_run_settings(config)
    chips: list[str] = []
    interval = config.get("interval") or s.get("interval")
    if interval:
        chips.append(f"<b>{_e(interval)}</b> bars")
    if s.get("signal") == "ml":
        chips.append(f"<b>ML</b> signal (enter ≥ {s.get('ml_enter')}, "
                     f"exit ≤ {s.get('ml_exit')})")
    elif "fast" in s:
        chips.append(f"<b>MA {s.get('fast')}/{s.get('slow')}</b> crossover")
    if "risk_pct" in s:
        chips.append(f"<b>{s['risk_pct']:g}%</b> risk per trade")
    if "max_position_pct" in s:
        chips.append(f"<b>{s['max_position_pct']:g}%</b> max position")
    if "max_positions" in s:
        chips.append(f"<b>{s['max_positions']}</b> max positions")
    if "atr_mult" in s:
        chips.append(f"<b>{s['atr_mult']:g}× ATR({s.get('atr_period', 14)})</b> stop")
    if "trail_pct" in s:
        chips.append(f"<b>{s['trail_pct']:g}%</b> trailing stop")
    if "limit_orders" in s:
        chips.append(f"<b>limit</b> entries, {s.get('limit_timeout', 0):g} s timeout"
                     if s["limit_orders"] else "<b>market</b> entries")
    if "cash" in s:
        chips.append(f"<b>${s['cash']:,.0f}</b> cash")
    if s.get("commission"):
        chips.append(f"<b>{s['commission']:g}</b> commission")
    return chips


# ---------------------------------------------------------------------------------------------
# HTML pieces


def _empty(message: str, spaced: bool = False) -> str:
    return f'<div class="empty{" spaced" if spaced else ""}">{message}</div>'


def _img(uri: str | None, alt: str, missing: str = "No data to plot.") -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">' if uri else _empty(missing)


def _card(title: str, body: str, hint: str = "") -> str:
    hint_html = f'<p class="hint">{hint}</p>' if hint else ""
    return f'<div class="card"><h3>{_e(title)}</h3>{hint_html}{body}</div>'


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "",
           text_cols: Sequence[int] = ()) -> str:
    def cell(tag: str, i: int, v: str) -> str:
        c = ' class="text"' if i in text_cols else ""
        return f"<{tag}{c}>{v}</{tag}>"

    th = "".join(cell("th", i, _e(h)) for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(v if v.startswith("<td") else cell("td", i, v)
                         for i, v in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _stat_cards(run: Run) -> str:
    st = run.stats
    bench = benchmark_return(run)
    cards = [
        ("Total return", format_stat("total_return", st.get("total_return")),
         _sign_class(st.get("total_return")),
         f"buy &amp; hold {format_value('signed_pct', bench)}"),
        ("CAGR", format_stat("cagr", st.get("cagr")), _sign_class(st.get("cagr")),
         f"end value {format_stat('end_value', st.get('end_value'))}"),
        ("Sharpe", format_stat("sharpe", st.get("sharpe")), "",
         f"Sortino {format_stat('sortino', st.get('sortino'))}"),
        ("Max drawdown", format_stat("max_drawdown", st.get("max_drawdown")),
         "neg" if st.get("max_drawdown") else "",
         "longest " + format_stat("max_drawdown_duration_days",
                                  st.get("max_drawdown_duration_days"))),
        ("Win rate", format_stat("win_rate", st.get("win_rate")), "",
         f"{format_stat('trade_count', st.get('trade_count', len(run.trades)))} trades"),
        ("Profit factor", format_stat("profit_factor", st.get("profit_factor")), "",
         f"in market {format_stat('exposure', st.get('exposure'))}"),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="stat"><div class="label">{label}</div>'
        f'<div class="value {cls}">{value}</div><div class="note">{note}</div></div>'
        for label, value, cls, note in cards
    ) + "</div>"


def _run_header(run: Run, colour: str | None) -> str:
    mode = str(run.config.get("mode", "run"))
    symbols = run_symbols(run)
    shown = ", ".join(symbols[:10]) + (f" +{len(symbols) - 10} more" if len(symbols) > 10 else "")
    start, end = run_period(run)
    period = f"{_time(start)} → {_time(end)}" if start is not None and end is not None else "—"
    swatch = f'<span class="swatch" style="background:{colour}"></span>' if colour else ""
    chips = "".join(f'<span class="chip">{c}</span>' for c in _settings_chips(run.config))
    extra = []
    if run.config.get("data"):
        extra.append(f"data {_e(run.config['data'])}")
    if run.config.get("version"):
        extra.append(f"ratchet {_e(run.config['version'])}")
    # the --name label, as `cli.py runs` shows it
    label = f" · {_e(run.config['name'])}" if run.config.get("name") else ""
    return (
        f'<div class="run-head"><h2>{swatch}{_e(run.name)}{label}'
        f'<span class="badge {_e(mode)}">{_e(mode)}</span></h2>'
        f'<div class="sub">{_e(shown) or "no symbols"} &nbsp;·&nbsp; {_e(period)}'
        f'{" &nbsp;·&nbsp; " + " · ".join(extra) if extra else ""}</div>'
        f'<div class="chips">{chips}</div></div>'
    )


def _heat_cell(value: float, scale: float) -> str:
    if _is_missing(value):
        return "<td></td>"
    if abs(value) < 5e-5:  # rounds to 0.00 %: no colour
        return "<td>0.00%</td>"
    strength = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    rgb = (31, 157, 107) if value >= 0 else (214, 69, 69)
    bg = f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{0.08 + 0.55 * strength:.2f})"
    return f'<td style="background:{bg}">{value * 100:+.2f}%</td>'


def _monthly_html(equity: pd.DataFrame) -> str:
    table = monthly_table(equity)
    if table.empty:
        return _empty("No equity rows: nothing to measure.")
    months = table[list(range(1, 13))]
    scale = float(np.nanmax(np.abs(months.to_numpy(dtype="float64")))) if months.notna().any(
        axis=None) else 0.0
    rows = []
    for year, row in table.iterrows():
        cells = [f"<td>{year}</td>"] + [_heat_cell(row[m], scale) for m in range(1, 13)]
        year_cell = _heat_cell(row["Year"], max(scale, abs(row["Year"]) if not _is_missing(
            row["Year"]) else 0.0)).replace("<td", '<td class="year"', 1)
        rows.append("<tr>" + "".join(cells) + year_cell + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Year", *MONTHS, "Total"))
    note = ""
    if months.notna().sum(axis=None) == 1:
        note = ('<p class="hint">The run covers a single month, so the table has one cell; '
                "the daily returns below show the detail.</p>")
    return (f'<table class="heat"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
            f"</tbody></table>{note}")


def _exit_html(trades: pd.DataFrame) -> str:
    table = exit_breakdown(trades)
    if table.empty:
        return _empty("<b>No trades</b>: nothing exited.")
    rows = []
    for reason, r in table.iterrows():
        dot = f'<span class="dot" style="background:{theme.reason_colour(str(reason))}"></span>'
        rows.append([
            f"{dot}{_e(reason)}", f"{int(r['trades'])} <small>({r['share'] * 100:.0f}%)</small>",
            f"{r['win_rate'] * 100:.0f}%",
            f'<td class="{_sign_class(r["pnl"])}">{_money(r["pnl"])}</td>',
            f'<td class="{_sign_class(r["avg_return"])}">{r["avg_return"] * 100:+.2f}%</td>',
            f"{r['avg_bars']:,.0f}",
        ])
    total_pnl = float(table["pnl"].sum())
    total = ("<tr class=\"total\"><td>all</td>"
             f"<td>{int(table['trades'].sum())}</td>"
             f"<td>{table['wins'].sum() / table['trades'].sum() * 100:.0f}%</td>"
             f'<td class="{_sign_class(total_pnl)}">{_money(total_pnl)}</td>'
             f"<td>{trades['return_pct'].mean() * 100:+.2f}%</td>"
             f"<td>{trades['bars_held'].mean():,.0f}</td></tr>")
    html_table = _table(["Reason", "Trades", "Win rate", "P&L", "Avg return", "Avg bars"],
                        rows)
    return html_table.replace("</tbody>", total + "</tbody>")


def _money(value: float) -> str:
    return f"{'-' if value < 0 else '+'}${abs(value):,.2f}"


def _trade_list(trades: pd.DataFrame) -> str:
    if trades.empty:
        return ""
    shown = trades.sort_values("entry_time").head(TRADE_LIST_MAX)
    rows = []
    for n, (_, t) in enumerate(shown.iterrows(), start=1):
        rows.append([
            str(n), _e(t["symbol"]), _time(t["entry_time"]), _time(t["exit_time"]),
            f"{t['entry_price']:,.2f}", f"{t['exit_price']:,.2f}", f"{t['qty']:,.4g}",
            f'<td class="{_sign_class(t["pnl"])}">{_money(t["pnl"])}</td>',
            f'<td class="{_sign_class(t["return_pct"])}">{t["return_pct"] * 100:+.2f}%</td>',
            f'<span class="dot" style="background:{theme.reason_colour(t["exit_reason"])}">'
            f"</span>{_e(t['exit_reason'])}",
            f"{int(t['bars_held']):,}",
        ])
    cut = (f'<p class="hint">First {TRADE_LIST_MAX} of {len(trades)} trades; load the run in '
           "the notebook for all of them.</p>") if len(trades) > TRADE_LIST_MAX else ""
    table = _table(["#", "Symbol", "Entry (NY)", "Exit (NY)", "Entry", "Exit", "Qty", "P&L",
                    "Return", "Reason", "Bars"], rows, text_cols=(1, 2, 3, 9))
    return (f"<details><summary>Trade list ({len(trades)})</summary>{cut}"
            f'<div class="scroll">{table}</div></details>')


def _closeups(run: Run) -> str:
    trades = run.trades
    if trades.empty:
        return ""
    # "Best" is a winner and "worst" a loser: a run of losers has no best trade to show.
    picks = []
    best, worst = trades.loc[trades["pnl"].idxmax()], trades.loc[trades["pnl"].idxmin()]
    if best["pnl"] > 0:
        picks.append(("Best trade", best))
    if worst["pnl"] < 0 and (not picks or len(trades) > 1):
        picks.append(("Worst trade", worst))
    if not picks:
        return ""
    cards = []
    for label, t in picks:
        title = (f"{label} · {t['symbol']} {_money(float(t['pnl']))} "
                 f"({t['return_pct'] * 100:+.2f}%)")
        hint = (f"exit: {_e(t['exit_reason'])} · {_time(t['entry_time'])} → "
                f"{_time(t['exit_time'])} · {int(t['bars_held'])} bars held")
        cards.append(_card(title, _img(charts.trade_closeup(run.prices, t), title), hint))
    return '<div class="grid2">' + "".join(cards) + "</div>"


def _kv_table(items: Iterable[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in items)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _setting_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        text = ", ".join(map(str, value[:12])) + (f" +{len(value) - 12} more"
                                                  if len(value) > 12 else "")
        return _e(text)
    if value is None:
        return "—"
    return _e(json.dumps(value) if isinstance(value, bool) else value)


def _details_grid(run: Run) -> str:
    stats_rows = [(label, _e(format_stat(k, run.stats.get(k)))) for k, (label, _) in
                  STATS.items() if k in run.stats]
    stats_rows += [(k, _e(v)) for k, v in run.stats.items() if k not in STATS
                   and k not in OWN_CARD]
    settings = public_run_settings(run.config)
    setting_rows = [(k, _setting_text(v)) for k, v in settings.items()]
    return (_symbol_card(run.stats.get("symbols"))
            + '<div class="grid2">'
            + _card("All statistics", _kv_table(stats_rows), "From stats.json.")
            + _card("Settings", _kv_table(setting_rows) if setting_rows else
                    _empty("No settings recorded."), "From config.json.")
            + "</div>")


def _symbol_card(symbols: Any) -> str:
    """stats.json ``symbols`` as the backtest summary's per-symbol table (else nothing)."""
    if not isinstance(symbols, dict) or not symbols:
        return ""
    rows = []
    for sym, row in symbols.items():
        row = row if isinstance(row, dict) else {}
        pnl = row.get("pnl")
        rows.append([_e(sym), format_value("int", row.get("trades")),
                     format_value("pct", row.get("win_rate")),
                     "—" if _is_missing(pnl) else f"{pnl:+,.2f}",
                     format_value("pct", row.get("exposure")),
                     format_value("signed_pct", row.get("buy_hold_return"))])
    return _card("Per symbol", _table(["symbol", "trades", "win rate", "P&L", "exposure",
                                       "buy & hold"], rows, text_cols=(0,)),
                 "From stats.json: closed trades, share won, P&L, share of the symbol's bars "
                 "with a position, and buy-and-hold over the run.")


def parity_section(path: Path) -> str:
    """The parity card of a run folder that has ``parity.json`` (else nothing)."""
    if not (Path(path) / "parity.json").is_file():
        return ""
    from analyzers.parity import html_section

    return html_section(path)


def _run_section(run: Run, colour: str | None, max_symbols: int) -> str:
    check_run(run)
    axis = TimeAxis(run.equity["timestamp"] if not run.equity.empty else run.prices["timestamp"])
    start, end = run_period(run)
    parts = [_run_header(run, colour), _stat_cards(run)]
    no_trades = run.trades.empty
    if no_trades:
        parts.append(_empty(f"<b>No trades</b> in this run: the strategy never completed a "
                            f"round trip over {len(run.equity):,} bars.", spaced=True))
    log_note = (" <b>Log scale</b> (the values span more than "
                f"{charts.LOG_SCALE_RATIO:g}x): equal heights are equal percentage changes."
                if charts.wide_range(run.equity) else "")
    parts.append(_card("Equity vs buy-and-hold", _img(charts.equity_chart(run.equity, axis),
                                                      "equity curve", "No equity rows."),
                       "Account value against an equal-weight buy-and-hold of the run's "
                       "symbols, scaled to the same starting value." + log_note))
    parts.append(_card("Drawdown", _img(charts.drawdown_chart(run.equity, axis), "drawdown",
                                        "No equity rows."),
                       "Decline of the account value from its running peak."))
    parts.append(_card("Monthly returns", _monthly_html(run.equity),
                       "Calendar months in New York time; Total compounds the year."))
    if start is not None and end is not None and (end - start).days <= DAILY_CHART_MAX_DAYS:
        daily = period_returns(run.equity, "D")
        if len(daily) > 0:
            daily.index = daily.index.to_timestamp()
            parts.append(_card("Daily returns", _img(charts.returns_bar_chart(daily),
                                                     "daily returns"),
                               "Shown because the run is short: one bar per session."))
    parts.append('<div class="grid2">'
                 + _card("Exit reasons", _exit_html(run.trades),
                         "signal: SELL crossover · stop: fixed ATR stop hit · "
                         "trail: trailing stop hit.")
                 + _card("Trade returns", _img(charts.trade_returns_chart(run.trades),
                                               "trade returns", "<b>No trades</b>."),
                         "How the round trips ended, stacked by exit reason.")
                 + "</div>")
    symbols = most_traded(run, max_symbols)
    open_at_end = run.stats.get("open_positions")
    held_syms = [str(s) for s in open_at_end] if isinstance(open_at_end, dict) else []
    priced = set(run.prices["symbol"].astype(str)) if "symbol" in run.prices else set()
    # a position still open at the end gets its price panel (with its stop) too
    symbols += [s for s in held_syms if s not in symbols and s in priced]
    all_traded = run.trades["symbol"].nunique() if not no_trades else 0
    if no_trades:
        hint = "No trades: prices and stop only" + (
            f" (first {len(symbols)} symbols)." if len(run_symbols(run)) > len(symbols) else ".")
    elif all_traded > len(symbols):
        hint = (f"The {len(symbols)} most traded of {all_traded} traded symbols. Triangles: "
                "entries (up) and exits (down, coloured by reason); red steps: the stop level.")
    else:
        hint = ("Triangles: entries (up) and exits (down, coloured by reason); red steps: the "
                "effective stop level while a position is open; shading: time in the trade.")
    if isinstance(open_at_end, dict) and open_at_end:
        held = ", ".join(f"{sym} {qty:,.4g} shares" for sym, qty in open_at_end.items())
        hint += (f" Still open at the end (not a closed round trip; its panel shows the price "
                 f"and the stop): {_e(held)}.")
    parts.append(_card("Trades on price", _img(
        charts.trades_chart(run.prices, run.trades, symbols, axis), "trades on price",
        "No prices recorded."), hint))
    parts.append(_closeups(run))
    parts.append(_details_grid(run))
    parts.append(parity_section(run.path))  # paper runs after `cli.py parity`
    parts.append(_trade_list(run.trades))
    return f'<section class="run" id="{_e(run.name)}">' + "".join(parts) + "</section>"


COMPARE: tuple[tuple[str, str, bool], ...] = (
    # stats key, label, whether the best value is highlighted (higher is better)
    ("total_return", "Return", True),
    ("cagr", "CAGR", True),
    ("sharpe", "Sharpe", True),
    ("max_drawdown", "Max DD", True),  # compared on -abs(): closer to zero wins
    ("win_rate", "Win rate", True),
    ("profit_factor", "Profit f.", True),
    ("trade_count", "Trades", False),
    ("exposure", "Exposure", False),
)


def benchmark_return(run: Run) -> float | None:
    """Buy-and-hold return over the run, from the equity file's ``benchmark`` column."""
    if run.equity.empty or "benchmark" not in run.equity:
        return None
    b = run.equity["benchmark"].dropna()
    return float(b.iloc[-1] / b.iloc[0] - 1) if len(b) else None


def _comparison(runs: Sequence[Run]) -> str:
    best: dict[str, float] = {}
    for key, _, highlight in COMPARE:
        finite = [v for v in (_score(key, r.stats.get(key)) for r in runs) if v is not None]
        if highlight and len(set(finite)) > 1:
            best[key] = max(finite)
    rows = []
    for i, run in enumerate(runs):
        start, end = run_period(run)
        symbols = run_symbols(run)
        period = f"{_time(start)} → {_time(end)}" if start is not None else "—"
        where = ", ".join(symbols[:6]) + (" …" if len(symbols) > 6 else "")
        row = [f'<td class="text"><span class="swatch" style="background:{theme.run_colour(i)}">'
               f'</span><a href="#{_e(run.name)}">{_e(run.name)}</a>'
               + (f" {_e(run.config['name'])}" if run.config.get("name") else "") + " "
               f'<span class="badge {_e(run.config.get("mode", ""))}">'
               f'{_e(run.config.get("mode", ""))}</span><br><small>{_e(where)} · '
               f"{_e(period)}</small></td>"]
        for key, _, _ in COMPARE:
            value = run.stats.get(key)
            text = _e(format_stat(key, value))
            is_best = key in best and _score(key, value) == best[key]
            row.append(f'<td class="best">{text}</td>' if is_best else text)
            if key == "total_return":
                row.append(_e(format_value("signed_pct", benchmark_return(run))))
        rows.append(row)
    head = ["Run"]
    for key, label, _ in COMPARE:
        head.append(label)
        if key == "total_return":
            head.append("Buy & hold")
    table = _table(head, rows, cls="compare")
    series = [(r.name, r.equity) for r in runs]
    seen: dict[tuple[str, ...], tuple[str, pd.DataFrame]] = {}
    for r in runs:
        syms = tuple(run_symbols(r))
        if syms not in seen and len(seen) < 3:
            seen[syms] = (f"buy & hold {', '.join(syms[:4])}{' …' if len(syms) > 4 else ''}",
                         r.equity)
    chart = charts.comparison_chart(series, list(seen.values()))
    differ = _differing_settings(runs)
    parts = [
        f'<section class="run" id="compare"><div class="run-head"><h2>Comparison of '
        f'{len(runs)} runs</h2><div class="sub">Best value per column in bold; each run has '
        "its own section below.</div></div>",
        _card("Side by side", table),
        _card("Equity curves, normalised", _img(chart, "equity curves"),
              "Return since each run's start; dashed: buy-and-hold of the runs' symbols "
              "(when the runs share a period)."),
    ]
    if differ:
        head = ["Setting", *(r.name for r in runs)]
        parts.append(_card("Settings that differ", _table(head, differ, text_cols=range(
            len(head)))))
    return "".join(parts) + "</section>"


def _score(key: str, value: Any) -> float | None:
    if _is_missing(value) or isinstance(value, str):
        return None
    value = float(value)
    if math.isnan(value):
        return None
    return -abs(value) if key == "max_drawdown" else value


def _differing_settings(runs: Sequence[Run]) -> list[list[str]]:
    configs = [{**public_run_settings(r.config), "symbols": run_symbols(r),
                "start": r.config.get("start"), "end": r.config.get("end")} for r in runs]
    for c, r in zip(configs, runs, strict=True):
        c["interval"] = r.config.get("interval") or c.get("interval")
    keys = sorted({k for c in configs for k in c})
    rows = []
    for k in keys:
        values = [json.dumps(c.get(k), default=str, sort_keys=True) for c in configs]
        if len(set(values)) > 1:
            rows.append([_e(k), *(_setting_text(c.get(k)) for c in configs)])
    return rows


def build_report(runs: Sequence[Run], title: str | None = None, max_symbols: int = 3) -> str:
    """The whole report page for ``runs`` (one or more) as an HTML string."""
    if not runs:
        raise DataError("no runs to report on: name at least one run folder")
    sections = []
    for i, run in enumerate(runs):
        try:
            sections.append(_run_section(run, theme.run_colour(i) if len(runs) > 1 else None,
                                         max_symbols))
        except (KeyError, TypeError, ValueError) as exc:
            logger.debug("report of %s failed", run.path, exc_info=True)
            raise DataError(f"{run.path}: unexpected content, cannot build the report "
                            f"({exc.__class__.__name__}: {exc})") from exc
    nav = ""
    if len(runs) > 1:
        sections.insert(0, _comparison(runs))
        nav = '<nav class="runs"><a href="#compare">Comparison</a>' + "".join(
            f'<a href="#{_e(r.name)}"><span class="swatch" style="background:'
            f'{theme.run_colour(i)}"></span>{_e(r.name)}</a>' for i, r in enumerate(runs)
        ) + "</nav>"
    named = f" · {runs[0].config['name']}" if runs[0].config.get("name") else ""
    title = title or (f"Run {runs[0].name}{named}" if len(runs) == 1
                      else f"{len(runs)} runs compared")
    generated = datetime.now(UTC).astimezone(ZoneInfo(NY)).strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ratchet report">
<title>{_e(title)} · ratchet</title>
<style>{theme.CSS}</style></head>
<body><div class="page">
<div class="topbar"><h1><span class="brand">ratchet</span> · {_e(title)}</h1>
<div class="meta">generated {_e(generated)} · all times are New York time (America/New_York)
</div></div>
{nav}
{"".join(sections)}
<footer>ratchet report · self-contained file: charts are embedded PNGs, no network needed.
</footer>
</div></body></html>
"""


def write_report(paths: Sequence[str | Path], output: str | Path | None = None,
                 title: str | None = None, max_symbols: int = 3) -> Path:
    """Load the run folders, write the report atomically and return its path.

    ``output`` defaults to ``report.html`` inside the first run folder. Raises ``DataError``
    (one line naming the file) for a missing or damaged run folder.
    """
    if not paths:
        raise DataError("no runs to report on: name at least one run folder")
    resolved = [resolve_run_path(p) for p in paths]
    runs = [load_run(p) for p in resolved]
    out = Path(output) if output is not None else resolved[0] / "report.html"
    page = build_report(runs, title=title, max_symbols=max_symbols)
    write_text_atomic(out, page)
    # The atomic writer's temp file is private (0600); a report is meant to be shared.
    umask = os.umask(0)
    os.umask(umask)
    out.chmod(0o666 & ~umask)
    logger.info("wrote %s (%d run(s), %.0f kB)", out, len(runs), len(page) / 1024)
    return out
