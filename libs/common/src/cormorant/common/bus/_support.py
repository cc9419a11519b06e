"""Small helpers of the bus: throttled logging and retry backoff."""

from __future__ import annotations

import logging
import time

from cormorant.common.retry import Backoff


class Throttled:
    """A log call that writes at most one line per interval and counts the lines it held back."""

    __slots__ = ("_held", "_interval", "_level", "_log", "_next")

    def __init__(self, log: logging.Logger, level: int, interval: float = 10.0) -> None:
        self._log = log
        self._level = level
        self._interval = interval
        self._next = 0.0
        self._held = 0

    def __call__(self, msg: str, *args: object, exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        held, self._held = self._held, 0
        self._next = now + self._interval
        if held:
            msg += " (%d similar lines suppressed)"
            args = (*args, held)
        self._log.log(self._level, msg, *args, exc_info=exc_info)


def backoff(level: int, base: float, cap: float) -> float:
    """Exponential delay for the ``level``-th consecutive failure, jittered by ±20%."""
    # Jitter keeps a fleet of replicas from retrying in lockstep after a server restart.
    return Backoff(base, cap, jitter=0.2).delay(level)
