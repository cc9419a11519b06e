"""Intervals as people write them (``"30s"``, ``"5m"``, ``"1h"``) to whole seconds and back."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")


def parse_interval(value: str | float, *, minimum: int = 1) -> int:
    """Whole seconds of ``value`` (a number of seconds or ``<n><s|m|h|d>``); ValueError if
    it is malformed, not whole seconds or under ``minimum``."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '30s', '5m' or '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _INTERVAL_RE.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration such as '30s', '5m' or '1h'")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds != int(seconds):
        raise ValueError(f"{value!r} is not a whole number of seconds")
    if seconds < minimum:
        raise ValueError(f"{value!r} is under the minimum of {minimum} s")
    return int(seconds)


def format_interval(seconds: int) -> str:
    """The shortest exact spelling of ``seconds``: ``90`` is ``"90s"``, ``300`` is ``"5m"``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
