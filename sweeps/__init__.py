"""Parameter sweeps and walk-forward optimisation on Dask (``python cli.py sweep``).

- ``space``: grids, ranges, random/Optuna spaces, constraints
- ``cell``: one cell's backtest (the adapter to ``run_backtest``), the worker data cache
- ``runner``: submits cells to a Dask client, records rows, walk-forward windows
- ``store``: the crash-safe sweep folder; ``stitch``: the out-of-sample run folder
- ``objective``: objectives, minimum trades, deflated Sharpe ratio
- ``report``: the HTML report of a sweep folder
"""
