"""Adaptive batching: concurrent requests to a batch-capable predict share one call.

A version opts in through its ``env``: ``CORMORANT_PREDICT_BATCH=true`` (predict takes a list of
rows and returns one value per row) plus ``CORMORANT_PREDICT_BATCH_MAX_SIZE`` (rows per call)
and ``CORMORANT_PREDICT_BATCH_MAX_WAIT_MS`` (the longest a request waits for others).

Requests queue as items (one item: a request's rows). A call starts at once while fewer calls
than the predict threads are running, so an idle replica adds no wait; otherwise the queue
grows until a call finishes, ``max_size`` rows are waiting, or the oldest item has waited
``max_wait_ms``, and the next call takes as many whole items as fit in ``max_size`` rows. Each
item gets its own slice of the answer. If the shared call raises or answers the wrong number
of values, each item of it is predicted alone, so an item's error stays with its item.

A shared call is watched by the worker's ``Watchdog`` like any other predict call: past the
endpoint's deadline every request in it gets 504 (``PredictTimedOut``) and the worker is
replaced, its later calls going to the fresh thread pool the watchdog's ``on_condemn`` sets.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from cormorant.common.errors import CormorantError
from cormorant.common.predictor import JSONValue, Predictor
from cormorant.common.predictor.arguments import (
    NamedInput,
    batch_rows,
    check_rows,
    plan_calls,
    predict_chunk,
)
from cormorant.common.predictor.rows import declares_batch
from cormorant.worker.watchdog import Watchdog

log = logging.getLogger(__name__)

MAX_SIZE_ENV = "CORMORANT_PREDICT_BATCH_MAX_SIZE"
MAX_WAIT_ENV = "CORMORANT_PREDICT_BATCH_MAX_WAIT_MS"


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """How many rows one call may take, and how long a request may wait for others."""

    max_size: int
    max_wait_ms: float


class InvalidBatching(ValueError):
    """The version's batching settings cannot be used."""


def batching_config(env: Mapping[str, str]) -> BatchingConfig | None:
    """The version's adaptive batching, or None when it does not ask for it."""
    size = env.get(MAX_SIZE_ENV, "").strip()
    if not size:
        return None
    if not declares_batch(env):
        raise InvalidBatching(
            f"{MAX_SIZE_ENV} needs a batch-capable predict: set CORMORANT_PREDICT_BATCH=true "
            "and make predict take a list of rows"
        )
    try:
        max_size = int(size)
        max_wait = float(env.get(MAX_WAIT_ENV, "5").strip() or "5")
    except ValueError as exc:
        raise InvalidBatching(
            f"{MAX_SIZE_ENV} must be a whole number and {MAX_WAIT_ENV} a number ({exc})"
        ) from exc
    if max_size < 1 or not 0 <= max_wait <= 10_000:
        raise InvalidBatching(
            f"{MAX_SIZE_ENV} must be at least 1 and {MAX_WAIT_ENV} between 0 and 10000"
        )
    return BatchingConfig(max_size, max_wait)


@dataclass(slots=True)
class _Item:
    rows: list[list[Any]]
    keywords: Mapping[str, Any]
    future: asyncio.Future[list[JSONValue]]


class AdaptiveBatcher:
    """Groups concurrent requests' rows into shared calls of a batch-capable predict."""

    def __init__(
        self,
        pool: Executor,
        config: BatchingConfig,
        *,
        max_calls: int,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.pool = pool
        """Where calls run; replaced by a fresh pool when the watchdog condemns the worker."""
        self.watchdog = watchdog or Watchdog(None)
        """Holds each shared call to the per-request deadline."""
        self.config = config
        self.max_calls = max(1, max_calls)
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._calls = 0
        self._timer: asyncio.TimerHandle | None = None
        self._predictor: Predictor | None = None
        self.waiting = 0
        """Requests submitted and not answered yet (queued or in a running call)."""

    async def run(
        self, predictor: Predictor, inputs: Sequence[NamedInput], parameters: Mapping[str, Any]
    ) -> list[JSONValue]:
        """A ``RowsRunner``: the request's rows predicted within a shared call."""
        count = check_rows(inputs)
        rows = [[column.rows[index] for column in inputs] for index in range(count)]
        names = [column.name for column in inputs]
        plan = plan_calls(predictor, names, parameters, batch=True)
        # Request parameters reach predict by keyword: only requests with the same ones share
        # a call, which in practice means those with none.
        return await self.submit(predictor, batch_rows(plan, rows), plan.keywords)

    async def one(self, predictor: Predictor, row: Any) -> JSONValue:
        """One row (a ``/predict`` request's input), predicted within a shared call."""
        values = await self.submit(predictor, [row if isinstance(row, list) else [row]], {})
        return values[0]

    async def submit(
        self, predictor: Predictor, rows: list[list[Any]], keywords: Mapping[str, Any]
    ) -> list[JSONValue]:
        """Queue ``rows`` and wait for their values."""
        loop = asyncio.get_running_loop()
        item = _Item(rows, keywords, loop.create_future())
        self._predictor = predictor
        self._queue.append(item)
        self._queued_rows += len(rows)
        self.waiting += 1
        if self._calls < self.max_calls or self._queued_rows >= self.config.max_size:
            self._dispatch()
        elif self._timer is None:
            self._timer = loop.call_later(self.config.max_wait_ms / 1000, self._on_timer)
        try:
            return await item.future
        finally:
            self.waiting -= 1

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        predictor = self._predictor
        if not self._queue or predictor is None:
            return
        # Whole items, in order, up to max_size rows (an item larger than that goes alone).
        taken = [self._queue.popleft()]
        size = len(taken[0].rows)
        keywords = taken[0].keywords
        while self._queue:
            following = self._queue[0]
            if size + len(following.rows) > self.config.max_size or following.keywords != keywords:
                break
            taken.append(self._queue.popleft())
            size += len(following.rows)
        self._queued_rows -= size
        self._calls += 1
        loop = asyncio.get_running_loop()
        # A task, not the bare executor future: the watchdog's deadline ends the call with
        # PredictTimedOut, which each of its requests then answers (504).
        done = loop.create_task(self.watchdog.run(self.pool, _predict_items, predictor, taken))
        done.add_done_callback(lambda finished: self._finished(finished, taken))
        if self._queue and self._timer is None:
            self._timer = loop.call_later(self.config.max_wait_ms / 1000, self._on_timer)

    def _finished(
        self,
        finished: asyncio.Future[list[_Outcome]],
        taken: list[_Item],
    ) -> None:
        self._calls -= 1
        error = None if finished.cancelled() else finished.exception()
        for index, item in enumerate(taken):
            if item.future.done():  # its caller went away
                continue
            if finished.cancelled():
                item.future.cancel()
            elif error is not None:
                item.future.set_exception(error)
            else:
                outcome = finished.result()[index]
                if isinstance(outcome, CormorantError):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)
        # What queued meanwhile goes now: the call that just ended was its wait.
        if self._queue:
            self._dispatch()


_Outcome = list[JSONValue] | CormorantError
"""An item's values, or the error that is its alone."""


def _predict_items(predictor: Predictor, items: list[_Item]) -> list[_Outcome]:
    """Each item's values from one shared call, or each alone if the shared call fails."""
    rows = [row for item in items for row in item.rows]
    if len(items) > 1:
        try:
            values = predict_chunk(predictor, rows, items[0].keywords)
        except CormorantError as exc:
            log.info("a shared batch of %d requests failed (%s); each goes alone", len(items), exc)
        else:
            sliced: list[_Outcome] = []
            start = 0
            for item in items:
                sliced.append(values[start : start + len(item.rows)])
                start += len(item.rows)
            return sliced
    outcomes: list[_Outcome] = []
    for item in items:
        try:
            outcomes.append(predict_chunk(predictor, item.rows, item.keywords))
        except CormorantError as exc:
            outcomes.append(exc)
    return outcomes
