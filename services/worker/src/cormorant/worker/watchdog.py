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
from concurrent.futures import Executor
from typing import Any, TypeVar

from cormorant.common.errors import CormorantError
from cormorant.worker.deaths import EXIT_OOM, EXIT_TIMEOUT

log = logging.getLogger(__name__)

T = TypeVar("T")

_SETTLE_S = 0.25
"""How long the answer that condemned a worker waits: past one tick of uvicorn's main loop
(0.1 s), which then closes the listening socket and the idle keep-alive connections, so the
client's next request cannot land on this worker through a connection it is closing."""
_SHUTDOWN_S = 10.0
"""Longest a condemned worker may take to answer the requests it holds, publish its events
and end by itself."""

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
        self._calls: dict[int, tuple[float, asyncio.Future[Any]]] = {}
        self._expired: set[int] = set()
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

    async def run(self, pool: Executor, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in ``pool``; ``PredictTimedOut`` past the deadline, after which
        this worker ends.

        No timer per call: the watch (``_watch``) cancels the calls it finds past the
        deadline. A call stays watched until its thread returns, even once its request is
        gone (the gateway gave up, the client hung up).
        """
        loop = asyncio.get_running_loop()
        if self.deadline_s is None:
            return await loop.run_in_executor(pool, function, *args)
        key = next(self._ids)
        work = pool.submit(function, *args)
        future = asyncio.wrap_future(work, loop=loop)
        self._calls[key] = (time.monotonic(), future)
        work.add_done_callback(lambda _: self._calls.pop(key, None))
        try:
            return await future
        except asyncio.CancelledError:
            if key not in self._expired:
                raise  # the request itself was cancelled (its client went away)
            raise PredictTimedOut(self.deadline_s) from None
        finally:
            self._expired.discard(key)

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

    async def settle(self) -> None:
        """Hold the answer of the request that condemned this worker until the worker has
        stopped taking requests (``_SETTLE_S``)."""
        await asyncio.sleep(_SETTLE_S)

    def exit_if_ending(self) -> None:
        """At the end of the lifespan: end the process now if it was condemned."""
        if self.ending is not None:
            _exit(_CODES.get(self.ending, 1))

    async def _watch(self) -> None:
        assert self.deadline_s is not None
        # Fine enough that a call is cut within a quarter second of its deadline (which the
        # deployer sets half a second ahead of the gateway's).
        interval = min(0.25, max(self.deadline_s / 20, 0.02))
        while True:
            await asyncio.sleep(interval)
            late = time.monotonic() - self.deadline_s
            for key, (started, future) in list(self._calls.items()):
                if started <= late:
                    if not future.done():
                        self._expired.add(key)
                        # The thread runs on; its result, if any, is dropped.
                        future.cancel()
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
