"""The warm template process local replicas fork from (``python -m cormorant.worker.template``).

The deployer starts one template when it starts and keeps it running: a replica start sends it
one request and gets the forked replica's pid back within milliseconds, with the worker's stack
and the model libraries (``preload_modules``) already imported. The template is this process's
child, the replicas are its children: it reports each replica's exit code, which the deployer
cannot collect itself. A template that dies is started again (with growing delays if it keeps
dying); while none is ready, replicas start as fresh processes. Closing stdin ends it, so it
dies with the deployer whichever way the deployer ends; the replicas do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cormorant.common.sandbox import Identity, Limits

log = logging.getLogger(__name__)

# Room for replicas' command lines in the template's own argument area (see the template's
# ``Title``): a replica's flags with a long source path and a few --env/--server pairs.
TITLE_ROOM = 8192
_SPAWN_TIMEOUT_S = 30.0
_CLOSE_TIMEOUT_S = 5.0
_FIRST_DELAY_S = 1.0
_MAX_DELAY_S = 60.0
# A template that lived this long had recovered: its next death restarts it at once again.
_STABLE_S = 60.0


class TemplateUnavailable(Exception):
    """No ready template, or it refused or failed the request: start a fresh process."""


@dataclass(eq=False, slots=True)
class Generation:
    """One run of the template process and the replicas it forked."""

    pid: int
    alive: bool = True
    exits: dict[int, int] = field(default_factory=dict)
    """Exit codes it reported, by replica pid, until the runtime forgets the replica."""
    waiters: dict[int, asyncio.Future[int | None]] = field(default_factory=dict)

    def exit_code(self, pid: int) -> int | None:
        """The replica's exit code if this template reported it."""
        return self.exits.get(pid)

    def watches(self, pid: int) -> bool:
        """Whether this template still runs and would report ``pid``'s exit."""
        return self.alive and pid not in self.exits

    async def wait(self, pid: int) -> int | None:
        """``pid``'s exit code once reported; None if this template ended first."""
        if not self.watches(pid):
            return self.exits.get(pid)
        future = self.waiters.setdefault(pid, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.shield(future)
        finally:
            self.waiters.pop(pid, None)

    def ended(self, pid: int, code: int) -> None:
        """Record a reported exit."""
        self.exits[pid] = code
        waiter = self.waiters.pop(pid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(code)

    def died(self) -> None:
        """The template process is gone: nothing more will be reported."""
        self.alive = False
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()


class WorkerTemplate:
    """Starts, restarts and talks to the template process."""

    def __init__(
        self, *, command: Sequence[str], modules: Sequence[str], env: Mapping[str, str]
    ) -> None:
        self.command = list(command)
        self.modules = [m for m in modules if m]
        self.env = dict(env)
        self.generation: Generation | None = None
        self.preloaded: list[str] = []
        self.room = 0
        self._process: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def ready(self) -> bool:
        """A template is running and has imported everything."""
        return self._ready.is_set() and self.generation is not None and self.generation.alive

    @property
    def top_modules(self) -> set[str]:
        """Top-level packages the template imports (a model's own copy would be shadowed)."""
        return {name.split(".")[0] for name in self.modules}

    def data_bytes(self) -> int | None:
        """The template's data segment (``VmData``), which every fork starts with."""
        if self.generation is None:
            return None
        try:
            with open(f"/proc/{self.generation.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmData:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def start(self) -> None:
        """Start the template in the background; it is ready a few seconds later."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep_running(), name="worker-template")

    async def wait_ready(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bounded wait
        """Whether a template is ready within ``timeout`` s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        return self.ready

    async def close(self) -> None:
        """End the template (replicas keep running) and stop restarting it."""
        self._closing = True
        process = self._process
        if process is not None and process.stdin is not None:
            with contextlib.suppress(Exception):
                process.stdin.close()
        if process is not None:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def spawn(
        self,
        *,
        title: Sequence[str],
        args: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        log_path: str,
        parent_death_signal: int | None = None,
        deaths_path: str | None = None,
        identity: Identity | None = None,
        limits: Limits | None = None,
    ) -> tuple[int, Generation]:
        """Fork a replica: its pid and the template that forked it (which the replica dies
        with, by ``parent_death_signal``, when one is given).

        The fork takes ``limits`` and ``identity`` (and opens its log and ``deaths_path``
        first, as root) before it runs the worker's ``main``.

        Cancelled or timed out after the request left, the replica forked anyway is killed
        when its pid arrives: nobody would track it otherwise.
        """
        process, generation = self._process, self.generation
        if not self.ready or process is None or process.stdin is None or generation is None:
            raise TemplateUnavailable("the worker template is not ready")
        key = next(self._ids)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        request: dict[str, Any] = {"id": key, "title": list(title), "args": list(args),
                                   "env": dict(env), "cwd": cwd, "log": log_path}  # fmt: skip
        if deaths_path is not None:
            request["deaths"] = deaths_path
        if identity is not None:
            request["uid"], request["gid"] = identity.uid, identity.gid
        if limits is not None:
            request["limits"] = limits.to_mapping()
        if parent_death_signal is not None:
            request["parent_death_signal"] = int(parent_death_signal)
        try:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            async with asyncio.timeout(_SPAWN_TIMEOUT_S):
                pid = await asyncio.shield(future)
        except (TimeoutError, asyncio.CancelledError) as exc:
            future.add_done_callback(_kill_late_replica)
            if isinstance(exc, TimeoutError):
                # Wedged: a new one is started in its place.
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                raise TemplateUnavailable("the worker template did not answer") from None
            raise
        except (OSError, RuntimeError) as exc:  # its stdin closed: it just died
            self._pending.pop(key, None)
            raise TemplateUnavailable(f"the worker template is gone ({exc})") from None
        return pid, generation

    async def _keep_running(self) -> None:
        delay = _FIRST_DELAY_S
        while not self._closing:
            started = time.monotonic()
            try:
                code = await self._run_once()
            except Exception:
                log.exception("the worker template failed")
                code = None
            if self._closing:
                return
            if time.monotonic() - started > _STABLE_S:
                delay = _FIRST_DELAY_S
            log.warning(
                "the worker template exited (code %s); replicas start as fresh processes "
                "until a new one is ready in %.0f s",
                code,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)

    async def _run_once(self) -> int | None:
        argv = [*self.command, "--title-room", " " * TITLE_ROOM]
        for name in self.modules:
            argv += ["--preload", name]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
            limit=1 << 20,
        )
        generation = Generation(process.pid)
        self._process, self.generation = process, generation
        assert process.stdout is not None
        try:
            while line := await process.stdout.readline():
                self._dispatch(generation, json.loads(line))
        finally:
            generation.died()
            self._ready.clear()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(TemplateUnavailable("the worker template exited"))
            self._pending.clear()
            if process.returncode is None and process.stdin is not None:
                process.stdin.close()
        return await process.wait()

    def _dispatch(self, generation: Generation, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "exited":
            generation.ended(int(message["pid"]), int(message["code"]))
        elif event == "spawned" or event == "refused":
            future = self._pending.pop(int(message["id"]), None)
            if future is None or future.done():
                return
            if event == "spawned":
                future.set_result(int(message["pid"]))
            else:
                future.set_exception(TemplateUnavailable(str(message.get("error"))))
        elif event == "ready":
            self.preloaded = list(message.get("preloaded") or [])
            self.room = int(message.get("room") or 0)
            missing = message.get("missing") or {}
            if self.room == 0:
                # Without /proc (not Linux) a forked replica could not show its own command
                # line, which is how a restarted deployer recognises it.
                log.warning("no worker template here: replicas start as fresh processes")
                self._closing = True
                if self._process is not None and self._process.stdin is not None:
                    self._process.stdin.close()
                return
            log.info(
                "worker template ready in %s s (pid %d); preloaded %s%s",
                message.get("seconds"),
                generation.pid,
                ", ".join(self.preloaded),
                f"; not found: {', '.join(missing)}" if missing else "",
            )
            self._ready.set()


def _kill_late_replica(future: asyncio.Future[int]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(future.result(), signal.SIGKILL)
