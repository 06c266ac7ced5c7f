"""Storage: the SQLite schema, the batched writer, read-only queries and export."""
