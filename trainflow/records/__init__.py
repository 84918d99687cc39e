"""What a run leaves behind besides its package: Parquet records and their DuckDB queries, run status, cost, and W&B tracking."""
