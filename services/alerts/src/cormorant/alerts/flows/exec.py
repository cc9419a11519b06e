"""The one place a flow's ``exec`` task becomes a process, contained, never this service's own.

``run_exec`` starts the command in a session of its own with

- an environment whitelist: ``PATH`` (this interpreter's directory first, so ``python`` is
  the platform's), ``HOME`` and ``TMPDIR`` inside the run's workspace, the locale and time
  zone, plus the task's own ``env`` — no platform secret, database URL, admin key or data dir;
- the run's private workspace as its working directory (``private_workspace``: a temporary
  directory only this user can enter, holding a copy of the flow's directory, so a command
  writes nothing outside it and a later ``deploy`` task finds what it built);
- resource limits: address space, open files, CPU seconds, no core files;
- a deadline, after which its whole process group is killed.

It runs as this service's user: the shared replica sandbox (an unprivileged user) replaces the
start here, in ``run_exec``, without touching the task types.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_OUTPUT = 16_000
"""Characters of a command's output kept: its tail."""
_READ_BYTES = 1 << 16
_PASSED = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


class ExecFailed(Exception):
    """The command did not start or did not finish in time; ``output`` is what it printed."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.output = output


@dataclass(frozen=True, slots=True)
class ExecLimits:
    """What one ``exec`` process may use."""

    memory_bytes: int
    open_files: int


@dataclass(frozen=True, slots=True)
class Finished:
    """A command that ran to its end: its exit status and the tail of its output."""

    returncode: int
    output: str


@contextlib.contextmanager
def private_workspace(directory: Path, *, max_bytes: int) -> Iterator[Path]:
    """A copy of ``directory`` in a fresh directory only this user can enter; removed after.

    ``ExecFailed`` when the directory holds more than ``max_bytes``. Symbolic links are copied
    as links, never followed (one to ``/`` would copy the machine).
    """
    size = _size(directory)
    if size > max_bytes:
        raise ExecFailed(
            f"the flow's directory {directory} holds {size / 1e6:.0f} MB, over the "
            f"{max_bytes / 1e6:.0f} MB a run copies; keep data in datasets, not beside the flow"
        )
    root = Path(tempfile.mkdtemp(prefix="cormorant-flow-"))
    try:
        workspace = root / "work"
        shutil.copytree(directory, workspace, symlinks=True)
        (root / "tmp").mkdir()
        yield workspace
    finally:
        shutil.rmtree(root, ignore_errors=True)


def exec_environment(workspace: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The whitelisted environment of a command run in ``workspace``, ``extra`` on top."""
    env = {name: os.environ[name] for name in _PASSED if name in os.environ}
    system_path = os.environ.get("PATH", _SYSTEM_PATH)
    # `python` in a flow means the platform's interpreter, whatever PATH says.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + system_path
    env["HOME"] = str(workspace)
    env["TMPDIR"] = str(workspace.parent / "tmp")
    env.update(extra)
    return env


async def run_exec(
    argv: Sequence[str],
    *,
    workspace: Path,
    env: Mapping[str, str],
    timeout_s: float,
    limits: ExecLimits,
) -> Finished:
    """Run ``argv`` contained (see the module) in ``workspace`` with ``env`` added to the
    whitelist; ``ExecFailed`` if it cannot start or outlives ``timeout_s``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=workspace,
            env=exec_environment(workspace, env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_limiter(limits, timeout_s),
        )
    except OSError as exc:
        raise ExecFailed(f"could not start: {exc}") from exc
    tail = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            assert proc.stdout is not None
            # Read as it comes, keeping the tail: a command printing gigabytes costs no memory.
            while chunk := await proc.stdout.read(_READ_BYTES):
                tail += chunk
                del tail[: max(0, len(tail) - 4 * MAX_OUTPUT)]
            await proc.wait()
    except TimeoutError:
        _kill(proc.pid)
        await proc.wait()
        raise ExecFailed(f"did not finish within {timeout_s:g} s", _tail(tail)) from None
    except asyncio.CancelledError:
        _kill(proc.pid)
        raise
    finally:
        # Whatever it left running in its session goes with it.
        _kill(proc.pid)
    assert proc.returncode is not None
    return Finished(proc.returncode, _tail(tail))


def _limiter(limits: ExecLimits, timeout_s: float) -> Callable[[], None]:
    cpu_s = math.ceil(timeout_s) + 1

    def apply() -> None:
        # Runs in the forked child before exec: nothing here may take a lock.
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _tail(data: bytes | bytearray) -> str:
    text = bytes(data).decode(errors="replace")
    return text if len(text) <= MAX_OUTPUT else "…" + text[-MAX_OUTPUT:]


def _size(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
