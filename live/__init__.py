"""The live aggregator and the immutable snapshots the dashboard's widgets read."""
