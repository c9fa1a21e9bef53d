"""The one configuration object, with SPEC defaults.

Precedence, lowest to highest: defaults, then a config file (TOML or JSON), then environment
variables ``RATCHET_<NAME>`` (e.g. ``RATCHET_MAX_POSITIONS=3``), then CLI flags. Each setting
has ONE public name and unit (``PARAMS``): flag ``--risk-pct 1``, file ``risk_pct = 1``,
``RATCHET_RISK_PCT=1`` and ``show-config`` all say the same thing (percentages in percent).
Old names (``risk_per_trade_pct`` as a fraction, ``fast_period``...) still work with a
deprecation warning (``DEPRECATED``). The result is a frozen, validated ``Settings`` whose
attributes keep their internal names and units (fractions). API keys are not settings: they live in
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

from ratchet.common.errors import ConfigError

logger = logging.getLogger(__name__)

ENV_PREFIX = "RATCHET_"

#: keys a config file (and ``RATCHET_*``) may hold that are not ``Settings``: the alert URLs
#: are secrets and must never reach ``Settings`` (it is written to every run folder)
NOT_SETTINGS: frozenset[str] = frozenset({"alerts", "alert_level", "alpaca"})

#: the ``[alpaca]`` table and ``RATCHET_ALPACA_*``: ``ratchet.common.alpaca_config.AlpacaConfig``
ALPACA_ENV_NAMES = "alpaca_"

#: Names that once were settings and no longer do anything: accepted with a warning so an
#: old config file still loads. ``loop_interval_seconds`` (SPEC's table, 60) never drove
#: anything: the live loop steps on each closed bar of ``interval``, as the backtest does.
IGNORED: dict[str, str] = {
    "loop_interval_seconds": "the paper loop steps on every closed bar of --interval "
                             "(1Min: every 60 s); set the interval instead",
}

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
                f"interval: {self.bar_interval!r} is not one of {', '.join(INTERVAL_SECONDS)}"
            )
        if self.signal not in ("ma", "ml"):
            problems.append(f"signal: {self.signal!r} must be 'ma' or 'ml'")
        if self.signal == "ml" and not self.model_path:
            problems.append("model: --signal ml needs --model FILE (train one: cli.py train)")
        if not 0 < self.fast_period < self.slow_period:
            problems.append(
                f"fast/slow: need 0 < fast < slow, got {self.fast_period}/"
                f"{self.slow_period}"
            )
        if not 0 < self.risk_per_trade_pct <= 0.2:
            problems.append(
                f"risk_pct: {self.risk_per_trade_pct * 100:g} must be in (0, 20] "
                "(percent of equity: 2 is 2%)"
            )
        if not 0 < self.max_position_pct <= 1:
            problems.append(f"max_position_pct: {self.max_position_pct * 100:g} must be in "
                            "(0, 100] (percent of equity: 10 is 10%)")
        if self.max_positions < 1:
            problems.append(f"max_positions: {self.max_positions} must be at least 1")
        if self.atr_period < 1:
            problems.append(f"atr_period: {self.atr_period} must be at least 1")
        if self.atr_stop_multiplier <= 0:
            problems.append(f"atr_mult: {self.atr_stop_multiplier} must be > 0")
        if not 0 < self.trail_stop_pct < 1:
            problems.append(f"trail_pct: {self.trail_stop_pct * 100:g} must be in (0, 100) "
                            "(percent below the highest high: 3 is 3%)")
        if self.limit_order_timeout < 0:
            problems.append(f"limit_timeout: {self.limit_order_timeout} must be >= 0 seconds")
        if not 0 <= self.ml_exit_threshold <= self.ml_enter_threshold <= 1:
            problems.append(
                "ml_enter/ml_exit: need 0 <= ml_exit <= ml_enter <= 1, got "
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


@dataclass(frozen=True)
class Param:
    """One user-facing setting: the same name as a flag (``--risk-pct``), a config-file key
    (``risk_pct = 1``), an environment variable (``RATCHET_RISK_PCT=1``) and a
    ``show-config`` row, in one unit. ``field`` is the ``Settings`` attribute it sets;
    ``scale`` converts: attribute value = public value / scale (percent -> fraction)."""

    name: str
    field: str
    unit: str = ""
    scale: float = 1.0

    @property
    def flag(self) -> str:
        """The command-line flag of this setting."""
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        """The environment variable of this setting."""
        return ENV_PREFIX + self.name.upper()

    def to_public(self, value: Any) -> Any:
        """The attribute value in this setting's public unit."""
        if self.scale != 1.0 and isinstance(value, int | float) and not isinstance(value, bool):
            return round(value * self.scale, 10)
        if isinstance(value, tuple):
            return list(value)
        return value


#: Every user-facing setting, in show-config order.
PARAMS: tuple[Param, ...] = (
    Param("symbols", "symbols"),
    Param("interval", "bar_interval"),
    Param("signal", "signal"),
    Param("fast", "fast_period", "bars"),
    Param("slow", "slow_period", "bars"),
    Param("model", "model_path"),
    Param("ml_enter", "ml_enter_threshold", "probability"),
    Param("ml_exit", "ml_exit_threshold", "probability"),
    Param("risk_pct", "risk_per_trade_pct", "% of equity", 100.0),
    Param("max_position_pct", "max_position_pct", "% of equity", 100.0),
    Param("max_positions", "max_positions"),
    Param("atr_period", "atr_period", "bars"),
    Param("atr_mult", "atr_stop_multiplier", "x ATR"),
    Param("trail_pct", "trail_stop_pct", "% below the high", 100.0),
    Param("fractional", "fractional_shares"),
    Param("limit_orders", "use_limit_orders"),
    Param("limit_timeout", "limit_order_timeout", "seconds"),
    Param("extended_hours", "extended_hours"),
    Param("strategy_id", "strategy_id"),
    Param("cash", "cash", "$"),
    Param("commission", "commission", "fraction of value"),
    Param("volume_participation", "volume_participation", "fraction of bar volume"),
)
PUBLIC: dict[str, Param] = {p.name: p for p in PARAMS}
BY_FIELD: dict[str, Param] = {p.field: p for p in PARAMS}

#: Old setting names (before 0.2) -> (public name, factor old value -> public unit). They
#: still work in config files, environment variables and flags, with a warning.
DEPRECATED: dict[str, tuple[str, float]] = {
    "risk_per_trade_pct": ("risk_pct", 100.0),
    "risk": ("risk_pct", 1.0),
    "trail_stop_pct": ("trail_pct", 100.0),
    "trail": ("trail_pct", 100.0),
    "atr_stop_multiplier": ("atr_mult", 1.0),
    "fast_period": ("fast", 1.0),
    "slow_period": ("slow", 1.0),
    "bar_interval": ("interval", 1.0),
    "model_path": ("model", 1.0),
    "ml_enter_threshold": ("ml_enter", 1.0),
    "ml_exit_threshold": ("ml_exit", 1.0),
    "fractional_shares": ("fractional", 1.0),
    "use_limit_orders": ("limit_orders", 1.0),
    "limit_order_timeout": ("limit_timeout", 1.0),
}


def public_settings(settings: Settings) -> dict[str, Any]:
    """The settings under their public names and units (show-config, config.json)."""
    return {p.name: p.to_public(getattr(settings, p.field)) for p in PARAMS}


def settings_from_saved(saved: Mapping[str, Any], source: str = "config.json") -> Settings:
    """``Settings`` from a run folder's ``config.json`` ``settings``: public names and units
    (``risk_pct: 2``), or the attribute names and fractions of run folders written before
    the public names (``risk_per_trade_pct: 0.02``). Unknown keys are ignored."""
    old_layout = "risk_per_trade_pct" in saved
    values: dict[str, Any] = {}
    for key, value in saved.items():
        if old_layout and key in FIELD_NAMES:
            values[key] = coerce(key, value, source)
        elif key in PUBLIC:
            param = PUBLIC[key]
            value = coerce(param.field, value, source)
            scaled = param.scale != 1.0 and isinstance(value, int | float) \
                and not isinstance(value, bool)
            values[param.field] = value / param.scale if scaled else value
        elif key in FIELD_NAMES:
            values[key] = coerce(key, value, source)
    return Settings(**values)


def _field_type(name: str) -> Any:
    hints = typing.get_type_hints(Settings)
    return hints[name]


def _spell(name: str, source: str) -> str:
    """How a setting is written in ``source`` (a flag, an env variable or a file key)."""
    if source.startswith("option"):
        return "--" + name.replace("_", "-")
    if source.startswith("environment"):
        return ENV_PREFIX + name.upper()
    return name


def coerce(name: str, value: Any, source: str) -> Any:
    """Convert ``value`` (from a file, env or CLI) to the type of field ``name``."""
    if name not in FIELD_NAMES:
        raise ConfigError(
            f"{source}: unknown setting {name!r}; known settings: {', '.join(PUBLIC)}"
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
        shown = BY_FIELD[name].name if name in BY_FIELD else name
        raise ConfigError(f"{source}: bad value {value!r} for {shown}: {exc}") from None


def to_fields(raw: Mapping[str, Any], source: str,
              internal_ok: bool = False) -> dict[str, tuple[Any, str]]:
    """Public (or deprecated) names and values from one source -> ``Settings`` attribute
    values, each with the public name it was given as. ``internal_ok`` also takes attribute
    names as they are (programmatic callers)."""
    out: dict[str, tuple[Any, str]] = {}
    for key, value in raw.items():
        name = str(key).lower()
        if name in IGNORED:
            logger.warning("%s: %s is ignored and will be removed: %s.", source,
                           _spell(name, source), IGNORED[name])
            continue
        if name in PUBLIC:
            param = PUBLIC[name]
        elif name in DEPRECATED:
            new, factor = DEPRECATED[name]
            param = PUBLIC[new]
            if factor != 1.0 and value is not None:
                number = coerce(param.field, value, source)
                value = round(number * factor, 10)
                sep = " " if source.startswith("option") else \
                    "=" if source.startswith("environment") else " = "
                hint = f"{_spell(new, source)}{sep}{value:g}"
            else:
                hint = _spell(new, source)
            if not internal_ok or name in ("risk", "trail"):  # old flags warn too
                logger.warning(
                    "%s: the setting name %s is deprecated and will be removed; write %s "
                    "instead%s.", source, _spell(name, source), hint,
                    f" (in {param.unit})" if factor != 1.0 else "")
        elif internal_ok and name in FIELD_NAMES:
            out[name] = (coerce(name, value, source), BY_FIELD[name].name)
            continue
        else:
            raise ConfigError(
                f"{source}: unknown setting {key!r}; known settings: {', '.join(PUBLIC)}"
            )
        field_value = coerce(param.field, value, source)
        if name == "max_position_pct" and field_value is not None and field_value < 1:
            # This name held a fraction before 0.2: 0.1 now means 0.1%, not 10%.
            logger.warning("%s: max_position_pct is in percent of equity (10 means 10%%); "
                           "%g caps each position at %g%% of equity.", source, field_value,
                           field_value)
        if param.scale != 1.0 and field_value is not None:
            field_value = field_value / param.scale
        out[param.field] = (field_value, param.name)
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON config file of ``name = value`` settings (raw public names)."""
    return {k: v for k, v in _read_raw(path).items() if k not in NOT_SETTINGS}


def read_config_table(path: Path, table: str) -> dict[str, Any]:
    """The ``[table]`` of a config file (e.g. ``[alpaca]``), empty when it has none."""
    value = _read_raw(path).get(table, {})
    if not isinstance(value, dict):
        raise ConfigError(f"config file {path}: {table} must be a table ([{table}])")
    return value


def _read_raw(path: Path) -> dict[str, Any]:
    """A config file's top-level table (settings under ``[ratchet]`` lifted to the top)."""
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
    # Allow the settings to sit under a [ratchet] table too (beside [alpaca] and alerts).
    if isinstance(raw.get("ratchet"), dict) and set(raw) <= {"ratchet", *NOT_SETTINGS}:
        raw = {**{k: v for k, v in raw.items() if k != "ratchet"}, **raw["ratchet"]}
    return raw


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Raw settings from ``RATCHET_<NAME>`` environment variables (lower-case names)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in ("config", "run_dir") or name in NOT_SETTINGS \
                or name.startswith(ALPACA_ENV_NAMES):  # files, alerts, AlpacaConfig
            continue
        out[name] = value
    return out


def load_settings_with_sources(
    config_file: Path | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base: Settings | None = None,
    base_source: str = "default",
) -> tuple[Settings, dict[str, str]]:
    """The effective ``Settings`` (defaults < file < env < CLI flags) and, per public name,
    where its value came from (``default``, ``config file X``, ``env RATCHET_X``, ``flag
    --x``). ``cli_overrides`` values of ``None`` mean "flag not given" and are skipped."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources = {p.name: base_source if base is not None else "default" for p in PARAMS}
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        for fld, (v, public) in to_fields(read_config_file(config_file),
                                          f"config file {config_file}").items():
            values[fld] = v
            sources[public] = f"config file {config_file}"
    for name, raw in read_env(env).items():
        var = ENV_PREFIX + name.upper()
        for fld, (v, public) in to_fields({name: raw}, f"environment variable {var}").items():
            values[fld] = v
            sources[public] = f"env {var}"
    for name, raw in (cli_overrides or {}).items():
        if raw is None:
            continue
        flag = "--" + name.replace("_", "-")
        for fld, (v, public) in to_fields({name: raw}, f"option {flag}",
                                          internal_ok=True).items():
            values[fld] = v
            sources[public] = f"flag {PUBLIC[public].flag}"
    settings = dataclasses.replace(base or Settings(), **values)
    logger.debug("settings: %s", settings)
    return settings, sources


def load_settings(
    config_file: Path | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base: Settings | None = None,
) -> Settings:
    """Build the effective ``Settings``: defaults < file < env < CLI flags.

    Keys are public names (``risk_pct``), deprecated names (with a warning) or, in
    ``cli_overrides`` only, ``Settings`` attribute names. ``cli_overrides`` values of
    ``None`` mean "flag not given" and are skipped.
    """
    return load_settings_with_sources(config_file, cli_overrides, environ, base)[0]
