"""What a sweep varies: grids, ranges, random or Optuna search spaces, and constraints.

Parameter names are the public setting names, as the backtest's flags and config keys spell
them (``fast``, ``slow``, ``atr_mult``, ``trail_pct`` and ``risk_pct`` and
``max_position_pct`` in percent, ``signal``...), Settings fields (``fast_period``), or the
names before 0.2 (``risk`` in percent, ``trail`` as a fraction).
Every value is checked against the Settings field's type, so a typo or a bad value stops the
sweep before anything runs.
"""

from __future__ import annotations

import itertools
import math
import operator
import random
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ratchet.common.config import FIELD_NAMES, PUBLIC, Settings, coerce
from ratchet.common.errors import ConfigError

#: Short names users type -> Settings field (the backtest's flags, without the dashes).
ALIASES: dict[str, str] = {
    "fast": "fast_period",
    "slow": "slow_period",
    "risk": "risk_per_trade_pct",  # percent, like --risk
    "max-positions": "max_positions",
    "atr-period": "atr_period",
    "atr-mult": "atr_stop_multiplier",
    "trail": "trail_stop_pct",
    "limit-timeout": "limit_order_timeout",
    "limit-orders": "use_limit_orders",
    "ml-enter": "ml_enter_threshold",
    "ml-exit": "ml_exit_threshold",
    "model": "model_path",
    "volume-participation": "volume_participation",
}
#: Settings a sweep may not vary (they pick the data or name orders, not the strategy).
FIXED: frozenset[str] = frozenset({"symbols", "strategy_id", "bar_interval"})
#: Names whose value is typed in percent and stored as a fraction.
PERCENT: frozenset[str] = frozenset({"risk"})


def _public(name: str) -> Any:
    """The public setting (``ratchet.common.config.PUBLIC``: ``risk_pct``, ``trail_pct``...) a name
    spells, or None."""
    return PUBLIC.get(name.strip().lower().replace("-", "_"))


def _is_percent(name: str) -> bool:
    """Is the value typed in percent and stored as a fraction (``risk``, ``risk_pct``...)?"""
    pub = _public(name)
    return name.strip().lower() in PERCENT or (pub is not None and pub.scale == 100.0)


def resolve_name(name: str) -> str:
    """The Settings field behind a parameter name, or a one-line ``ConfigError``."""
    key = name.strip().lower()
    pub = _public(key)
    if pub is not None and pub.field not in FIXED:
        return str(pub.field)
    field_name = ALIASES.get(key) or ALIASES.get(key.replace("_", "-")) or key.replace("-", "_")
    if field_name not in FIELD_NAMES or field_name in FIXED:
        known = sorted(set(ALIASES) | (FIELD_NAMES - FIXED))
        raise ConfigError(f"unknown setting {name!r} in the sweep; known: {', '.join(known)}")
    return field_name


def _value(name: str, field_name: str, text: Any, flag: str) -> Any:
    value = coerce(field_name, text, f"{flag} {name}")
    if _is_percent(name):
        value = value / 100.0
    return value


def _field_kind(field_name: str) -> str:
    tp = typing.get_type_hints(Settings)[field_name]
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return {bool: "bool", int: "int", float: "float"}.get(args[0], "str")


@dataclass(frozen=True)
class Param:
    """One varied setting: a list of values, or a numeric range (``step`` None: continuous)."""

    name: str  # as the user typed it (table headers)
    field: str  # Settings field
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    kind: str = "float"
    percent: bool = False

    @property
    def continuous(self) -> bool:
        """A range without a step: only random and Optuna searches can sample it."""
        return not self.values and self.step is None

    def grid(self) -> tuple[Any, ...]:
        """Every value of a grid or stepped range (inclusive of ``high``)."""
        if self.values:
            return self.values
        if self.step is None:
            raise ConfigError(
                f"--range {self.name}={self.low}:{self.high} has no step: give lo:hi:step for a "
                "grid search, or use --search random/optuna with --trials N"
            )
        assert self.low is not None and self.high is not None  # noqa: S101 - narrows the type: continuous ranges have both bounds
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        raw = [self.low + i * self.step for i in range(n)]
        scale = 0.01 if self.percent else 1.0
        if self.kind == "int":
            return tuple(int(round(v)) for v in raw)
        return tuple(round(v * scale, 12) for v in raw)

    def sample(self, rng: random.Random) -> Any:
        """One random value (uniform over the grid or the range)."""
        if not self.continuous:
            return rng.choice(self.grid())
        assert self.low is not None and self.high is not None  # noqa: S101 - narrows the type: continuous ranges have both bounds
        scale = 0.01 if self.percent else 1.0
        if self.kind == "int":
            return rng.randint(int(self.low), int(self.high))
        return round(rng.uniform(self.low, self.high) * scale, 12)

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial suggests for this parameter."""
        if self.values:
            return trial.suggest_categorical(self.name, list(self.values))
        assert self.low is not None and self.high is not None  # noqa: S101 - narrows the type: continuous ranges have both bounds
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1))
        value = trial.suggest_float(self.name, self.low, self.high, step=self.step)
        return round(value * (0.01 if self.percent else 1.0), 12)

    def describe(self) -> str:
        """How the parameter was given (config.json, messages)."""
        if self.values:
            # in the unit typed: grid values are stored as fractions for percent names
            shown = [round(v * 100, 10) if self.percent and isinstance(v, int | float)
                     and not isinstance(v, bool) else v for v in self.values]
            text = [f"{v:g}" if isinstance(v, float) else str(v) for v in shown]
            return f"{self.name}={','.join(text)}"
        step = "" if self.step is None else f":{self.step:g}"
        return f"{self.name}={self.low:g}:{self.high:g}{step}"


def _split(spec: str, flag: str) -> tuple[str, str]:
    if "=" not in spec:
        raise ConfigError(f"{flag} {spec!r}: write NAME=VALUES, e.g. {flag} fast=5,10,20")
    name, _, rest = spec.partition("=")
    if not name.strip():
        raise ConfigError(f"{flag} {spec!r}: the setting name is missing")
    return name.strip(), rest.strip()


def _shown(field_name: str) -> str:
    """A Settings field as users know it (``fast_period`` -> ``fast``)."""
    from ratchet.common.config import BY_FIELD

    return BY_FIELD[field_name].name if field_name in BY_FIELD else field_name


def parse_grid(spec: str) -> Param:
    """``fast=5,10,20`` -> a Param with those values."""
    name, rest = _split(spec, "--grid")
    field_name = resolve_name(name)
    items = [x.strip() for x in rest.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"--grid {name}= is empty: give at least one value, e.g. --grid "
                          f"{name}=5,10")
    values = tuple(dict.fromkeys(_value(name, field_name, x, "--grid") for x in items))
    return Param(name, field_name, values=values, kind=_field_kind(field_name),
                 percent=_is_percent(name))


def parse_range(spec: str) -> Param:
    """``fast=5:50:5`` (stepped, inclusive) or ``trail_pct=1:5`` (continuous)."""
    name, rest = _split(spec, "--range")
    field_name = resolve_name(name)
    kind = _field_kind(field_name)
    if kind not in ("int", "float"):
        raise ConfigError(f"--range {name}: {_shown(field_name)} is not numeric; use --grid "
                          f"{name}=a,b")
    parts = rest.split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(f"--range {spec!r}: write NAME=LOW:HIGH[:STEP], e.g. fast=5:50:5")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--range {spec!r}: LOW, HIGH and STEP must be numbers") from None
    low, high = nums[0], nums[1]
    step = nums[2] if len(nums) == 3 else None
    if high < low:
        raise ConfigError(f"--range {spec!r} is empty: HIGH {high:g} is below LOW {low:g}")
    if step is not None and step <= 0:
        raise ConfigError(f"--range {spec!r}: STEP must be > 0")
    if kind == "int" and (not low.is_integer() or not high.is_integer()
                          or (step is not None and not step.is_integer())):
        raise ConfigError(f"--range {spec!r}: {_shown(field_name)} takes whole numbers")
    return Param(name, field_name, low=low, high=high, step=step, kind=kind,
                 percent=_is_percent(name))


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
    "==": operator.eq, "!=": operator.ne,
}
_TERM = r"\s*(?:([0-9.]+)\s*\*\s*)?([A-Za-z_][\w-]*|[0-9.]+)\s*"
_CONSTRAINT = re.compile(rf"^{_TERM}(<=|>=|==|!=|<|>){_TERM}$")


@dataclass(frozen=True)
class Constraint:
    """``A op B`` where each side is a setting (optionally times a number) or a number."""

    text: str
    left: tuple[float, str | float]
    op: str
    right: tuple[float, str | float]

    @staticmethod
    def parse(text: str) -> Constraint:
        """Parse ``fast<slow``, ``slow>=2*fast`` or ``trail<=0.05``."""
        m = _CONSTRAINT.match(text)
        if not m:
            raise ConfigError(f"--constraint {text!r}: write A<B with settings or numbers, e.g. "
                              "--constraint 'slow>=2*fast'")

        def term(mult: str | None, name: str) -> tuple[float, str | float]:
            factor = float(mult) if mult else 1.0
            try:
                return factor, float(name)
            except ValueError:
                return factor, resolve_name(name)

        return Constraint(text, term(m.group(1), m.group(2)), m.group(3),
                          term(m.group(4), m.group(5)))

    def holds(self, settings: Settings) -> bool:
        """Whether a cell's settings satisfy the constraint."""

        def value(t: tuple[float, str | float]) -> Any:
            factor, ref = t
            base = getattr(settings, ref) if isinstance(ref, str) else ref
            return base * factor if factor != 1.0 else base

        return bool(_OPS[self.op](value(self.left), value(self.right)))


@dataclass
class Space:
    """The varied parameters and the constraints every cell must meet."""

    params: list[Param]
    constraints: list[Constraint] = field(default_factory=list)

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for p in self.params:
            if p.field in seen:
                raise ConfigError(f"{p.name} and {seen[p.field]} both vary {_shown(p.field)}: "
                                  "keep one")
            seen[p.field] = p.name

    @property
    def names(self) -> list[str]:
        """Settings fields varied, in the order given."""
        return [p.field for p in self.params]

    def make(self, base: Settings, values: dict[str, Any]) -> Settings | str:
        """The cell's Settings, or the reason it is skipped (invalid or against a constraint)."""
        try:
            settings = base.replace(**values)
        except ConfigError as exc:
            return str(exc).removeprefix("invalid settings: ")
        for c in self.constraints:
            if not c.holds(settings):
                return f"constraint {c.text}"
        return settings

    def grid_cells(self, base: Settings) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Every grid combination that makes valid settings, and skip counts by reason."""
        grids = [p.grid() for p in self.params]
        cells: list[dict[str, Any]] = []
        skipped: dict[str, int] = {}
        for combo in itertools.product(*grids):
            values = dict(zip(self.names, combo, strict=True))
            made = self.make(base, values)
            if isinstance(made, str):
                skipped[made] = skipped.get(made, 0) + 1
            else:
                cells.append(values)
        return cells, skipped

    def random_cells(self, base: Settings, n: int, seed: int) -> tuple[list[dict[str, Any]],
                                                                      dict[str, int]]:
        """``n`` distinct random valid cells (fewer if the space is smaller)."""
        rng = random.Random(seed)  # noqa: S311 - random search sampling, not cryptography
        cells: list[dict[str, Any]] = []
        seen: set[tuple[Any, ...]] = set()
        skipped: dict[str, int] = {}
        for _ in range(max(100, 50 * n)):
            if len(cells) >= n:
                break
            values = {p.field: p.sample(rng) for p in self.params}
            sig = tuple(values.values())
            if sig in seen:
                continue
            seen.add(sig)
            made = self.make(base, values)
            if isinstance(made, str):
                skipped[made] = skipped.get(made, 0) + 1
            else:
                cells.append(values)
        return cells, skipped

    def describe(self) -> list[str]:
        """The parameters and constraints as given."""
        return [p.describe() for p in self.params] + [f"constraint {c.text}"
                                                     for c in self.constraints]


def build_space(grids: Sequence[str], ranges: Sequence[str],
                constraints: Iterable[str]) -> Space:
    """Parse the ``--grid``/``--range``/``--constraint`` flags into a ``Space``."""
    params = [parse_grid(g) for g in grids] + [parse_range(r) for r in ranges]
    if not params:
        raise ConfigError("nothing to sweep: give --grid NAME=V1,V2 or --range NAME=LO:HI:STEP")
    return Space(params, [Constraint.parse(c) for c in constraints])


def explain_empty(skipped: dict[str, int]) -> str:
    """Why no cell is left, for the one-line error."""
    top = sorted(skipped.items(), key=lambda kv: -kv[1])[:2]
    reasons = "; ".join(f"{n} x {r}" for r, n in top)
    return f"no valid cell to run: every combination is refused ({reasons})"
