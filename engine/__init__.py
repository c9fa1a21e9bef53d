"""The library that runs the Strategy: a backtest over stored bars (``engine.backtest``,
``engine.datasets``) and a paper session against Alpaca (``engine.paper``). The click
commands in ``commands/`` only parse flags, call these and print."""
