"""Processes that must not outlive what started them, and finding those that did.

Two mechanisms, because neither covers every case alone:

- the parent-death signal (Linux ``PR_SET_PDEATHSIG``), armed in a child between fork and
  exec (``parent_death_hook`` as ``preexec_fn``) or right after a bare fork
  (``arm_parent_death``): the kernel signals the child when its parent dies, even by SIGKILL.
  It fires when the *thread* that forked ends, so only fork from a thread that lives as long
  as the parent process (the main or event-loop thread);
- process records: ``{"pid", "cmdline"}`` written by whoever starts a process, so a later
  ``cormorant down`` or ``up`` finds what is left. A process counts as the recorded one only
  while its pid *and* its command line match: a pid reused by another program is never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPLICA_RECORDS = Path("run") / "replicas"
"""Where, under the data dir, the local runtime records each replica it runs."""

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.05


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def arm_parent_death(sig: int, parent: int) -> None:
    """In a freshly forked child: receive ``sig`` when the parent (pid ``parent``) dies.

    If it died between the fork and this call, the child was already handed to another
    parent and would never be signalled: it sends itself ``sig`` instead.
    """
    prctl = _prctl()
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def parent_death_hook(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that arms ``sig`` against this process; None where it cannot be."""
    if _prctl() is None:
        return None
    # Resolved here, in the parent: the hook itself runs between fork and exec.
    return functools.partial(arm_parent_death, int(sig), os.getpid())


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """A process some part of the stack started: what it is, its pid and its command line."""

    name: str
    pid: int
    cmdline: tuple[str, ...]
    stop_signal: int = signal.SIGTERM
    details: dict[str, Any] = field(default_factory=dict)

    def live(self) -> psutil.Process | None:
        """The process, if ``pid`` still runs this command line (not a reused pid)."""
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process if shown_cmdline(process.cmdline()) == list(self.cmdline) else None
        except psutil.Error:
            return None


def shown_cmdline(cmdline: Sequence[str]) -> list[str]:
    """``cmdline`` as started (a process that wrote its own title NUL-pads the rest)."""
    shown = list(cmdline)
    while shown and not shown[-1]:
        shown.pop()
    return shown


def write_record(directory: Path, record: ProcessRecord) -> None:
    """Record a started process in ``directory/<name>.json`` (owner-only, atomic)."""
    directory.mkdir(parents=True, exist_ok=True)
    content = {"pid": record.pid, "cmdline": list(record.cmdline), **record.details}
    if record.stop_signal != signal.SIGTERM:
        content["stop_signal"] = int(record.stop_signal)
    path = directory / f"{record.name}.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(content, fh)
    os.replace(tmp, path)


def remove_record(directory: Path, name: str) -> None:
    """Forget a process that ended (or was stopped)."""
    with contextlib.suppress(FileNotFoundError):
        (directory / f"{name}.json").unlink()


def read_records(directory: Path) -> list[ProcessRecord]:
    """Every process recorded in ``directory`` (unreadable files are skipped)."""
    records = []
    for path in sorted(directory.glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            content = json.loads(path.read_text())
            pid, cmdline = int(content.pop("pid")), content.pop("cmdline")
            stop_signal = int(content.pop("stop_signal", signal.SIGTERM))
            if isinstance(cmdline, list) and cmdline:
                records.append(
                    ProcessRecord(path.stem, pid, tuple(map(str, cmdline)), stop_signal, content)
                )
    return records


def stop_processes(records: Iterable[ProcessRecord], *, grace_s: float) -> list[ProcessRecord]:
    """Stop every recorded process still running: its stop signal, then SIGKILL for its whole
    process group (when it leads one) after ``grace_s``. Returns those that were running."""
    running: list[tuple[ProcessRecord, psutil.Process, bool]] = []
    for record in records:
        process = record.live()
        if process is None:
            continue
        leads = _leads_group(record.pid)
        with contextlib.suppress(psutil.Error):
            process.send_signal(record.stop_signal)
        running.append((record, process, leads))
    deadline = time.monotonic() + grace_s
    while any(_runs(p) for _, p, _ in running) and time.monotonic() < deadline:
        time.sleep(_POLL_S)  # polling other processes' exits: nothing to wait on
    for record, process, leads in running:
        # A leader's group holds what it forked (gunicorn workers, the model's own children).
        if leads:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            if _runs(process):
                process.kill()
    kill_deadline = time.monotonic() + 5.0
    while any(_runs(p) for _, p, _ in running) and time.monotonic() < kill_deadline:
        time.sleep(_POLL_S)
    return [record for record, _, _ in running]


def stop_recorded(directory: Path, *, grace_s: float) -> list[ProcessRecord]:
    """``stop_processes`` for every process recorded in ``directory``, whose records are then
    removed (they name processes that ended, or pids other programs have now)."""
    records = read_records(directory)
    stopped = stop_processes(records, grace_s=grace_s)
    for record in records:
        remove_record(directory, record.name)
    return stopped


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _runs(process: psutil.Process) -> bool:
    # A zombie has ended; its parent collects the exit code (not taken from it here).
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
