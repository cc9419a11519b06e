"""Worker deaths inside a replica: why each gunicorn worker ended, told to the deployer.

Gunicorn's master replaces a worker that dies, so the replica keeps serving; the deployer
would never learn of it. The master here (``ReplicaArbiter``) reads each dead worker's exit
status before gunicorn reaps it and writes one JSON line per death to a file descriptor the
deployer gave it (``deaths_fd``): ``{"pid", "cause", "detail", "time"}``. Workers close that
descriptor as they start, so predict code cannot write to it.

A worker that ends itself for a known reason uses its own exit code: ``EXIT_TIMEOUT`` after a
predict call passed the endpoint's deadline, ``EXIT_OOM`` after one ran out of memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any

from gunicorn.arbiter import Arbiter

EXIT_TIMEOUT = 70
"""A worker ended itself because a predict call passed the endpoint's ``timeout_s``."""
EXIT_OOM = 71
"""A worker ended itself because a predict call ran out of memory (``resources.memory_mb``)."""


def describe_status(code: int | None, signum: int | None, aborted: bool) -> tuple[str, str]:
    """``(cause, detail)`` of a worker that ended with exit ``code`` or by signal ``signum``."""
    if code == EXIT_TIMEOUT or (aborted and signum in (signal.SIGABRT, signal.SIGKILL)):
        return "timeout", "a predict call passed the endpoint's timeout_s"
    if code == EXIT_OOM:
        return "oom", "a predict call ran out of memory (resources.memory_mb)"
    if signum is not None:
        name = _signal_name(signum)
        if signum == signal.SIGKILL:
            return "killed", f"killed by {name} (out of memory, or killed from outside)"
        return "signal", f"killed by {name}"
    if code is None:
        return "exit", "exited (status unknown)"
    return "exit", f"exited with code {code}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class ReplicaArbiter(Arbiter):  # type: ignore[misc]
    """Gunicorn's master, noting each worker's exit status before gunicorn reaps it."""

    deaths_fd: int | None = None

    def __init__(self, app: Any, deaths_fd: int | None) -> None:
        super().__init__(app)
        self.deaths_fd = deaths_fd
        self.statuses: dict[int, tuple[int | None, int | None]] = {}

    def reap_workers(self) -> None:
        """Peek at the next ended child's status, then let gunicorn reap (and replace) it."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if info is None:
                break
            if info.si_code == os.CLD_EXITED:
                self.statuses[info.si_pid] = (info.si_status, None)
            else:
                self.statuses[info.si_pid] = (None, info.si_status)
            super().reap_workers()
            # Gunicorn reaped everything that had ended; a pid that was not its worker is gone.
            self.statuses.pop(info.si_pid, None)

    def report(self, worker: Any) -> None:
        """Write the death of ``worker`` (gunicorn's ``child_exit`` hook calls this)."""
        code, signum = self.statuses.pop(worker.pid, (None, None))
        if self.deaths_fd is None or (code == 0 and signum is None):
            return  # a planned exit (max_requests, a scale-down of workers, a shutdown)
        if signum == signal.SIGTERM:
            return  # asked to stop by the master itself
        cause, detail = describe_status(code, signum, bool(getattr(worker, "aborted", False)))
        line = {"pid": worker.pid, "cause": cause, "detail": detail, "time": time.time()}
        with contextlib.suppress(OSError):
            os.write(self.deaths_fd, (json.dumps(line) + "\n").encode())


def child_exit(server: Any, worker: Any) -> None:
    """Gunicorn hook in the master: report the death."""
    if isinstance(server, ReplicaArbiter):
        server.report(worker)


def close_deaths_fd(fd: int | None) -> None:
    """In a freshly forked worker: drop the master's channel to the deployer."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
