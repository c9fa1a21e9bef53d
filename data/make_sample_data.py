"""Regenerate the bundled SYNTHETIC sample bars in data/bars/ (seeded, reproducible).

    python data/make_sample_data.py

1-minute bars: 6 fictional symbols, regular hours of the NYSE sessions of October 2025.
Daily bars: the same symbols, NYSE sessions 2019-01-02 to 2025-12-31.
The prices are a random walk (feeds/synthetic.py), not market data.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feeds.store import write_bars  # noqa: E402 - after the sys.path line
from feeds.synthetic import random_walk_bars, trading_days, trading_minutes  # noqa: E402 - same

SYMBOLS = {"ACME": 101, "BOLT": 102, "CRUX": 103, "DYNA": 104, "ECHO": 105, "FLUX": 106}
START_PRICES = {"ACME": 120.0, "BOLT": 45.0, "CRUX": 310.0, "DYNA": 80.0, "ECHO": 22.0,
                "FLUX": 150.0}


def main() -> None:
    minutes = trading_minutes("2025-10-01", "2025-10-31")
    days = trading_days("2019-01-02", "2025-12-31")
    for sym, seed in SYMBOLS.items():
        px = START_PRICES[sym]
        m = random_walk_bars(minutes, seed, start_price=px)
        write_bars(ROOT / "data/bars/1Min" / f"{sym}.parquet", m, {"source": "synthetic"})
        d = random_walk_bars(days, seed + 1000, start_price=px, bar_vol=0.018, regime_len=40,
                             drift_scale=0.002, base_volume=2_000_000.0)
        write_bars(ROOT / "data/bars/1Day" / f"{sym}.parquet", d, {"source": "synthetic"})
        print(f"{sym}: {len(m)} minute bars, {len(d)} daily bars")


if __name__ == "__main__":
    main()
