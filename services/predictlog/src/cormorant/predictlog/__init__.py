"""Prediction log ingest from JetStream into PostgreSQL, logs query, CSV export, charts."""
