"""Settings: SPEC defaults, precedence defaults < file < env < CLI, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratchet.common.config import Settings, load_settings
from ratchet.common.errors import ConfigError


def test_spec_defaults() -> None:
    s = Settings()
    assert (s.risk_per_trade_pct, s.max_position_pct, s.max_positions) == (0.02, 0.10, 5)
    assert (s.atr_period, s.atr_stop_multiplier, s.trail_stop_pct) == (14, 2.0, 0.03)
    assert (s.use_limit_orders, s.limit_order_timeout) == (True, 30.0)
    assert (s.fast_period, s.slow_period, s.bar_interval) == (10, 30, "1Min")
    assert len(s.symbols) == 20
    assert s.fractional_shares is False


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text("max_positions = 3\nfast_period = 5\nsymbols = ['aaa', 'bbb']\n")
    env = {"RATCHET_MAX_POSITIONS": "4", "RATCHET_USE_LIMIT_ORDERS": "false"}
    s = load_settings(cfg, {"fast_period": 7, "slow_period": None}, environ=env)
    assert s.max_positions == 4  # env beats file
    assert s.fast_period == 7  # CLI beats file
    assert s.slow_period == 30  # None = flag not given
    assert s.use_limit_orders is False
    assert s.symbols == ("AAA", "BBB")


def test_json_config_and_ratchet_table(tmp_path: Path) -> None:
    j = tmp_path / "c.json"
    j.write_text('{"trail_stop_pct": 0.05}')
    assert load_settings(j, environ={}).trail_stop_pct == 0.05
    t = tmp_path / "c.toml"
    t.write_text("[ratchet]\natr_period = 20\n")
    assert load_settings(t, environ={}).atr_period == 20


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("max_positionz = 3", "unknown setting 'max_positionz'"),
        ("max_positions = 'many'", "bad value 'many' for max_positions"),
        ("fast_period = 40", "need 0 < fast < slow"),
        ("risk_per_trade_pct = 2", r"risk_pct: 200 must be in \(0, 20\] \(percent"),
        ("risk_pct = 0.5\nrisk_pct = 50", "not valid TOML"),
        ("risk_pct = 50", r"risk_pct: 50 must be in \(0, 20\]"),
        ("this is = not toml =", "not valid TOML/JSON"),
    ],
)
def test_bad_config_file_is_one_clear_error(tmp_path: Path, text: str, match: str) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(cfg, environ={})


def test_bad_env_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="RATCHET_ATR_PERIOD"):
        load_settings(None, environ={"RATCHET_ATR_PERIOD": "x"})


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.max_positions = 9  # type: ignore[misc]
    assert s.replace(max_positions=9).max_positions == 9


def test_ml_signal_needs_a_model() -> None:
    with pytest.raises(ConfigError, match="--model"):
        Settings(signal="ml")


def test_settings_from_saved_reads_both_config_json_layouts() -> None:
    """Regression (merge of issues 15 and 16): `cli.py parity` built Settings from
    config.json's public names as if they were attribute names, so max_position_pct = 10
    (percent) became 1000% and the run was refused."""
    from ratchet.common.config import public_settings, settings_from_saved

    s = Settings(symbols=("ACME",), risk_per_trade_pct=0.01, max_position_pct=0.2,
                 trail_stop_pct=0.05, fast_period=7)
    assert settings_from_saved(public_settings(s)) == s
    old = {"symbols": ["ACME"], "risk_per_trade_pct": 0.01, "max_position_pct": 0.2,
           "trail_stop_pct": 0.05, "fast_period": 7}
    assert settings_from_saved(old) == s
