"""A Kafka stream model: the message value arrives as ``bytes``.

``predict(b'{"values": [1, 2, 3]}')`` → ``{"count": 3, "mean": 2.0, "max": 3.0}``. Over HTTP,
send the raw message with ``Content-Type: application/octet-stream`` to get the same call.
"""

from __future__ import annotations

import json
from typing import Any


def predict(value: bytes) -> dict[str, Any]:
    """Summary statistics of the ``values`` list in a JSON message."""
    if isinstance(value, str):  # a JSON request body carries text, not bytes
        value = value.encode()
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"expected the message bytes, got {type(value).__name__}")
    message = json.loads(value)
    values = [float(v) for v in message["values"]]
    if not values:
        return {"count": 0, "mean": None, "max": None}
    return {"count": len(values), "mean": sum(values) / len(values), "max": max(values)}
