"""Waiting in tests for what another process or task will do: poll with a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]],
    *,
    within: float = ...,
    what: str = ...,
    every: float = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T | None],
    *,
    within: float = ...,
    what: str = ...,
    every: float = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Any],
    *,
    within: float = 30.0,
    what: str = "condition",
    every: float = 0.05,
) -> Any:
    """The first truthy result of ``check()`` (awaited when it is a coroutine), polled every
    ``every`` s; an ``AssertionError`` naming ``what`` and the last result after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        last = await result if inspect.isawaitable(result) else result
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within:g} s (last: {last!r})")
        await asyncio.sleep(every)  # the polling interval, never a wait for readiness
