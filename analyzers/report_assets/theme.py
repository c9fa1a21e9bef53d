"""The report's look: one palette shared by the CSS and the matplotlib charts."""

from __future__ import annotations

from typing import Any

INK = "#1f2933"
MUTED = "#6b7785"
GRID = "#e4e8ee"
PAPER = "#ffffff"

STRATEGY = "#2f6fdf"
BENCHMARK = "#9aa5b1"
PRICE = "#3e4c59"
STOP_LINE = "#d64545"
ENTRY = "#1f9d6b"
GAIN = "#1f9d6b"
LOSS = "#d64545"

#: Exit reason -> marker colour (SPEC's words); anything else gets ``OTHER_REASON``.
REASON_COLOURS: dict[str, str] = {
    "signal": "#5b5bd6",
    "stop": "#d64545",
    "trail": "#e08a1e",
}
OTHER_REASON = "#7b8794"

#: Line colours of runs shown side by side (colour-blind friendly order).
RUN_COLOURS: tuple[str, ...] = (
    "#2f6fdf", "#e08a1e", "#1f9d6b", "#a24fc6", "#d64545", "#17a2b8", "#8a6d3b", "#5b5bd6",
)  # fmt: skip


def reason_colour(reason: str) -> str:
    """Marker colour of an exit reason."""
    return REASON_COLOURS.get(str(reason), OTHER_REASON)


def run_colour(i: int) -> str:
    """Colour of the ``i``-th run in side-by-side charts."""
    return RUN_COLOURS[i % len(RUN_COLOURS)]


#: matplotlib rc parameters applied (via ``rc_context``) while a chart is drawn.
MPL_STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlecolor": INK,
    "axes.labelsize": 9,
    "axes.labelcolor": MUTED,
    "axes.edgecolor": GRID,
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": GRID,
    "grid.linewidth": 0.7,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "xtick.major.size": 0,
    "ytick.major.size": 0,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "figure.facecolor": PAPER,
    "axes.facecolor": PAPER,
    "savefig.facecolor": PAPER,
}

CSS = """
:root {
  --ink: #1f2933; --muted: #6b7785; --line: #e4e8ee; --bg: #f4f6f9; --card: #ffffff;
  --accent: #2f6fdf; --gain: #1a8a5e; --loss: #c53b3b; --chip: #eef2f7;
}
* { box-sizing: border-box; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue",
        Arial, sans-serif;
}
.page { max-width: 1200px; margin: 0 auto; padding: 28px 24px 48px; }
.topbar { display: flex; justify-content: space-between; align-items: baseline;
  flex-wrap: wrap; gap: 8px; margin-bottom: 18px; }
.topbar h1 { font-size: 22px; margin: 0; letter-spacing: -0.01em; }
.topbar .brand { color: var(--accent); }
.topbar .meta { color: var(--muted); font-size: 12.5px; }
nav.runs { display: flex; flex-wrap: wrap; gap: 8px; margin: 0 0 18px; }
nav.runs a { text-decoration: none; color: var(--ink); background: var(--card);
  border: 1px solid var(--line); border-radius: 999px; padding: 4px 12px; font-size: 12.5px; }
nav.runs a:hover { border-color: var(--accent); }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 3px;
  margin-right: 6px; vertical-align: baseline; }
section.run { margin-top: 36px; }
section.run:first-of-type { margin-top: 0; }
.run-head { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
  padding: 18px 20px; margin-bottom: 14px; }
.run-head h2 { margin: 0 0 4px; font-size: 19px; font-weight: 650; display: flex;
  align-items: center; gap: 10px; flex-wrap: wrap; }
.run-head .sub { color: var(--muted); font-size: 13px; }
.badge { font-size: 11px; font-weight: 600; text-transform: uppercase; letter-spacing: .06em;
  border-radius: 6px; padding: 2px 8px; background: #e3ecfb; color: #234e9c; }
.badge.paper { background: #fdf0dc; color: #8a5a12; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 10px; }
.chip { background: var(--chip); border-radius: 6px; padding: 2px 8px; font-size: 12px;
  color: #3e4c59; }
.chip b { font-weight: 600; color: var(--ink); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr));
  gap: 12px; margin-bottom: 14px; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
  padding: 12px 14px; }
.stat .label { color: var(--muted); font-size: 11.5px; text-transform: uppercase;
  letter-spacing: .05em; }
.stat .value { font-size: 24px; font-weight: 650; font-variant-numeric: tabular-nums;
  letter-spacing: -0.01em; margin-top: 2px; }
.stat .note { color: var(--muted); font-size: 12px; font-variant-numeric: tabular-nums; }
.pos { color: var(--gain); } .neg { color: var(--loss); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
  padding: 16px 18px; margin-bottom: 14px; overflow-x: auto; }
.card h3 { margin: 0 0 2px; font-size: 15px; font-weight: 650; }
.card .hint { color: var(--muted); font-size: 12.5px; margin: 0 0 10px; }
.card img { width: 100%; height: auto; display: block; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr));
  gap: 14px; }
.grid2 { margin-bottom: 14px; }
.grid2 > .card { margin-bottom: 0; }
.empty { background: #f7f9fb; border: 1px dashed #cdd5df; border-radius: 10px;
  padding: 18px; text-align: center; color: var(--muted); font-size: 13.5px; }
.empty b { color: var(--ink); }
.empty.spaced { margin-bottom: 14px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums;
  font-size: 13px; }
small { color: var(--muted); font-size: 11.5px; }
th, td { padding: 6px 8px; text-align: right; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
th { color: var(--muted); font-weight: 600; font-size: 11.5px; text-transform: uppercase;
  letter-spacing: .04em; }
th:first-child, td:first-child { text-align: left; }
td.text, th.text { text-align: left; }
tr:last-child td { border-bottom: none; }
tr.total td { font-weight: 650; border-top: 1.5px solid #cdd5df; }
table.kv td:first-child { color: var(--muted); }
table.kv td { white-space: normal; }
td.best { font-weight: 700; }
table.compare td:first-child { white-space: normal; min-width: 240px; }
table.heat td { text-align: center; min-width: 52px; font-size: 12.5px; }
table.heat td:first-child { text-align: left; font-weight: 600; }
table.heat td.year { font-weight: 650; border-left: 1.5px solid #cdd5df; }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%;
  margin-right: 7px; }
details { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
  padding: 12px 18px; margin-bottom: 14px; }
details summary { cursor: pointer; font-weight: 650; font-size: 15px; }
details[open] summary { margin-bottom: 10px; }
.scroll { max-height: 480px; overflow: auto; }
.scroll thead th { position: sticky; top: 0; background: var(--card); }
footer { color: var(--muted); font-size: 12px; margin-top: 32px; text-align: center; }
@media (max-width: 720px) {
  .page { padding: 16px 10px 32px; }
  .grid2 { grid-template-columns: 1fr; }
  .stat .value { font-size: 20px; }
}
@media print {
  body { background: #fff; }
  .card, .stat, .run-head, details { break-inside: avoid; }
}
"""
