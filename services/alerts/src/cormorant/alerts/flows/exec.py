"""The one place a flow's ``exec`` task becomes a process, contained, never this service's own.

``run_exec`` starts the command in a session of its own with

- an environment whitelist: ``PATH`` (this interpreter's directory first, so ``python`` is
  the platform's), ``HOME`` and ``TMPDIR`` inside the run's workspace, the locale and time
  zone, plus the task's own ``env`` — no platform secret, database URL, admin key or data dir;
- the run's private workspace as its working directory (``private_workspace``: a temporary
  directory only this user can enter, holding a copy of the flow's directory, so a command
  writes nothing outside it and a later ``deploy`` task finds what it built);
- resource limits: address space, open files, CPU seconds, no core files;
- a deadline, after which its whole process group is killed;
- when this service runs as root (as ``make up`` runs it), a uid of its own (``EXEC_IDENTITY``,
  below the replicas' range), no supplementary group and ``no_new_privs``: it cannot read this
  service's environment (``/proc/<pid>/environ``), the data directory or other runs' files.
  Otherwise it runs as this service's user, with a loud warning (``contained_identity``).
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

from cormorant.common import sandbox
from cormorant.common.sandbox import Identity

EXEC_IDENTITY = Identity(sandbox.DEFAULT_UID_BASE - 1, sandbox.DEFAULT_UID_BASE - 1)
"""The uid and gid of every ``exec`` process (runs never overlap in one workspace)."""

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
    identity: Identity | None = None
    """The uid and gid it runs as (``contained_identity``); None: this service's own."""


@dataclass(frozen=True, slots=True)
class Finished:
    """A command that ran to its end: its exit status and the tail of its output."""

    returncode: int
    output: str


def contained_identity() -> Identity | None:
    """The identity ``exec`` processes run as: ``EXEC_IDENTITY`` when this process may switch
    users (and the interpreter is reachable by it), else None after a loud warning."""
    if not sandbox.can_switch_user():
        sandbox.warn_uncontained("flow exec tasks", ["this service does not run as root"])
        return None
    sandbox.open_path_for_others(sandbox.runtime_paths())
    return EXEC_IDENTITY


@contextlib.contextmanager
def private_workspace(
    directory: Path, *, max_bytes: int, owner: Identity | None = None
) -> Iterator[Path]:
    """A copy of ``directory`` in a fresh directory only this user (or ``owner``) can enter;
    removed after.

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
        if owner is not None:
            for path in (root, *root.rglob("*")):
                os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
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
    identity = limits.identity

    def apply() -> None:
        # Runs in the forked child before exec: nothing here may take a lock.
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        sandbox.set_no_new_privs()
        if identity is not None:
            # Syscalls only (drop_privileges also reads /proc): the uid change drops every
            # capability, and no_new_privs keeps setuid files from giving any back.
            os.setgroups([])
            os.setresgid(identity.gid, identity.gid, identity.gid)
            os.setresuid(identity.uid, identity.uid, identity.uid)

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
