"""The one configuration object, with SPEC defaults.

Precedence, lowest to highest: defaults, then a config file (TOML or JSON), then environment
variables ``RATCHET_<FIELD>`` (e.g. ``RATCHET_MAX_POSITIONS=3``), then CLI flags. The result is
a frozen, validated ``Settings``. API keys are not settings: they live in
``brokers.alpaca.credentials`` and never pass through here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from common.errors import ConfigError

logger = logging.getLogger(__name__)

ENV_PREFIX = "RATCHET_"

#: keys a config file (and ``RATCHET_*``) may hold that are not ``Settings``: the alert URLs
#: are secrets and must never reach ``Settings`` (it is written to every run folder)
NOT_SETTINGS: frozenset[str] = frozenset({"alerts", "alert_level"})

#: 20 liquid US stocks (SPEC default universe for paper trading).
DEFAULT_SYMBOLS: tuple[str, ...] = (
    "AAPL", "MSFT", "AMZN", "GOOGL", "META", "NVDA", "TSLA", "JPM", "V", "JNJ",
    "WMT", "PG", "XOM", "UNH", "HD", "BAC", "MA", "DIS", "KO", "PEP",
)  # fmt: skip

#: Bar intervals the project understands, in Alpaca's notation, with their length in seconds.
INTERVAL_SECONDS: dict[str, int] = {
    "1Min": 60,
    "2Min": 120,
    "3Min": 180,
    "5Min": 300,
    "10Min": 600,
    "15Min": 900,
    "30Min": 1800,
    "1Hour": 3600,
    "1Day": 86400,
}


def interval_seconds(interval: str) -> int:
    """Length of a bar interval such as ``"5Min"`` in seconds, or a ``ConfigError``."""
    try:
        return INTERVAL_SECONDS[interval]
    except KeyError:
        raise ConfigError(
            f"unknown bar interval {interval!r}: use one of {', '.join(INTERVAL_SECONDS)}"
        ) from None


@dataclass(frozen=True)
class Settings:
    """Every tunable of the strategy and its runs. Defaults are the SPEC's."""

    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    bar_interval: str = "1Min"
    loop_interval_seconds: int = 60
    # Signal
    signal: str = "ma"
    fast_period: int = 10
    slow_period: int = 30
    model_path: str | None = None
    ml_enter_threshold: float = 0.55
    ml_exit_threshold: float = 0.45
    # Sizing and risk
    risk_per_trade_pct: float = 0.02
    max_position_pct: float = 0.10
    max_positions: int = 5
    atr_period: int = 14
    atr_stop_multiplier: float = 2.0
    trail_stop_pct: float = 0.03
    fractional_shares: bool = False
    # Order flow
    use_limit_orders: bool = True
    limit_order_timeout: float = 30.0
    extended_hours: bool = False
    strategy_id: str = "ratchet"
    # Backtest broker
    cash: float = 100_000.0
    commission: float = 0.0
    #: Largest fraction of a bar's volume one order may fill on that bar (None: no cap).
    volume_participation: float | None = None

    def __post_init__(self) -> None:  # noqa: C901 - one flat list of checks
        problems: list[str] = []
        if not self.symbols:
            problems.append("symbols: give at least one symbol")
        if any(not s or not s.replace(".", "").replace("-", "").isalnum() for s in self.symbols):
            problems.append(f"symbols: not valid ticker symbols: {list(self.symbols)}")
        if self.bar_interval not in INTERVAL_SECONDS:
            problems.append(
                f"bar_interval: {self.bar_interval!r} is not one of {', '.join(INTERVAL_SECONDS)}"
            )
        if self.signal not in ("ma", "ml"):
            problems.append(f"signal: {self.signal!r} must be 'ma' or 'ml'")
        if self.signal == "ml" and not self.model_path:
            problems.append("model_path: --signal ml needs --model FILE (train one: cli.py train)")
        if not 0 < self.fast_period < self.slow_period:
            problems.append(
                f"fast_period/slow_period: need 0 < fast < slow, got {self.fast_period}/"
                f"{self.slow_period}"
            )
        if not 0 < self.risk_per_trade_pct <= 0.2:
            problems.append(
                f"risk_per_trade_pct: {self.risk_per_trade_pct} must be in (0, 0.2] "
                "(a fraction: 0.02 is 2%; --risk takes percent)"
            )
        if not 0 < self.max_position_pct <= 1:
            problems.append(f"max_position_pct: {self.max_position_pct} must be in (0, 1]")
        if self.max_positions < 1:
            problems.append(f"max_positions: {self.max_positions} must be at least 1")
        if self.atr_period < 1:
            problems.append(f"atr_period: {self.atr_period} must be at least 1")
        if self.atr_stop_multiplier <= 0:
            problems.append(f"atr_stop_multiplier: {self.atr_stop_multiplier} must be > 0")
        if not 0 < self.trail_stop_pct < 1:
            problems.append(f"trail_stop_pct: {self.trail_stop_pct} must be in (0, 1)")
        if self.limit_order_timeout < 0:
            problems.append(f"limit_order_timeout: {self.limit_order_timeout} must be >= 0")
        if not 0 <= self.ml_exit_threshold <= self.ml_enter_threshold <= 1:
            problems.append(
                "ml thresholds: need 0 <= exit <= enter <= 1, got "
                f"{self.ml_exit_threshold}/{self.ml_enter_threshold}"
            )
        if self.cash <= 0:
            problems.append(f"cash: {self.cash} must be > 0")
        if self.commission < 0:
            problems.append(f"commission: {self.commission} must be >= 0")
        if self.volume_participation is not None and not 0 < self.volume_participation <= 1:
            problems.append(
                f"volume_participation: {self.volume_participation} must be in (0, 1]"
            )
        if self.loop_interval_seconds < 1:
            problems.append("loop_interval_seconds: must be at least 1")
        if not self.strategy_id or not self.strategy_id.replace("_", "").isalnum():
            problems.append(
                f"strategy_id: {self.strategy_id!r} must be letters, digits or '_' "
                "(it is part of every client order id)"
            )
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    @property
    def bar_seconds(self) -> int:
        """Length of one bar in seconds."""
        return INTERVAL_SECONDS[self.bar_interval]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["symbols"] = list(self.symbols)
        return out

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)


FIELD_NAMES: frozenset[str] = frozenset(f.name for f in fields(Settings))


def _field_type(name: str) -> Any:
    hints = typing.get_type_hints(Settings)
    return hints[name]


def coerce(name: str, value: Any, source: str) -> Any:
    """Convert ``value`` (from a file, env or CLI) to the type of field ``name``."""
    if name not in FIELD_NAMES:
        raise ConfigError(
            f"{source}: unknown setting {name!r}; known settings: {', '.join(sorted(FIELD_NAMES))}"
        )
    tp = _field_type(name)
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    try:
        if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none")):
            if optional:
                return None
            raise ValueError("a value is required")
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if typing.get_origin(tp) is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(s).strip().upper() for s in items if str(s).strip())
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("expected a whole number")
            return int(value)
        if tp is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: bad value {value!r} for {name}: {exc}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON config file of ``name = value`` settings."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: check the --config path")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
        else:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML/JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a table of settings at the top level")
    # Allow the settings to sit under a [ratchet] table too.
    if set(raw) == {"ratchet"} and isinstance(raw["ratchet"], dict):
        raw = raw["ratchet"]
    return {k: coerce(k, v, f"config file {path}") for k, v in raw.items()
            if k not in NOT_SETTINGS}


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings from ``RATCHET_<FIELD>`` environment variables."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in ("config",) or name in NOT_SETTINGS:  # the file, alerts: not settings
            continue
        out[name] = coerce(name, value, f"environment variable {key}")
    return out


def load_settings(
    config_file: Path | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base: Settings | None = None,
) -> Settings:
    """Build the effective ``Settings``: defaults < file < env < CLI flags.

    ``cli_overrides`` values of ``None`` mean "flag not given" and are skipped.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        values.update(read_config_file(config_file))
    values.update(read_env(env))
    for name, value in (cli_overrides or {}).items():
        if value is not None:
            values[name] = coerce(name, value, f"option --{name.replace('_', '-')}")
    settings = dataclasses.replace(base or Settings(), **values)
    logger.debug("settings: %s", settings)
    return settings
