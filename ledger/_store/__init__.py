"""Storage: the eventsourcing application, serialization, URLs and backends."""
