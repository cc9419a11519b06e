"""Retrying with exponential backoff, as one value (like Temporal's ``RetryPolicy``).

Every retry of the platform (a database write during a failover, a crashed replica's
restart, a bus publish or fetch, a template that died) takes its delays from a ``Backoff``
instead of its own loop of sleeps and doublings.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between attempts: ``initial`` s, multiplied by ``factor`` after each failure
    up to ``cap`` s; ``attempts`` bounds the tries (None: no bound); ``jitter`` spreads each
    delay by ± that fraction, so a fleet does not retry in lockstep after a server restart."""

    initial: float
    cap: float
    factor: float = 2.0
    attempts: int | None = None
    jitter: float = 0.0

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failures (1: after the first)."""
        delay = min(self.cap, self.initial * self.factor ** min(failures - 1, 60))
        if self.jitter:
            delay *= random.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return delay


async def retry(
    call: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    retryable: Callable[[Exception], bool],
    what: str,
) -> T:
    """``call()``'s result, calling again after ``backoff``'s delays while it raises an
    exception ``retryable`` accepts; the last failure (or any other) is raised."""
    failures = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            failures += 1
            if not retryable(exc) or (
                backoff.attempts is not None and failures >= backoff.attempts
            ):
                raise
            delay = backoff.delay(failures)
            log.warning("%s failed (%s); retrying in %.2g s", what, exc, delay)
        await asyncio.sleep(delay)
