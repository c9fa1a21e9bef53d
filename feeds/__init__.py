"""Bar data: the Parquet store and the Backtrader feeds built on it."""
