"""The per-request deadline: a predict call past the endpoint's ``timeout_s`` frees its worker.

A Python thread cannot be stopped from outside, so a predict stuck in an endless loop would
hold its thread (and, with one predict thread, the worker) for good. Past the deadline the
request gets 504, and the worker process ends (``EXIT_TIMEOUT``) once the 504 has left and the
events waiting to be published are acknowledged (at most ``_SHUTDOWN_S``): gunicorn's master
starts a fresh worker in its place and reports the death to the deployer. A call whose
request is gone (the gateway gave up first) is caught by the same watch. A predict that ran
out of memory ends its worker too (``EXIT_OOM``): after a ``MemoryError`` the process's state
cannot be trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cormorant.common.errors import CormorantError
from cormorant.worker.deaths import EXIT_OOM, EXIT_TIMEOUT

log = logging.getLogger(__name__)

T = TypeVar("T")

_SHUTDOWN_S = 10.0
"""Longest a condemned worker may take to answer the requests it holds, publish its events
and end by itself."""
_GRACE_S = 0.5
"""How long past the deadline a call whose request is gone may run before the worker ends."""

_CODES = {"timeout": EXIT_TIMEOUT, "oom": EXIT_OOM}


class PredictTimedOut(CormorantError):
    """A predict call ran past the endpoint's ``timeout_s``."""

    status_code = 504
    code = "predict_timeout"

    def __init__(self, deadline_s: float) -> None:
        super().__init__(
            f"predict ran past its deadline ({deadline_s:g} s, from the endpoint's timeout_s); "
            "the worker running it is replaced",
            details={"timeout_s": deadline_s},
        )


class Watchdog:
    """Watches the predict calls of one worker process against ``deadline_s``."""

    def __init__(
        self, deadline_s: float | None, *, on_condemn: Callable[[], None] | None = None
    ) -> None:
        self.deadline_s = deadline_s
        self.on_condemn = on_condemn
        """Called once condemned: gives the predict calls still to come a fresh thread pool
        (the stuck thread keeps the old one), so the requests that reach this worker before
        it stops listening are answered rather than lost with it."""
        self.ending: str | None = None
        """Why this worker is ending, once it is."""
        self._calls: dict[int, float] = {}
        self._ids = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background watch (on the worker's loop)."""
        if self.deadline_s is not None and self._task is None:
            self._task = asyncio.create_task(self._watch(), name="predict-watchdog")

    async def stop(self) -> None:
        """Stop the background watch."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def call(self, future: asyncio.Future[T]) -> T:
        """``future``'s result (a predict call in the pool); ``PredictTimedOut`` past the
        deadline, after which this worker ends."""
        if self.deadline_s is None:
            return await future
        key = next(self._ids)
        self._calls[key] = time.monotonic()
        future.add_done_callback(lambda _: self._calls.pop(key, None))
        try:
            async with asyncio.timeout(self.deadline_s):
                return await asyncio.shield(future)
        except TimeoutError:
            self.condemn("timeout")
            raise PredictTimedOut(self.deadline_s) from None

    def condemn(self, cause: str) -> None:
        """End this worker (``cause``: ``timeout`` or ``oom``) once its answers have left.

        SIGTERM starts uvicorn's graceful shutdown: the listening socket closes at once (the
        next request waits for the fresh worker instead), the requests it holds are answered
        (from a fresh thread pool, ``on_condemn``), and the lifespan's end publishes the
        waiting events, then calls ``exit_if_ending``.
        """
        if self.ending is not None:
            return
        self.ending = cause
        log.error("ending this worker process: %s (a fresh one replaces it)",
                  "a predict call passed the deadline" if cause == "timeout"
                  else "a predict call ran out of memory")  # fmt: skip
        if self.on_condemn is not None:
            self.on_condemn()
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)
        # The stuck thread (or another request waiting behind it) would hold the shutdown.
        threading.Thread(target=_exit_later, args=(_CODES.get(cause, 1),), daemon=True).start()

    def exit_if_ending(self) -> None:
        """At the end of the lifespan: end the process now if it was condemned."""
        if self.ending is not None:
            _exit(_CODES.get(self.ending, 1))

    async def _watch(self) -> None:
        assert self.deadline_s is not None
        interval = min(1.0, max(self.deadline_s / 4, 0.05))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if any(now - started > self.deadline_s + _GRACE_S for started in self._calls.values()):
                self.condemn("timeout")


def is_out_of_memory(exc: Any) -> bool:
    """Whether ``exc`` (or the user exception it reports) is a ``MemoryError``."""
    if isinstance(exc, MemoryError):
        return True
    return getattr(exc, "exception_type", None) == "MemoryError"


def _exit_later(code: int) -> None:
    time.sleep(_SHUTDOWN_S)
    _exit(code)


def _exit(code: int) -> None:
    # Not sys.exit: the stuck predict thread would keep the interpreter from ending.
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
