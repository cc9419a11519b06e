"""Feedback loops into datasets, and the datasets API."""
