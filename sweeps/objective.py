"""Objectives a sweep maximises, the minimum-trades rule, and the deflated Sharpe ratio."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

#: --objective name -> (label, how it is computed)
OBJECTIVES: dict[str, str] = {
    "sharpe": "Sharpe ratio (daily returns, annualised)",
    "calmar": "CAGR / |max drawdown|",
    "total_return": "total return",
    "profit_factor": "gross profit / gross loss",
    "sortino": "Sortino ratio",
}
EULER_GAMMA = 0.5772156649015329


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def objective_value(stats: Mapping[str, Any], objective: str) -> float | None:
    """The objective of one cell's stats (None: undefined, e.g. no drawdown or no returns)."""
    if objective == "calmar":
        cagr, mdd = _num(stats.get("cagr")), _num(stats.get("max_drawdown"))
        if cagr is None or mdd is None or mdd >= 0:
            return None
        return cagr / abs(mdd)
    return _num(stats.get(objective))


def score(stats: Mapping[str, Any], objective: str, min_trades: int) -> tuple[float | None, bool]:
    """(objective, qualified): a cell qualifies with ``min_trades`` trades and a defined value."""
    value = objective_value(stats, objective)
    trades = _num(stats.get("trade_count")) or 0
    return value, value is not None and trades >= min_trades


def deflated_sharpe(best: float, trials: Sequence[float], n_obs: int, skew: float,
                    kurtosis: float) -> float | None:
    """Bailey and Lopez de Prado's deflated Sharpe ratio (per-period Sharpe ratios).

    The probability that the best cell's true Sharpe ratio is above zero once we allow for
    having picked the best of ``len(trials)`` tries (and for non-normal returns).
    """
    n = len(trials)
    if n < 2 or n_obs < 3:
        return None
    mean = sum(trials) / n
    var = sum((t - mean) ** 2 for t in trials) / (n - 1)
    nd = NormalDist()
    expected_max = math.sqrt(var) * ((1 - EULER_GAMMA) * nd.inv_cdf(1 - 1 / n)
                                     + EULER_GAMMA * nd.inv_cdf(1 - 1 / (n * math.e)))
    denom = 1 - skew * best + (kurtosis - 1) / 4 * best ** 2
    if denom <= 0:
        return None
    return nd.cdf((best - expected_max) * math.sqrt(n_obs - 1) / math.sqrt(denom))


def dsr_of(rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any]) -> float | None:
    """Deflated Sharpe of ``best`` among ``rows`` (every tried cell with a daily Sharpe)."""
    trials = [v for v in (_num(r.get("daily_sharpe")) for r in rows) if v is not None]
    sr, skew, kurt = (_num(best.get(k)) for k in ("daily_sharpe", "skew", "kurtosis"))
    n_obs = int(_num(best.get("n_days")) or 0)
    if sr is None or skew is None or kurt is None:
        return None
    return deflated_sharpe(sr, trials, n_obs, skew, kurt)


def explain_dsr(value: float | None, n_trials: int) -> str:
    """One line a user can read."""
    if value is None:
        return (f"Deflated Sharpe: n/a (needs at least 2 cells with returns and 3 trading days; "
                f"{n_trials} tried)")
    verdict = "unlikely to be luck" if value >= 0.95 else "could well be luck"
    return (f"Deflated Sharpe {value:.2f}: the chance the best cell's true Sharpe is above 0 "
            f"after picking the best of {n_trials} tries ({verdict}; 0.95+ is convincing)")
