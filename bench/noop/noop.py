"""A model that does nothing: its latency is the serving overhead alone."""

from typing import Any


def predict(value: Any = None) -> Any:
    """Return the input unchanged."""
    return value
