"""Command-line pieces shared by the replica processes (worker, kafka-bridge)."""

from __future__ import annotations

from pydantic import ValidationError


def key_value_pairs(items: list[str], flag: str) -> dict[str, str]:
    """``["A=1", "B=2"]`` as a dict; ValueError naming ``flag`` for an item without ``=``."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value
    return pairs


def describe_settings_error(exc: ValidationError) -> str:
    """One line naming each refused setting and why."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
        for err in exc.errors()
    )
