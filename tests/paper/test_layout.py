"""The live adapter stays in files a newcomer can hold (issue 14, point 6)."""

from __future__ import annotations

from pathlib import Path

import brokers.alpaca

ROOT = Path(brokers.alpaca.__file__).parent


def test_no_module_of_brokers_alpaca_above_500_lines() -> None:
    """Regression: broker.py had 1,830 lines and store.py 704."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in ROOT.glob("*.py")}
    assert sizes["broker.py"] < 500 and sizes["store.py"] < 500
    too_big = {n: s for n, s in sizes.items() if s > 500}
    assert too_big == {}


def test_the_broker_reads_no_backtrader_internals_of_the_strategy() -> None:
    """Regression: the broker read the Strategy's ``_orderspending`` and probed it with
    ``hasattr``; it now goes through ``ports.PositionOwner`` only."""
    for p in ROOT.glob("*.py"):
        text = p.read_text()
        assert "_orderspending" not in text, p.name
        assert "hasattr(strat" not in text and "strategies[0]" not in text, p.name


def test_the_broker_keeps_its_import_path() -> None:
    from brokers.alpaca.broker import AlpacaBroker, BrokerView
    from brokers.alpaca.ports import PositionOwner
    from strategies.ratchet import RatchetStrategy

    assert AlpacaBroker.__module__ == "brokers.alpaca.broker"
    assert BrokerView.__name__ == "BrokerView"
    assert issubclass(RatchetStrategy, PositionOwner)
