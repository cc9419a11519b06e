"""Waiting in tests for what another process or task will do: poll with a deadline."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, overload

import httpx
import pytest

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


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log: Path, *, name: str, within: float
) -> None:
    """Poll ``url``'s ``/healthz`` until it answers 200; fail the test, with the end of
    ``log``, if ``proc`` (the server called ``name``) exits first or ``within`` s pass."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            pytest.fail(f"{name} exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # the polling interval, never a wait for readiness
    pytest.fail(f"{name} was not ready within {within:g} s:\n{log.read_text()[-3000:]}")
