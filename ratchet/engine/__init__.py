"""The library that runs the Strategy: a backtest over stored bars (``ratchet.engine.backtest``,
``ratchet.engine.datasets``) and a paper session against Alpaca (``ratchet.engine.paper``).
The click commands in ``ratchet/commands/`` only parse flags, call these and print."""
