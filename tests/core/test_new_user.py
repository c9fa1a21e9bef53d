"""Issue 15, what a new user trips on: setting names and units, show-config, the backtest
summary in 80 columns, `runs`, CSV given to --data, exit codes, project files."""

from __future__ import annotations

import configparser
import json
import logging
import re
import tomllib
from pathlib import Path

import pytest

from ratchet.common.config import PARAMS, Settings, load_settings, load_settings_with_sources
from ratchet.common.errors import ConfigError
from tests.conftest import REPO, run_cli

COLUMNS_80 = {"COLUMNS": "80"}


def _clean_env(**extra: str) -> dict[str, str]:
    return {"RATCHET_CONFIG": "", **COLUMNS_80, **extra}


def _fits(text: str, width: int = 80) -> None:
    """Every line fits, except one holding a value (a long path) that fits no line: such
    values are never cut."""
    long = [ln for ln in text.splitlines() if len(ln) > width
            and max(len(w) for w in ln.split()) < width - 8]
    assert not long, long
    assert "…" not in text  # nothing cut


def test_one_name_and_unit_per_setting(tmp_path: Path) -> None:
    """Regression: `--risk 1` was percent but `risk_per_trade_pct` a fraction, and
    RATCHET_RISK=1 was an unknown setting."""
    cfg = tmp_path / "r.toml"
    cfg.write_text("trail_pct = 5\nfast = 5\n")
    env = {"RATCHET_RISK_PCT": "1", "RATCHET_MAX_POSITIONS": "3"}
    s, sources = load_settings_with_sources(cfg, {"max_position_pct": 20, "slow": None},
                                            environ=env)
    assert (s.risk_per_trade_pct, s.trail_stop_pct, s.max_position_pct) == (0.01, 0.05, 0.2)
    assert (s.fast_period, s.slow_period, s.max_positions) == (5, 30, 3)
    assert sources["risk_pct"] == "env RATCHET_RISK_PCT"
    assert sources["trail_pct"] == f"config file {cfg}"
    assert sources["max_position_pct"] == "flag --max-position-pct"
    assert sources["slow"] == "default"
    # every public name is its flag, its config key and its environment variable
    for p in PARAMS:
        assert p.flag == "--" + p.name.replace("_", "-") and p.env == "RATCHET_" + p.name.upper()
    with pytest.raises(ConfigError, match=r"risk_pct: 30 must be in \(0, 20\] \(percent"):
        load_settings(None, environ={"RATCHET_RISK_PCT": "30"})


def test_old_names_work_with_a_deprecation_warning(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "old.toml"
    cfg.write_text("risk_per_trade_pct = 0.01\nfast_period = 7\n")
    with caplog.at_level(logging.WARNING, logger="ratchet.common.config"):
        s = load_settings(cfg, environ={"RATCHET_RISK": "1.5", "RATCHET_TRAIL_STOP_PCT": "0.04"})
    assert (s.risk_per_trade_pct, s.fast_period, s.trail_stop_pct) == (0.015, 7, 0.04)
    text = caplog.text
    assert "risk_per_trade_pct is deprecated" in text and "write risk_pct = 1 instead" in text
    assert "write fast instead" in text
    assert "RATCHET_RISK is deprecated" in text and "RATCHET_RISK_PCT" in text
    assert "write RATCHET_TRAIL_PCT=4 instead" in text
    assert "Decimal(" not in text and "{'" not in text  # sentences, not reprs


def test_example_config_is_the_defaults_and_uses_current_names(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        s = load_settings(REPO / "config.example.toml", environ={})
    assert s == Settings()
    assert not caplog.records  # no deprecated or unit warnings


def test_show_config_takes_backtest_flags_shows_sources_and_round_trips(tmp_path: Path) -> None:
    """Regression: show-config took no strategy flags, gave no sources and listed 20 default
    symbols a backtest never uses."""
    cfg = tmp_path / "r.toml"
    cfg.write_text("fast = 5\n")
    proc = run_cli("show-config", "--config", str(cfg), "--symbols", "ACME",
                   "--risk-pct", "1", env=_clean_env(RATCHET_MAX_POSITIONS="3"))
    assert proc.returncode == 0, proc.stderr
    _fits(proc.stdout)
    values = tomllib.loads(proc.stdout)  # the output is itself a config file
    assert values["symbols"] == ["ACME"] and values["risk_pct"] == 1.0
    assert values["fast"] == 5 and values["max_positions"] == 3
    text = " ".join(proc.stdout.replace("#", " ").split())
    for source in ("from flag --risk-pct", "from env RATCHET_MAX_POSITIONS",
                   f"from config file {cfg}", "from flag --symbols"):
        assert source in text, source
    saved = tmp_path / "saved.toml"
    saved.write_text(proc.stdout)
    again = run_cli("show-config", "--config", str(saved), "--json", env=_clean_env())
    assert json.loads(again.stdout)["settings"] == {**values, "model": None,
                                                     "volume_participation": None}
    # No --symbols: what a backtest on the bundled bars would trade, not the 20 defaults.
    plain = run_cli("show-config", "--json", env=_clean_env())
    shown = json.loads(plain.stdout)
    assert shown["settings"]["symbols"] == ["ACME", "BOLT", "CRUX", "DYNA", "ECHO", "FLUX"]
    assert shown["sources"]["symbols"].startswith("every symbol in")


def test_backtest_summary_per_symbol_80_columns_report_name_and_runs(tmp_path: Path) -> None:
    """Regression: the summary had no per-symbol rows or buy-and-hold, `Run folder:` wrapped
    mid-path, there was no --report/--name and no `cli.py runs`."""
    older = tmp_path / "20200101-000000-backtest"
    older.mkdir()
    (older / "config.json").write_text(json.dumps({
        "name": "old one", "mode": "backtest", "created_at": "2020-01-01T00:00:00+00:00",
        "symbols": ["X"]}))
    (older / "stats.json").write_text(json.dumps({"total_return": 0.1, "trade_count": 3}))
    proc = run_cli("backtest", "--symbols", "ACME,BOLT", "--start", "2025-10-06", "--end",
                   "2025-10-08", "--out", str(tmp_path), "--name", "my first run", "--report",
                   "--risk", "1", env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    _fits(proc.stdout)
    # the deprecated flag still works and says what to write instead, in a sentence
    assert "--risk is deprecated" in proc.stderr and "--risk-pct" in proc.stderr
    run_dir = max(p for p in tmp_path.iterdir() if p != older)
    assert f"Run folder:\n  {run_dir}\n" in proc.stdout
    stats = json.loads((run_dir / "stats.json").read_text())
    assert set(stats["symbols"]) == {"ACME", "BOLT"}
    for sym, row in stats["symbols"].items():
        assert set(row) == {"trades", "win_rate", "pnl", "exposure", "buy_hold_return"}
        assert re.search(rf"^{sym}\s+{row['trades']}\s+", proc.stdout, re.M), sym
    assert sum(r["trades"] for r in stats["symbols"].values()) == stats["trade_count"]
    assert stats["buy_hold_traded_return"] is not None
    assert "Buy and hold" in proc.stdout and "traded symbols" in proc.stdout
    assert (run_dir / "report.html").is_file() and str(run_dir / "report.html") in proc.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert config["name"] == "my first run" and config["settings"]["risk_pct"] == 1

    listed = run_cli("runs", "--out", str(tmp_path), env=_clean_env())
    assert listed.returncode == 0, listed.stderr
    _fits(listed.stdout)
    out = listed.stdout
    assert out.index(run_dir.name) < out.index("my first run") < out.index("old one")
    newest = out[out.index("my first run"):out.index(older.name)]  # newest first
    assert "ACME,BOLT" in newest and f"{stats['total_return'] * 100:+.2f}%" in newest
    wide = run_cli("runs", "--out", str(tmp_path), env={"COLUMNS": "200"})
    row = next(ln for ln in wide.stdout.splitlines() if "my first run" in ln)
    assert row.startswith(run_dir.name) and "ACME,BOLT" in row  # one row per run


def test_csv_given_to_backtest_data_says_import_it_first(tmp_path: Path) -> None:
    """Regression: a CSV given to --data said "not a readable Parquet file"."""
    csv = tmp_path / "AAPL.csv"
    csv.write_text("Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,0.5,1.5,100\n")
    for target in (csv, tmp_path):
        proc = run_cli("backtest", "--data", str(target), env=_clean_env())
        assert proc.returncode == 3
        assert "Traceback" not in proc.stderr
        assert "not a readable Parquet" not in proc.stderr
        assert "data import" in proc.stderr and "first" in proc.stderr


def test_every_exit_code_is_documented() -> None:
    """Regression: exit code 4 (connection refused) was missing from the README."""
    from ratchet.common import errors

    codes = {getattr(c, "exit_code", None) for c in vars(errors).values()
             if isinstance(c, type) and issubclass(c, Exception)} - {None}
    codes |= {0, 1, 130}
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Exit codes"):]
    section = section[: section.index("\n## ", 5)]
    for code in codes:
        assert re.search(rf"^\| `{code}` \|", section, re.M), code


def test_deliberate_exit_1_is_documented() -> None:
    """Regression: `cli.py parity` exits 1 when decisions drift (and `alert-test` when a URL
    is not delivered), but the README's exit-code table called 1 only "a bug"."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Exit codes"):]
    row = next(ln for ln in section.splitlines() if ln.startswith("| `1` |"))
    for command in ("parity", "alert-test"):
        source = (REPO / "ratchet" / "commands" / f"{command.replace('-', '_')}.py").read_text()
        assert "sys.exit(" in source and command in row, command


def test_project_files_gitignore_and_notebook_extra() -> None:
    ignored = (REPO / ".gitignore").read_text().split()
    assert "data/realtime-sim/" in ignored
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    extra = cfg["options.extras_require"]["notebook"]
    assert "nbconvert" in extra and "ipykernel" in extra
    assert "'.[notebook]'" in (REPO / "README.md").read_text()


def test_connection_refused_is_exit_4_with_a_whole_sentence(tmp_path: Path) -> None:
    """Regression: exit code 4 printed a urllib3 repr cut off mid-word."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cli("paper", "--base-url", f"http://127.0.0.1:{port}", "--symbols", "ACME",
                   "--state-dir", str(tmp_path / "st"), "--log-dir", str(tmp_path / "lg"),
                   env=_clean_env(APCA_API_KEY_ID="abcd1234", APCA_API_SECRET_KEY="x" * 16),
                   cwd=tmp_path)
    assert proc.returncode == 4
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in proc.stderr
    assert f"cannot connect to 127.0.0.1:{port} (connection refused" in last
    assert "HTTPConnectionPool" not in proc.stderr


def test_start_after_the_data_names_the_time_plainly(tmp_path: Path) -> None:
    """Regression: the error printed a datetime repr ('2030-01-01 00:00:00+00:00')."""
    proc = run_cli("backtest", "--symbols", "ACME", "--start", "2030-01-01", "--out",
                   str(tmp_path), env=_clean_env())
    assert proc.returncode == 3
    assert "no bars on or after 2030-01-01 00:00 UTC (check --start/--end)" in proc.stderr
    assert "+00:00" not in proc.stderr and "Traceback" not in proc.stderr


def test_banner_says_when_the_extended_session_trades(tmp_path: Path) -> None:
    """Regression: `--extended-hours` changed which bars trade (issue 10) but the banner
    read exactly like a regular-hours run."""
    proc = run_cli("backtest", "--symbols", "ACME", "--start", "2025-10-06", "--end",
                   "2025-10-06", "--extended-hours", "--no-progress", "--out", str(tmp_path),
                   env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    assert "(1Min bars, extended hours)" in " ".join(proc.stdout.split())
