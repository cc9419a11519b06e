"""Endpoints: create, read, delete, tokens and routing; their code snapshots and checks."""
