"""``AlpacaConfig``: the live run's typed settings, layered like ``Settings``."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ratchet.common.alpaca_config import PAPER_URL, AlpacaConfig, load_alpaca_config
from ratchet.common.config import load_settings
from ratchet.common.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_old_paper_defaults() -> None:
    cfg, sources = load_alpaca_config(None, {}, environ={})
    assert cfg == AlpacaConfig()
    assert (cfg.base_url, cfg.feed, cfg.warmup_days, cfg.clock_poll) == (PAPER_URL, "iex", 5.0,
                                                                          30.0)
    assert (cfg.bar_grace, cfg.connect_timeout, cfg.requests_per_minute) == (2.0, 20.0, 200.0)
    assert (cfg.stop_grace, cfg.stop_audit, cfg.once_fill_wait) == (None, 60.0, 5.0)
    assert cfg.silence_for(60) == 120.0 and cfg.silence_for(300) == 600.0
    assert set(sources.values()) == {"default"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.feed = "sip"  # type: ignore[misc]


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg_file = tmp_path / "r.toml"
    cfg_file.write_text('max_positions = 3\n[alpaca]\nfeed = "sip"\nclock_poll = 10\n'
                        "warmup_days = 2\nstream_silence = 300\n")
    env = {"RATCHET_ALPACA_CLOCK_POLL": "7", "RATCHET_ALPACA_STOP_GRACE": "none",
           "RATCHET_ALPACA_CANCEL_ENTRIES_ON_EXIT": "false"}
    cfg, sources = load_alpaca_config(cfg_file, {"warmup_days": 3.0, "feed": None},
                                      environ=env)
    assert cfg.feed == "sip" and sources["feed"] == f"config file {cfg_file}"  # None: no flag
    assert cfg.clock_poll == 7.0 and sources["clock_poll"] == "env RATCHET_ALPACA_CLOCK_POLL"
    assert cfg.warmup_days == 3.0 and sources["warmup_days"] == "flag --warmup-days"
    assert cfg.stream_silence == 300.0 and cfg.stop_grace is None
    assert cfg.cancel_entries_on_exit is False
    # the strategy's Settings read the same file and environment and ignore [alpaca]
    assert load_settings(cfg_file, environ=env).max_positions == 3


def test_ratchet_and_alpaca_tables_side_by_side(tmp_path: Path) -> None:
    """Before: a file with ``[ratchet]`` and another table was refused ("unknown setting
    'ratchet'"); the settings may sit under ``[ratchet]`` beside ``[alpaca]``."""
    cfg_file = tmp_path / "r.toml"
    cfg_file.write_text('[ratchet]\natr_period = 20\n[alpaca]\nfeed = "sip"\n')
    assert load_settings(cfg_file, environ={}).atr_period == 20
    assert load_alpaca_config(cfg_file, environ={})[0].feed == "sip"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[alpaca]\nfeed = "xyz"', "feed: 'xyz' must be one of iex, sip"),
        ("[alpaca]\nclock_poll = -1", "clock_poll: -1 must be > 0 seconds"),
        ("[alpaca]\nclock_pol = 1", "unknown alpaca setting 'clock_pol'"),
        ('[alpaca]\nwarmup_days = "many"', "bad value 'many' for warmup_days"),
        ('[alpaca]\nbase_url = "paper-api.alpaca.markets"', "base_url: .* must be an http"),
        ('[alpaca]\ndata_stream_url = "http://127.0.0.1:1/v2/iex"', "must be a ws"),
        ('alpaca = "sip"', "alpaca must be a table"),
    ],
)
def test_bad_alpaca_settings_are_one_clear_error(tmp_path: Path, text: str,
                                                 match: str) -> None:
    cfg_file = tmp_path / "r.toml"
    cfg_file.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_alpaca_config(cfg_file, environ={})


def test_alpaca_env_variables_are_not_strategy_settings() -> None:
    """``RATCHET_ALPACA_FEED`` must not reach ``Settings`` (it would be an unknown setting)."""
    env = {"RATCHET_ALPACA_FEED": "sip", "RATCHET_MAX_POSITIONS": "4"}
    assert load_settings(None, environ=env).max_positions == 4
    assert load_alpaca_config(None, environ=env)[0].feed == "sip"


def test_loop_interval_seconds_is_ignored_with_a_warning(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """``loop_interval_seconds`` was validated but never read: it is no setting any more, and
    an old config file that sets it still loads, with a warning that says why."""
    cfg_file = tmp_path / "r.toml"
    cfg_file.write_text("loop_interval_seconds = 30\nmax_positions = 2\n")
    with caplog.at_level(logging.WARNING):
        settings = load_settings(cfg_file, environ={})
    assert settings.max_positions == 2 and not hasattr(settings, "loop_interval_seconds")
    assert "loop_interval_seconds is ignored" in caplog.text
    assert "every closed bar" in caplog.text


def test_paper_refuses_a_bad_alpaca_table_in_one_line(tmp_path: Path) -> None:
    cfg_file = tmp_path / "r.toml"
    cfg_file.write_text('[alpaca]\nfeed = "xyz"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATCHET_")}
    out = subprocess.run([sys.executable, str(REPO / "cli.py"), "paper", "--config",
                          str(cfg_file), "--state-dir", str(tmp_path / "s"), "--log-dir",
                          str(tmp_path / "l")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "feed: 'xyz' must be one of iex, sip" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_show_config_paper_prints_the_alpaca_table_it_reads_back(tmp_path: Path) -> None:
    cfg_file = tmp_path / "r.toml"
    cfg_file.write_text('[alpaca]\nfeed = "sip"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATCHET_")}
    env["RATCHET_ALPACA_CLOCK_POLL"] = "12"
    out = subprocess.run([sys.executable, str(REPO / "cli.py"), "show-config", "--paper",
                          "--config", str(cfg_file)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "feed = \"sip\"" in out.stdout and "env RATCHET_ALPACA_CLOCK_POLL" in out.stdout
    saved = tmp_path / "saved.toml"
    saved.write_text(out.stdout)
    again, _ = load_alpaca_config(saved, environ={})
    assert (again.feed, again.clock_poll) == ("sip", 12.0)
