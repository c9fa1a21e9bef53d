"""The HTML report of a sweep folder: heatmaps, top cells, walk-forward IS vs OOS.

    from analyzers.sweep_report import write_sweep_report
    write_sweep_report("runs/sweeps/sweep-1a2b3c4d5e")    # -> .../report.html

Heatmaps show, for each pair of varied settings, the BEST objective over the other settings
(qualified cells only; blank: no qualified cell). Self-contained like the run report.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analyzers.report import _card, _img, _table
from analyzers.report_assets import charts, theme
from analyzers.sweepfolder import Sweep, load_sweep
from ratchet.common.atomic import write_text_atomic
from ratchet.common.config import BY_FIELD
from ratchet.common.nytime import NY

MAX_HEATMAPS = 6


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)) or pd.isna(x):
        return "n/a"
    return f"{x * 100:,.2f}%" if pct else f"{x:,.3f}"


def param_label(column: str) -> str:
    """A ``p_<Settings field>`` column by its public setting name (``p_fast_period`` ->
    ``fast``; ``risk_pct (%)`` for the settings shown in percent), as ``show-config``."""
    param = BY_FIELD.get(column[2:])
    if param is None:
        return column[2:]
    return f"{param.name} (%)" if param.scale != 1.0 else param.name


def param_value(field: str, value: Any) -> Any:
    """A varied setting's stored value in its public unit (``0.02`` risk -> ``2``)."""
    param = BY_FIELD.get(field)
    if param is None or isinstance(value, bool) or not isinstance(value, int | float) \
            or pd.isna(value):
        return value
    return param.to_public(value)


def setting_text(field: str, value: Any) -> str:
    """``risk_per_trade_pct``, ``0.02`` -> ``risk_pct=2%``; ``fast_period``, 5 -> ``fast=5``."""
    param = BY_FIELD.get(field)
    if param is None:
        return f"{field}={value}"
    shown = param_value(field, value)
    if isinstance(shown, float):
        return f"{param.name}={shown:g}" + ("%" if param.scale != 1.0 else "")
    return f"{param.name}={shown}"


def public_params(frame: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    """``frame`` with its ``p_`` columns in public units (for the tables and heatmaps)."""
    out = frame.copy()
    for p in params:
        if p in out.columns:
            out[p] = [param_value(p[2:], v) for v in out[p].tolist()]
    return out


@charts.styled
def heatmap(frame: pd.DataFrame, x: str, y: str, label: str) -> str | None:
    """Best objective over the other settings for each (x, y) pair, as a PNG data URI."""
    ok = frame[frame["qualified"].astype(bool)]
    if ok.empty:
        return None
    grid = ok.pivot_table(index=y, columns=x, values="objective", aggfunc="max")
    fig = Figure(figsize=(5.2, 3.8), layout="constrained")
    ax = fig.add_subplot()
    data = grid.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(data), cmap="RdYlGn", aspect="auto", origin="lower")
    ax.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns], rotation=45)
    ax.set_yticks(range(len(grid.index)), [str(c) for c in grid.index])
    ax.grid(False)
    ax.set_xlabel(param_label(x))
    ax.set_ylabel(param_label(y))
    if data.size <= 120:
        for (i, j), v in np.ndenumerate(data):
            if math.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label=label)
    return charts.figure_uri(fig)


def _cell(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _top_rows(sweep: Sweep, n: int = 20) -> str:
    params = sweep.params
    top = public_params(sweep.top(n), params)
    head = ["#", *[param_label(p) for p in params], "objective", "Sharpe", "total return", "max DD",
            "trades", "window"]
    rows = [[str(i), *[html.escape(_cell(r[p])) for p in params], _fmt(r["objective"]),
             _fmt(r.get("sharpe")), _fmt(r.get("total_return"), True),
             _fmt(r.get("max_drawdown"), True), str(int(r.get("trade_count") or 0)),
             str(int(r["window"])) if r["window"] >= 0 else "-"]
            for i, (_, r) in enumerate(top.iterrows(), 1)]
    return _table(head, rows)


def _walk_forward(sweep: Sweep) -> str:
    wf = sweep.walk_forward
    if not wf:
        return ""
    head = ["window", "train", "test", "chosen", "IS objective", "OOS objective", "IS return",
            "OOS return", "deflated Sharpe"]
    rows = []
    for w in wf["windows"]:
        chosen = ", ".join(setting_text(k, v) for k, v in (w.get("chosen") or {}).items()) \
            or "-"
        rows.append([str(w["window"]), f"{w['train_start'][:10]} .. {w['train_end'][:10]}",
                     f"{w['test_start'][:10]} .. {w['test_end'][:10]}", html.escape(chosen),
                     _fmt(w.get("is_objective")), _fmt(w.get("oos_objective")),
                     _fmt(w.get("is_total_return"), True), _fmt(w.get("oos_total_return"), True),
                     _fmt(w.get("dsr"))])
    oos = wf.get("oos_stats", {})
    summary = (f"<p>In-sample objective (mean of the chosen cells): "
               f"<b>{_fmt(wf.get('is_objective_mean'))}</b> · out-of-sample (stitched test "
               f"spans): <b>{_fmt(wf.get('oos_objective'))}</b>, total return "
               f"{_fmt(oos.get('total_return'), True)}, max drawdown "
               f"{_fmt(oos.get('max_drawdown'), True)}, {oos.get('trade_count', 0)} trades.</p>")
    chart = ""
    if sweep.oos is not None and not sweep.oos.equity.empty:
        axis = charts.TimeAxis(sweep.oos.equity["timestamp"])
        chart = _img(charts.equity_chart(sweep.oos.equity, axis), "out-of-sample equity")
    return _card("Walk-forward: in-sample vs out-of-sample",
                 summary + _table(head, rows, text_cols=(3,)) + chart,
                 "Each window picks the best cell on its training span only, then trades it "
                 "on the following test span; the OOS curve is the test spans stitched "
                 f"(run folder {html.escape(str(sweep.path / 'oos'))}). A deflated Sharpe "
                 "below 0.95 means the in-sample winner may be luck.")


def build_sweep_report(sweep: Sweep) -> str:
    """The report page as an HTML string."""
    cfg = sweep.config
    res = sweep.results
    pool = res[res["phase"].isin(["cell", "train"])] if "phase" in res else res
    pool = public_params(pool, sweep.params)  # axes and tables in show-config's units
    label = f"best {cfg.get('objective', 'objective')}"
    maps = []
    for x, y in itertools.islice(itertools.combinations(sweep.params, 2), MAX_HEATMAPS):
        cols = pool[[x, y]].nunique()
        if (cols > 1).all():
            maps.append(_img(heatmap(pool, x, y, label), f"{param_label(x)} vs {param_label(y)}",
                             "No qualified cell for this pair."))
    if len(sweep.params) == 1 and not pool.empty:
        maps.append(_table([param_label(sweep.params[0]), label],
                           [[str(k), _fmt(v)] for k, v in pool[pool["qualified"].astype(bool)]
                            .groupby(sweep.params[0])["objective"].max().items()]))
    heat = _card("Objective over pairs of settings",
                 "".join(f'<div class="chart">{m}</div>' for m in maps) or "<p>Only one value "
                 "per setting: nothing to map.</p>",
                 "Best objective over the other settings; blank cells have no qualified cell "
                 f"(fewer than {cfg.get('min_trades')} trades or no value)."
                 + (" Walk-forward: training rows of every window." if sweep.walk_forward
                    else ""))
    qualified = int(pool["qualified"].astype(bool).sum()) if "qualified" in pool else 0
    info = _table(["setting", "value"], [
        ["data", html.escape(str(cfg.get("data")))],
        ["symbols", html.escape(", ".join(cfg.get("symbols", [])))],
        ["space", html.escape("; ".join(cfg.get("space", [])))],
        ["search", f"{cfg.get('search')} (trials {cfg.get('trials')}, seed {cfg.get('seed')})"],
        ["objective", f"{cfg.get('objective')} (min trades {cfg.get('min_trades')})"],
        ["rows", f"{len(pool)} backtests, {qualified} qualified"],
        ["walk-forward", html.escape(str(cfg.get("walk_forward") or "no"))
         + (" anchored" if cfg.get("anchored") else "")],
    ], text_cols=(0, 1))
    body = (_card("Sweep", info) + heat + _card("Top cells", _top_rows(sweep))
            + _walk_forward(sweep))
    generated = datetime.now(NY).strftime("%Y-%m-%d %H:%M New York time")
    title = f"Sweep {sweep.path.name}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · ratchet</title>
<style>{theme.CSS} .chart{{display:inline-block;margin:4px}}</style></head>
<body><div class="page">
<div class="topbar"><h1><span class="brand">ratchet</span> · {html.escape(title)}</h1>
<div class="meta">generated {generated}</div></div>
{body}
<footer>ratchet sweep report · config: {html.escape(json.dumps(cfg.get('definition_hash')))}
</footer></div></body></html>
"""


def write_sweep_report(path: str | Path, output: str | Path | None = None) -> Path:
    """Load a sweep folder and write its report (default ``<sweep>/report.html``)."""
    sweep = load_sweep(path)
    out = Path(output) if output is not None else sweep.path / "report.html"
    write_text_atomic(out, build_sweep_report(sweep))
    out.chmod(0o644)
    return out
