"""Continual-learning triggers on logged metrics: email, webhook and flow actions."""
