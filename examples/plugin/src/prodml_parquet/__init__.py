"""prodml-parquet: read prodml training data from Parquet files."""

__version__ = "0.1.0"
