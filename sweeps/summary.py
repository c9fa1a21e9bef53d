"""What ``cli.py sweep`` prints: progress, the top cells, walk-forward IS vs OOS."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from sweeps.objective import OBJECTIVES, explain_dsr


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
              names: dict[str, str] | None = None, percent: set[str] | None = None,
              width: int | None = None) -> list[str]:
    """The best qualified rows as text lines: a title, then an aligned table, or one block
    per row when the table is wider than ``width`` (values are never cut)."""
    from ratchet.common.terminal import table_lines

    rows = results[(results["phase"] == phase) & results["qualified"].astype(bool)]
    rows = rows.sort_values("objective", ascending=False).head(n)
    params = [c for c in results.columns if c.startswith("p_")]
    head = ["#", *[(names or {}).get(p[2:], p[2:]) for p in params],
            "objective", "sharpe", "total return", "max DD", "trades"]
    show = _pct if objective == "total_return" else _num
    body = [[str(i), *[_param(r[p], p[2:] in (percent or set())) for p in params],
             show(r["objective"]), _num(r.get("sharpe")), _pct(r.get("total_return")),
             _pct(r.get("max_drawdown")), str(int(r.get("trade_count") or 0))]
            for i, (_, r) in enumerate(rows.iterrows(), 1)]
    return [f"Top {len(rows)} cells by {OBJECTIVES[objective]}",
            *table_lines(head, body, width, right=range(len(head)))]


def walk_forward_table(wf: dict[str, Any], names: dict[str, str] | None = None,
                       width: int | None = None, percent: set[str] | None = None) -> list[str]:
    """Per window: the chosen cell, its in-sample and out-of-sample objective (text lines)."""
    from ratchet.common.terminal import table_lines

    head = ["window", "train", "test", "chosen", "IS", "OOS", "OOS return", "DSR"]
    body = []
    for w in wf["windows"]:
        chosen = "-" if not w.get("chosen") else ", ".join(
            f"{(names or {}).get(k, k)}={_param(v, k in (percent or set()))}"
            for k, v in w["chosen"].items())
        body.append([str(w["window"]), f"{w['train_start'][:10]}..{w['train_end'][:10]}",
                     f"{w['test_start'][:10]}..{w['test_end'][:10]}", chosen,
                     _num(w.get("is_objective")), _num(w.get("oos_objective")),
                     _pct(w.get("oos_total_return")), _num(w.get("dsr"))])
    return [f"Walk-forward: in-sample vs out-of-sample ({wf['objective']})",
            *table_lines(head, body, width, right=(0, 4, 5, 6, 7))]


def print_outcome(outcome: Any, plan: Any, console: Any, top: int) -> None:
    """The end-of-sweep summary: plain text that fits the terminal (``ratchet.common.terminal``)."""
    from ratchet.common.terminal import out_width

    width = out_width()

    def say(text: str, whole: bool = False) -> None:
        # markup off: '[last window; ...]' and paths are text, not rich tags; a path is
        # printed whole (soft wrap), never broken by a newline mid-path
        console.print(text, markup=False, highlight=False, soft_wrap=whole)

    res = outcome.results
    names = {p.field: p.name for p in plan.space.params}
    percent = {p.field for p in plan.space.params if p.percent}
    cells = res[res["phase"].isin(["cell", "train"])] if not res.empty else res
    qualified = int(cells["qualified"].sum()) if not cells.empty else 0
    say(f"Sweep finished: {outcome.computed} backtests run, {outcome.reused} reused "
        f"from earlier runs, {qualified}/{len(cells)} qualified "
        f"(>= {plan.min_trades} trades) in {outcome.seconds:,.1f}s")
    if outcome.walk_forward is None:
        if qualified:
            for line in top_table(res, plan.objective, top, names=names, percent=percent,
                                  width=width):
                say(line)
        else:
            say(f"No cell has {plan.min_trades}+ trades and a defined "
                f"{plan.objective}: lower --min-trades or widen the sweep")
        say(explain_dsr(outcome.dsr, outcome.n_trials))
    else:
        wf = outcome.walk_forward
        for line in walk_forward_table(wf, names, width=width, percent=percent):
            say(line)
        oos = wf["oos_stats"]
        say(f"In-sample (mean of the chosen cells): {_num(wf['is_objective_mean'])}  "
            f"| out-of-sample (stitched): {_num(wf['oos_objective'])}, total return "
            f"{_pct(oos.get('total_return'))}, Sharpe {_num(oos.get('sharpe'))}, "
            f"max DD {_pct(oos.get('max_drawdown'))}, {oos.get('trade_count', 0)} trades")
        dsrs = [w["dsr"] for w in wf["windows"] if w.get("dsr") is not None]
        last = wf["windows"][-1]
        say(explain_dsr(last.get("dsr"), int(last.get("trials") or 0))
            + (f" [last window; all windows: {', '.join(f'{d:.2f}' for d in dsrs)}]"
               if len(dsrs) > 1 else ""))
        say("Out-of-sample run folder (a run folder for cli.py report):")
        say(f"  {outcome.oos_dir}", whole=True)
    # the folder on a line of its own, as the backtest prints its run folder: never split
    say("Sweep folder (results.parquet; cli.py report FOLDER for the HTML report):")
    say(f"  {outcome.folder}", whole=True)
    say("In Python: from analyzers import load_sweep")
    say(f"  s = load_sweep('{outcome.folder}')", whole=True)


def params_text(params: str) -> str:
    """``{"fast_period": 5}`` -> ``fast_period=5``."""
    return ", ".join(f"{k}={v}" for k, v in json.loads(params).items())
