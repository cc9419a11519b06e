"""Pytest fixtures that start real servers; enable with ``pytest_plugins``."""
