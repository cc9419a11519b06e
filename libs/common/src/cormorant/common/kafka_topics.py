"""Kafka's rule for topic names, checked the same way wherever a topic is configured.

The deployer checks a stream endpoint's topics when it is created, and each kafka-bridge
replica checks its settings at start-up: both raise ``ValueError`` inside pydantic validators.
"""

from __future__ import annotations

import re

# Kafka's own rule for topic names (and the length it enforces).
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def check_topic(name: str) -> str:
    """``name`` if Kafka accepts it as a topic name, else ``ValueError`` saying why."""
    if _TOPIC.fullmatch(name) is None or name in (".", ".."):
        raise ValueError(f"{name!r} is not a Kafka topic name (letters, digits, '.', '_', '-')")
    return name


def check_input_topics(names: list[str]) -> list[str]:
    """``names`` if each is a topic name and none is named twice, else ``ValueError``."""
    for name in names:
        check_topic(name)
    if len(set(names)) != len(names):
        raise ValueError("an input topic is named twice")
    return names
