"""``python -m cormorant.worker.template``: a warm process that replicas fork from.

A fresh ``python -m cormorant.worker`` spends seconds importing before it serves: its own stack
(FastAPI, gunicorn, uvicorn, NATS) and then the model's libraries (``import sklearn`` alone
takes seconds). The deployer keeps one of these processes idle instead, with all of that
imported once; a replica start forks it, and the child runs the worker's ``main`` with the
replica's arguments, environment, working directory and log file, as gunicorn's
``--preload``, Ray's prestarted workers and multiprocessing's forkserver do.

The template never starts a Python thread or an event loop, so the fork is safe; the only
native threads are numpy's BLAS pool, which OpenBLAS stops and restarts around a fork itself.

One JSON object per line, requests on stdin, events on stdout:

- ``{"event": "ready", "room": N, "preloaded": [...], "missing": {...}}`` once imports are done;
  ``room`` is how many bytes a replica's command line may take (0: it cannot be shown).
- ``{"id": K, "title": [...], "args": [...], "env": {...}, "cwd": "...", "log": "..."}``
  → ``{"event": "spawned", "id": K, "pid": P}`` or ``{"event": "refused", "id": K, "error": ...}``.
- ``{"event": "exited", "pid": P, "code": C}`` when a replica ends (``C`` < 0: killed by
  signal ``-C``), since only its parent, this process, learns its exit code.

End of stdin (the deployer stopped or died) ends the template; the replicas keep running, in
sessions of their own, and the next deployer adopts them, except those whose request carried
``"parent_death_signal": S``: the kernel sends them ``S`` when the template ends.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from cormorant.common.lifetime import arm_parent_death
from cormorant.common.sandbox import Identity, Limits, contain

# What every replica imports before it can answer, besides the model's own libraries.
WORKER_STACK = (
    "cormorant.worker.cli",
    "cormorant.worker.app",
    "uvicorn_worker",
    "gunicorn.arbiter",
    "gunicorn.workers.base",
    "uvicorn.lifespan.on",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.http.h11_impl",
)


class Title:
    """The process's command line as ``ps`` and ``/proc/PID/cmdline`` show it.

    A forked replica still carries the template's command line; writing the replica's own
    over it keeps it recognisable (the deployer adopts a replica by its ``--port`` and
    ``--source`` flags). The space is the memory of the template's original arguments, which
    the deployer pads for that purpose.
    """

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end

    @property
    def room(self) -> int:
        """Bytes available, the last NUL included."""
        return max(self.end - self.start, 0)

    @classmethod
    def find(cls) -> Title:
        """This process's argument area (``arg_start``/``arg_end`` of ``/proc/self/stat``)."""
        try:
            with open("/proc/self/stat", "rb") as fh:
                stat = fh.read()
            # Fields after the command name (which may hold spaces) start at field 3.
            fields = stat[stat.rindex(b")") + 2 :].split()
            return cls(int(fields[45]), int(fields[46]))
        except (OSError, ValueError, IndexError):
            return cls(0, 0)

    def fits(self, argv: Sequence[str]) -> bool:
        """Whether ``argv`` can be shown in full."""
        return len(_encode(argv)) <= self.room

    def set(self, argv: Sequence[str]) -> None:
        """Show ``argv`` as this process's command line (NUL-padded to the area's end)."""
        data = _encode(argv)
        if not data or len(data) > self.room:
            return
        ctypes.memmove(self.start, data + b"\0" * (self.room - len(data)), self.room)


def _encode(argv: Sequence[str]) -> bytes:
    return b"".join(os.fsencode(part) + b"\0" for part in argv)


def preload(modules: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Import ``modules``; those imported, and why the others were not."""
    done: list[str] = []
    missing: dict[str, str] = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a broken module must not keep the others out
            missing[name] = f"{type(exc).__name__}: {exc}"
        else:
            done.append(name)
    return done, missing


def _reseed_numpy() -> None:
    # Every replica (and every gunicorn worker it forks) would otherwise draw the same
    # numpy.random numbers: the global generator was seeded once, in the template.
    random = sys.modules.get("numpy.random")
    if random is not None:
        with contextlib.suppress(Exception):
            random.seed()


class Template:
    """The request loop: fork a replica per request, report each one's exit."""

    def __init__(self, title: Title) -> None:
        self.title = title
        self.children: set[int] = set()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def send(self, message: Mapping[str, Any]) -> None:
        """Write one event line to the deployer."""
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(1, data) :]

    def serve(self) -> int:
        """Answer requests until stdin ends."""
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        pending = b""
        while True:
            readable, _, _ = select.select([0, self._wake_r], [], [])
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
            self.reap()
            if 0 not in readable:
                continue
            data = os.read(0, 1 << 16)
            if not data:
                self.reap()
                return 0
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    self.handle(json.loads(line))

    def reap(self) -> None:
        """Collect every replica that ended and report its exit code."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.send({"event": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})

    def handle(self, request: Mapping[str, Any]) -> None:
        """Fork one replica."""
        key = request.get("id")
        title = list(request.get("title") or [])
        if not self.title.fits(title):
            needed = len(_encode(title))
            error = f"its command line needs {needed} bytes, {self.title.room} are free"
            self.send({"event": "refused", "id": key, "error": error})
            return
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            self.send({"event": "refused", "id": key, "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            self._become_replica(request, title, parent)
        self.children.add(pid)
        self.send({"event": "spawned", "id": key, "pid": pid})

    def _become_replica(
        self, request: Mapping[str, Any], title: list[str], parent: int
    ) -> NoReturn:
        """In the child: the replica's session, files, title and environment, then ``main``."""
        code = 1
        try:
            # Its own session and process group: it outlives the deployer and stop reaches
            # everything it forks, as for a replica started with start_new_session.
            os.setsid()
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            os.close(self._wake_w)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(null)
            os.close(log)
            env = {str(k): str(v) for k, v in request["env"].items()}
            if request.get("deaths"):
                # Opened as root, like the log: the replica's uid could not open it.
                deaths = os.open(request["deaths"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                env["CORMORANT_WORKER_DEATHS_FD"] = str(deaths)
            self.title.set(title)
            # Contained before anything of the replica's directory can be imported.
            identity = None
            if request.get("uid") is not None:
                identity = Identity(int(request["uid"]), int(request["gid"]))
            if request.get("limits") is not None or identity is not None:
                contain(identity, Limits.from_mapping(request.get("limits")))
            # Asked to die with this template (which dies with the deployer): a fork does not
            # inherit the parent-death signal, and a uid switch clears it, so it is armed here.
            if request.get("parent_death_signal"):
                arm_parent_death(int(request["parent_death_signal"]), parent)
            cwd = str(request["cwd"])
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            # As ``python -m`` would have set them in a process started in ``cwd``.
            sys.argv = [title[0] if title else sys.executable, *request["args"]]
            sys.path[0] = cwd
            from cormorant.worker.cli import main

            code = main(list(request["args"]))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
        os._exit(code)


def build_parser() -> argparse.ArgumentParser:
    """The template's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m cormorant.worker.template",
        description="A warm process that forks worker replicas (started by the deployer).",
    )
    parser.add_argument("--preload", action="append", default=[], metavar="MODULES",
                        help="comma-separated modules to import up front (repeatable)")  # fmt: skip
    parser.add_argument("--title-room", default="",
                        help="padding that reserves room for replicas' command lines")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Import, announce readiness, and fork replicas on request until stdin ends."""
    args = build_parser().parse_args(argv)
    # Ctrl-C in the terminal of `cormorant up` reaches the whole group: the deployer decides
    # when the template ends (by closing stdin), so exit codes keep being reported meanwhile.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    title = Title.find()
    modules = [name.strip() for group in args.preload for name in group.split(",")]
    modules = [name for name in modules if name]
    title.set([sys.executable, "-m", "cormorant.worker.template", "--preload", ",".join(modules)])
    started = time.perf_counter()
    preloaded, missing = preload([*WORKER_STACK, *modules])
    os.register_at_fork(after_in_child=_reseed_numpy)
    template = Template(title)
    template.send(
        {
            "event": "ready",
            "room": title.room,
            "preloaded": preloaded,
            "missing": missing,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return template.serve()


if __name__ == "__main__":
    raise SystemExit(main())
