"""The shared feature function and MLSignal: no look-ahead, exact trailing windows, warm-up."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from strategies.features import (
    FEATURE_NAMES,
    LOOKBACK,
    compute_features,
    feature_set_hash,
    window_mean,
    window_std,
    window_sum,
)
from strategies.ml import MLSignal, TrainedModel, label_up
from tests.ml.conftest import make_bars


def _scramble_after(bars: pd.DataFrame, t: int, seed: int) -> pd.DataFrame:
    """``bars`` with every row after ``t`` replaced by unrelated random (but valid) bars."""
    rng = np.random.default_rng(seed)
    out = bars.copy()
    n = len(out) - t - 1
    close = np.exp(rng.normal(4.0, 0.5, n))
    open_ = close * np.exp(rng.normal(0, 0.05, n))
    out.loc[t + 1 :, "close"] = close
    out.loc[t + 1 :, "open"] = open_
    out.loc[t + 1 :, "high"] = np.maximum(open_, close) * (1 + rng.uniform(0, 0.1, n))
    out.loc[t + 1 :, "low"] = np.minimum(open_, close) * (1 - rng.uniform(0, 0.1, n))
    out.loc[t + 1 :, "volume"] = rng.uniform(0, 1e7, n)
    return out


@pytest.mark.parametrize("t", [LOOKBACK - 2, LOOKBACK - 1, LOOKBACK + 40, 1500])
def test_changing_bars_after_t_changes_nothing_at_or_before_t(
    trained: TrainedModel, t: int
) -> None:
    """No look-ahead: features, p and signal at rows <= T ignore every bar after T."""
    bars = make_bars(seed=5)
    other = _scramble_after(bars, t, seed=t)
    assert not np.allclose(other["close"].iloc[t + 1 :], bars["close"].iloc[t + 1 :])
    sig = MLSignal(trained)
    a, b = sig.compute(bars), sig.compute(other)
    pd.testing.assert_frame_equal(a.iloc[: t + 1], b.iloc[: t + 1], check_exact=True)
    fa, fb = compute_features(bars), compute_features(other)
    pd.testing.assert_frame_equal(fa.iloc[: t + 1], fb.iloc[: t + 1], check_exact=True)
    # and the prefix alone gives the same rows too
    pd.testing.assert_frame_equal(sig.compute(bars.iloc[: t + 1]), a.iloc[: t + 1],
                                  check_exact=True)
    # the scrambled tail does change later predictions (the test can fail)
    if t + 1 + LOOKBACK < len(bars):
        assert not np.allclose(a["p"].iloc[t + LOOKBACK :], b["p"].iloc[t + LOOKBACK :])


@pytest.mark.parametrize("window", [LOOKBACK, LOOKBACK + 7, 400])
def test_trailing_window_last_row_equals_full_pass_exactly(
    trained: TrainedModel, window: int
) -> None:
    """Live (trailing window, last row) and backtest (one pass) agree bit for bit."""
    bars = make_bars(seed=7)
    sig = MLSignal(trained)
    full = sig.compute(bars)
    for i in range(LOOKBACK - 1, len(bars), 97):
        tail = bars.iloc[max(0, i - window + 1) : i + 1].reset_index(drop=True)
        last = sig.compute(tail).iloc[-1]
        assert last["p"] == full["p"].iloc[i], i
        assert last["signal"] == full["signal"].iloc[i], i


def test_warmup_is_longest_window_plus_one(trained: TrainedModel) -> None:
    bars = make_bars(seed=2).iloc[:200]
    sig = MLSignal(trained)
    out = sig.compute(bars)
    assert sig.warmup == LOOKBACK == 61
    assert out["signal"].iloc[: sig.warmup - 1].isna().all()
    assert out["signal"].iloc[sig.warmup - 1 :].notna().all()
    assert list(out.columns) == ["signal", "p"]
    assert out.index.equals(bars.index)
    # too few bars: all NaN, no error
    assert sig.compute(bars.iloc[: LOOKBACK - 1])["signal"].isna().all()
    assert sig.compute(bars.iloc[:0]).empty


def test_signal_follows_thresholds(trained: TrainedModel) -> None:
    """1.0 on every bar with p >= enter, -1.0 with p <= exit, 0.0 between."""
    bars = make_bars(seed=4)
    sig = MLSignal(trained, enter=0.52, exit=0.48)
    out = sig.compute(bars).dropna()
    p = out["p"].to_numpy()
    expect = np.where(p >= 0.52, 1.0, np.where(p <= 0.48, -1.0, 0.0))
    np.testing.assert_array_equal(out["signal"].to_numpy(), expect)
    assert {1.0, -1.0, 0.0} <= set(out["signal"])  # the test data reaches every branch
    # enter == exit == p edge: p >= enter wins (BUY)
    edge = MLSignal(trained, enter=float(p[0]), exit=float(p[0]))
    assert edge.compute(bars)["signal"].dropna().iloc[0] == 1.0


def test_features_are_price_scale_free() -> None:
    """Ratios only: a symbol at 10x the price has the same features (up to rounding)."""
    bars = make_bars(seed=9)
    scaled = bars.assign(**{c: bars[c] * 10 for c in ("open", "high", "low", "close")})
    np.testing.assert_allclose(compute_features(scaled).to_numpy(),
                               compute_features(bars).to_numpy(), rtol=1e-9, atol=1e-9)


def test_feature_ranges() -> None:
    f = compute_features(make_bars(seed=1)).dropna()
    assert list(f.columns) == list(FEATURE_NAMES)
    assert f["rsi_14"].between(0, 100).all()
    assert f["close_loc"].between(0, 1).all()
    assert f["range_pos_30"].between(0, 1).all()
    assert (f["atr_pct_14"] > 0).all()
    assert len(feature_set_hash()) == 16


def test_flat_bars_give_finite_features() -> None:
    """Zero volume variance, zero range, zero moves: defined values, not NaN after warm-up."""
    n = 100
    bars = pd.DataFrame({"open": np.full(n, 10.0), "high": np.full(n, 10.0),
                         "low": np.full(n, 10.0), "close": np.full(n, 10.0),
                         "volume": np.zeros(n)})
    f = compute_features(bars)
    assert f.iloc[LOOKBACK - 1 :].notna().all().all()
    assert (f["rsi_14"].iloc[LOOKBACK - 1 :] == 50.0).all()


def test_window_helpers_match_numpy() -> None:
    x = np.random.default_rng(0).normal(size=50)
    for w in (1, 3, 14):
        s = window_sum(x, w)
        assert np.isnan(s[: w - 1]).all()
        ref = np.array([x[i - w + 1 : i + 1].sum() for i in range(w - 1, 50)])
        np.testing.assert_allclose(s[w - 1 :], ref, rtol=1e-12)
        np.testing.assert_allclose(window_mean(x, w)[w - 1 :], ref / w, rtol=1e-12)
    ref_std = np.array([x[i - 13 : i + 1].std(ddof=1) for i in range(13, 50)])
    np.testing.assert_allclose(window_std(x, 14)[13:], ref_std, rtol=1e-12)
    assert np.isnan(window_sum(x[:2], 3)).all()


def test_label_up() -> None:
    close = np.array([1.0, 2.0, 2.0, 1.0, 3.0])
    np.testing.assert_array_equal(label_up(close, 1), [1.0, 0.0, 0.0, 1.0, np.nan])
    np.testing.assert_array_equal(label_up(close, 2), [1.0, 0.0, 1.0, np.nan, np.nan])
    assert np.isnan(label_up(close, 9)).all()


def test_paper_loop_live_indicators_match_the_backtest(trained: TrainedModel) -> None:
    """The paper loop's LiveIndicators (trailing window, last row) gives the backtest's signal."""
    from brokers.alpaca.bars import LiveIndicators
    from brokers.alpaca.parsing import BarRecord

    bars = make_bars(seed=8).iloc[:400]
    sig = MLSignal(trained, enter=0.51, exit=0.49)
    want = sig.compute(bars)["signal"].to_numpy()
    recs = [BarRecord("ACME", r.timestamp.to_pydatetime(), r.open, r.high, r.low, r.close,
                      r.volume) for r in bars.itertuples()]
    live = LiveIndicators("ACME", sig, atr_period=14)
    live.warm(recs[:100])
    got = np.array([live.update(r)[0] for r in recs[100:]])
    np.testing.assert_array_equal(got, want[100:])
    assert {1.0, -1.0} <= set(got)
