"""What ``cli.py sweep`` prints: progress, the top cells, walk-forward IS vs OOS."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from sweeps.objective import OBJECTIVES, explain_dsr

logger = logging.getLogger(__name__)


def _pct(x: Any) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{x * 100:,.2f}%"


def _num(x: Any) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{x:,.3f}"


class TextProgress:
    """Progress lines for a non-terminal (logs, CI): about every 10% and at the end."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.t0 = time.monotonic()
        self.first: int | None = None
        self.last_pct = -100

    def __call__(self, done: int, total: int) -> None:
        if self.first is None:
            self.first = done
        pct = 100 * done // max(total, 1)
        if pct - self.last_pct < 10 and done < total:
            return
        self.last_pct = pct
        run = done - self.first
        elapsed = time.monotonic() - self.t0
        eta = "?" if run <= 0 else f"{elapsed / run * (total - done):,.0f}s"
        self.echo(f"cells {done}/{total} ({pct}%) elapsed {elapsed:,.0f}s ETA {eta}")


def _param(value: Any, percent: bool) -> str:
    if isinstance(value, float):
        return f"{value * 100:.4g}%" if percent else f"{value:.4g}"
    return str(value)


def top_table(results: pd.DataFrame, objective: str, n: int, phase: str = "cell",
              names: dict[str, str] | None = None, percent: set[str] | None = None) -> Any:
    """A rich table of the best qualified rows."""
    from rich.table import Table

    rows = results[(results["phase"] == phase) & results["qualified"].astype(bool)]
    rows = rows.sort_values("objective", ascending=False).head(n)
    params = [c for c in results.columns if c.startswith("p_")]
    table = Table(title=f"Top {len(rows)} cells by {OBJECTIVES[objective]}", title_justify="left")
    table.add_column("#", justify="right")
    for p in params:
        table.add_column((names or {}).get(p[2:], p[2:]), justify="right")
    for c in ("objective", "sharpe", "total return", "max DD", "trades"):
        table.add_column(c, justify="right")
    show = _pct if objective == "total_return" else _num
    for i, (_, r) in enumerate(rows.iterrows(), 1):
        table.add_row(str(i), *[_param(r[p], p[2:] in (percent or set())) for p in params],
                      show(r["objective"]),
                      _num(r.get("sharpe")), _pct(r.get("total_return")),
                      _pct(r.get("max_drawdown")), str(int(r.get("trade_count") or 0)))
    return table


def walk_forward_table(wf: dict[str, Any], names: dict[str, str] | None = None) -> Any:
    """Per window: the chosen cell, its in-sample and out-of-sample objective."""
    from rich.table import Table

    table = Table(title=f"Walk-forward: in-sample vs out-of-sample ({wf['objective']})",
                  title_justify="left")
    for c in ("window", "train", "test", "chosen", "IS", "OOS", "OOS return", "DSR"):
        table.add_column(c, justify="right" if c not in ("chosen",) else "left")
    for w in wf["windows"]:
        chosen = "-" if not w.get("chosen") else ", ".join(
            f"{(names or {}).get(k, k)}={_param(v, False)}" for k, v in w["chosen"].items())
        table.add_row(str(w["window"]), f"{w['train_start'][:10]}..{w['train_end'][:10]}",
                      f"{w['test_start'][:10]}..{w['test_end'][:10]}", chosen,
                      _num(w.get("is_objective")), _num(w.get("oos_objective")),
                      _pct(w.get("oos_total_return")), _num(w.get("dsr")))
    return table


def print_outcome(outcome: Any, plan: Any, console: Any, top: int) -> None:
    """The end-of-sweep summary."""
    res = outcome.results
    names = {p.field: p.name for p in plan.space.params}
    percent = {p.field for p in plan.space.params if p.percent}
    cells = res[res["phase"].isin(["cell", "train"])] if not res.empty else res
    qualified = int(cells["qualified"].sum()) if not cells.empty else 0
    console.print(f"Sweep finished: {outcome.computed} backtests run, {outcome.reused} reused "
                  f"from earlier runs, {qualified}/{len(cells)} qualified "
                  f"(>= {plan.min_trades} trades) in {outcome.seconds:,.1f}s")
    if outcome.walk_forward is None:
        if qualified:
            console.print(top_table(res, plan.objective, top, names=names, percent=percent))
        else:
            console.print(f"No cell has {plan.min_trades}+ trades and a defined "
                          f"{plan.objective}: lower --min-trades or widen the sweep")
        console.print(explain_dsr(outcome.dsr, outcome.n_trials))
    else:
        wf = outcome.walk_forward
        console.print(walk_forward_table(wf, names))
        oos = wf["oos_stats"]
        console.print(f"In-sample (mean of the chosen cells): {_num(wf['is_objective_mean'])}  "
                      f"| out-of-sample (stitched): {_num(wf['oos_objective'])}, total return "
                      f"{_pct(oos.get('total_return'))}, Sharpe {_num(oos.get('sharpe'))}, "
                      f"max DD {_pct(oos.get('max_drawdown'))}, {oos.get('trade_count', 0)} "
                      "trades")
        dsrs = [w["dsr"] for w in wf["windows"] if w.get("dsr") is not None]
        last = wf["windows"][-1]
        console.print(explain_dsr(last.get("dsr"), int(last.get("trials") or 0))
                      + (f" [last window; all windows: {', '.join(f'{d:.2f}' for d in dsrs)}]"
                         if len(dsrs) > 1 else ""))
        console.print(f"Out-of-sample run folder: {outcome.oos_dir}  (cli.py report "
                      f"{outcome.oos_dir})")
    console.print(f"Sweep folder: [bold]{outcome.folder}[/bold]  (results.parquet; notebook: "
                  f"from analyzers import load_sweep; s = load_sweep('{outcome.folder}'); "
                  f"report: cli.py report {outcome.folder})")


def params_text(params: str) -> str:
    """``{"fast_period": 5}`` -> ``fast_period=5``."""
    return ", ".join(f"{k}={v}" for k, v in json.loads(params).items())
