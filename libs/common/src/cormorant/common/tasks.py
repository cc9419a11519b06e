"""Background tasks a component owns: started by it, cancelled and awaited when it stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskSet:
    """The running tasks of one component; a task that fails is logged, never lost."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._running: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` until it ends or the set is closed; the task is kept until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._running.add(task)
        task.add_done_callback(self._finished)
        return task

    def __len__(self) -> int:
        return len(self._running)

    async def cancel_where(self, picked: Callable[[asyncio.Task[None]], bool]) -> None:
        """Cancel the running tasks ``picked`` chooses and wait until they have ended."""
        tasks = [task for task in self._running if picked(task)]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def close(self) -> None:
        """Cancel every task still running and wait until all have ended."""
        while self._running:
            tasks = list(self._running)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task %s failed", self.owner, task.get_name(), exc_info=task.exception())
