"""The ``local`` runtime: each replica is a ``python -m cormorant.worker`` process here (a
``python -m cormorant.kafka_bridge`` one for a stream endpoint).

A web or batch replica is forked from the warm worker template when one is ready
(``runtime/template.py``): the same worker ``main`` with the same flags, environment, working
directory and log, without seconds of imports; it shows the command line a fresh process would
have. Otherwise (no template, a stream replica, an environment or source that would not see the
template's imports) it is started as a fresh process.

A replica runs in a session of its own, so it survives a restart of the deployer (which then
adopts it) and so that stopping it can reach every process it forked (gunicorn workers, and
whatever the predict code starts) through its process group. With ``die_with_deployer`` (the
local stack) it gets SIGTERM from the kernel when its parent (the deployer, or the template
that forked it) dies instead; and every replica is recorded under ``<data>/run/replicas/`` while
it runs, so ``cormorant down``/``up`` find one that outlived its deployer anyway.

Contained (``Sandbox``), a replica runs under a uid of its own, from a private directory (see
``cormorant.common.sandbox``) that holds a copy of its version's code and its scratch space,
with an environment of its own settings only and its endpoint's limits; stopping it also ends
every process left under its uid, wherever it moved. Its gunicorn master reports each worker
that dies to a ``.deaths`` file next to the replica's log, through a descriptor the workers
do not keep (``deaths``).

A worker replica spools each answered prediction until JetStream has it (``bus.spool``), in
``spool/`` of its scratch directory (``<data>/run/spool/<replica>`` uncontained); a replica
this runtime kills is replayed from there, on the deployer's own publisher, before its
directory is deleted: predictions its clients got answers for are logged all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import psutil

from cormorant.common import lifetime, sandbox
from cormorant.common.bus import spool as spooling
from cormorant.common.errors import CormorantError
from cormorant.common.events import PredictionLogged
from cormorant.common.internal import REPLICA_KEY_VARIABLE, ReplicaKeys
from cormorant.common.ports import free_port
from cormorant.common.sandbox import Identity, Limits, PrivateDir, UidPool
from cormorant.common.web import REPLICA_ENV
from cormorant.fleet.runtime import (
    REFUSED_EXIT_CODE,
    ConfigurationRefused,
    Exit,
    ReplicaHandle,
    ReplicaLaunch,
    WorkerDeath,
    refusal_reason,
)
from cormorant.fleet.runtime.template import (
    Generation,
    TemplateUnavailable,
    WorkerTemplate,
)

log = logging.getLogger(__name__)

_TAIL_LINES = 20
_TAIL_CHARS = 2000
_POLL_S = 0.05
SPOOL_DIR = "spool"
"""A worker replica's prediction spool, in its scratch directory."""
_SPOOL_FLUSH_S = 5.0
"""How long a kill waits for JetStream to ack a dead replica's spooled predictions."""
# What a replica still running when the runtime closes gets (its runner normally stopped it).
_CLOSE_GRACE_S = 10.0
# Variables that libraries read once, when imported: a replica that sets one must import them
# itself, so it does not fork from a template that imported them already.
_IMPORT_TIME_ENV = ("OMP_", "OPENBLAS_", "MKL_", "NUMEXPR_", "NUMBA_", "VECLIB_", "BLIS_",
                    "GOTO_", "KMP_", "NUMPY_", "SCIPY_", "SKLEARN_", "PANDAS_", "PYTHON",
                    "LD_", "MALLOC_", "CUDA_", "TF_", "TORCH", "JAX_", "XLA_")  # fmt: skip


_FORK_HEADROOM = 512 * 1024 * 1024
"""Memory a forked replica needs beyond what the template holds (its worker, its model)."""


@dataclass(frozen=True, slots=True)
class Sandbox:
    """How replicas are contained: where their private directories go, and the uids they
    get (None: they keep this process's uid, which is not root)."""

    directory: Path
    uids: UidPool | None


@dataclass(slots=True)
class _Process:
    pid: int
    popen: subprocess.Popen[bytes] | None
    log_path: Path
    log_offset: int
    template: Generation | None = None
    """The template run that forked it (which reports its exit code), if any."""
    uid: int | None = None
    """Its own uid, when contained under one."""
    deaths_offset: int = 0
    """How much of its ``.deaths`` file was read."""
    spool: tuple[Path, spooling.Labels] | None = None
    """Its prediction spool and what its predictions are, for a worker replica."""


class SpoolSink(spooling.PackSink, Protocol):
    """Where a killed replica's spooled predictions are published (a ``BatchedPublisher``)."""

    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait (up to ``timeout`` s) until everything queued is acknowledged."""
        ...


_PROBE = "import cormorant.worker"


async def prepare_sandbox(
    directory: Path,
    data_dir: Path,
    *,
    uid_base: int,
    uid_count: int,
    uid_claims: Path | None = None,
) -> Sandbox:
    """Get this machine ready to contain replicas: the data directory closed to them, the
    interpreter reachable by their uids (checked by running it as one)."""
    if not await asyncio.to_thread(_prepare_directories, directory, data_dir):
        sandbox.warn_uncontained("replicas", ["this service does not run as root"])
        return Sandbox(directory, None)
    uid = uid_base + uid_count - 1
    # subprocess, not asyncio's: uvloop's cannot switch the child's user.
    probe = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _PROBE],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=sandbox.contained_environment(os.environ, {}, home=None),
        cwd="/",
        user=uid,
        group=uid,
        extra_groups=[],
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        lines = probe.stderr.decode(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else "no output"
        sandbox.warn_uncontained("replicas", [f"uid {uid} cannot run {sys.executable}: {reason}"])
        return Sandbox(directory, None)
    return Sandbox(directory, UidPool(directory, base=uid_base, count=uid_count, claims=uid_claims))


def _prepare_directories(directory: Path, data_dir: Path) -> bool:
    """Close the data directory to replicas, open the interpreter's path to them; False if
    replicas cannot get uids of their own here (this process is not root)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    created = [path for path in (directory, *directory.parents) if not path.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    if sandbox.can_switch_user():
        # Made here (under /var/lib by default): root's, traversable by replicas' uids but
        # not listable, like every private directory's parent.
        for path in created:
            os.chown(path, 0, 0)
            os.chmod(path, 0o711)
    if directory.resolve().is_relative_to(data_dir.resolve()):
        raise CormorantError(
            f"the sandbox directory {directory} lies inside the data directory {data_dir}, "
            "which replicas cannot enter; set CORMORANT_FLEET_SANDBOX_DIR elsewhere"
        )
    if not sandbox.can_switch_user():
        return False
    # The embedded PostgreSQL server keeps its cluster inside: it must still get in.
    sandbox.close_to_others(data_dir, group_traverse=(data_dir / "postgres").is_dir())
    opened = sandbox.open_path_for_others([*sandbox.runtime_paths(), directory / "x"])
    if opened:
        log.warning("let replicas' uids traverse %s to run this Python installation",
                    ", ".join(map(str, opened)))  # fmt: skip
    return True


class LocalRuntime:
    """Worker processes on this machine, one log file each under ``logs/replicas/``."""

    def __init__(
        self,
        *,
        command: Sequence[str],
        data_dir: Path,
        host: str,
        env: Mapping[str, str],
        check_timeout: float,
        bridge_command: Sequence[str] | None = None,
        template: WorkerTemplate | None = None,
        die_with_deployer: bool = False,
        sandbox: Sandbox | None = None,
        spool_sink: SpoolSink | None = None,
        replica_keys: ReplicaKeys | None = None,
    ) -> None:
        self.command = list(command)
        self.replica_keys = replica_keys
        self.spool_sink = spool_sink
        self.spools = data_dir / "run" / "spool"
        self.sandbox = sandbox
        self.template = template
        self.die_with_deployer = die_with_deployer
        self.records = data_dir / lifetime.REPLICA_RECORDS
        self.bridge_command = list(
            bridge_command or [sys.executable, "-m", "cormorant.kafka_bridge"]
        )
        self.logs = data_dir / "logs" / "replicas"
        self.host = host
        self.env = dict(env)
        self.check_timeout = check_timeout
        self._procs: dict[str, _Process] = {}
        self._uids: dict[str, int] = {}
        """The uid of each contained replica this runtime started or adopted."""

    async def check(self, launch: ReplicaLaunch) -> None:
        """Run ``worker --check`` with the replica's flags; ``ConfigurationRefused`` on exit 2."""
        argv = [*self._argv(launch, 0)]
        argv.insert(len(self._command(launch)), "--check")
        result = None
        if self.template is not None and self._forkable(launch, self.template):
            result = await self._check_forked(launch, argv, self.template)
        if result is None:
            result = await self._check_process(launch, argv)
        code, text = result
        if code == 0:
            return
        if "unrecognized arguments" in text and "--check" in text:
            # A worker from before --check existed: its replicas will refuse a bad
            # configuration at start, and the crash reason will say why.
            return
        if code == REFUSED_EXIT_CODE:
            raise ConfigurationRefused(_clip(refusal_reason(text)))
        raise CormorantError(
            f"the worker could not check this configuration (exit {code}): "
            f"{_clip(text) or 'no output'}"
        )

    async def _check_process(self, launch: ReplicaLaunch, argv: list[str]) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self._env(launch),
            start_new_session=True,
            preexec_fn=self._parent_death_hook(),
        )
        try:
            async with asyncio.timeout(self.check_timeout):
                _, err = await proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, err.decode(errors="replace").strip()

    async def _check_forked(
        self, launch: ReplicaLaunch, argv: list[str], template: WorkerTemplate
    ) -> tuple[int, str] | None:
        """The check forked from the template (milliseconds, not seconds); None if it cannot."""
        fd, name = tempfile.mkstemp(prefix="cormorant-check-", suffix=".log")
        os.close(fd)
        output = Path(name)
        try:
            try:
                pid, generation = await template.spawn(
                    title=argv,
                    args=argv[len(self.command) :],
                    env=self._env(launch),
                    cwd=str(launch.source),
                    log_path=name,
                    parent_death_signal=self._parent_death_signal(),
                )
            except TemplateUnavailable:
                return None
            try:
                async with asyncio.timeout(self.check_timeout):
                    code = await generation.wait(pid)
            except BaseException:
                _kill_group(pid)
                raise
            finally:
                generation.exits.pop(pid, None)
            if code is None:  # the template died before reporting it
                return None
            return code, _read(output)
        finally:
            os.unlink(name)

    def open(self) -> None:
        """Start the worker template, if there is one (it is ready seconds later)."""
        if self.template is not None:
            self.template.start()

    async def close(self) -> None:
        """End the worker template; replicas keep running (``Supervisor.close`` decides), but
        with ``die_with_deployer`` any replica still tracked here is stopped first."""
        if self.die_with_deployer:
            handles = [ReplicaHandle(key, "", self.host, p.pid) for key, p in self._procs.items()]
            await asyncio.gather(*(self.stop(h, grace_s=_CLOSE_GRACE_S) for h in handles))
        if self.template is not None:
            await self.template.close()
        if self.sandbox is not None:
            # The stack's directory under the shared root, once no replica is left in it.
            with contextlib.suppress(OSError):
                os.rmdir(self.sandbox.directory)

    async def start(self, launch: ReplicaLaunch) -> ReplicaHandle:
        """Start the worker on a free port, its output appended to the replica's log."""
        port = free_port(self.host)
        forkable = self.template is not None and self._forkable(launch, self.template)
        private, identity = await self._contain(launch)
        if private is not None:
            launch = replace(launch, source=private.code)
        argv = self._argv(launch, port)
        env = self._env(launch, private)
        cwd = private.root if private is not None else launch.source
        deaths = self.deaths_path(launch)
        if self.template is not None and forkable:
            log_path, offset = self._begin_log(launch, port, "forked from the worker template")
            try:
                pid, generation = await self.template.spawn(
                    title=argv,
                    args=argv[len(self.command) :],
                    env=env,
                    cwd=str(cwd),
                    log_path=str(log_path),
                    parent_death_signal=self._parent_death_signal(),
                    deaths_path=str(deaths),
                    identity=identity,
                    limits=_limits(launch),
                )
            except TemplateUnavailable as exc:
                log.info("replica %s starts as a fresh process: %s", launch.replica_id, exc)
                with log_path.open("ab") as out:
                    out.write(f"--- not forked ({exc}); starting a fresh process\n".encode())
            else:
                self._procs[launch.replica_id] = _Process(
                    pid, None, log_path, offset, generation, _uid(identity), _size(deaths)
                )
                self._procs[launch.replica_id].spool = self._spool_of(launch)
                self._record(launch, pid, argv)
                return self._handle(launch, port, pid)
        else:
            log_path, offset = self._begin_log(launch, port)
        # Not in a thread: a cancellation between the fork and the handle would leave a
        # process nobody tracks, and a fork+exec is over in milliseconds.
        return self._spawn(launch, argv, env, cwd, identity, port, log_path, offset)

    async def _contain(self, launch: ReplicaLaunch) -> tuple[PrivateDir | None, Identity | None]:
        """The replica's private directory (with a fresh copy of its code) and uid."""
        if self.sandbox is None:
            return None, None
        directory = self.sandbox.directory
        existing = PrivateDir.at(directory / launch.replica_id)
        identity = None
        if self.sandbox.uids is not None:
            # Reserved before the first await: two replicas starting at once must not both
            # take the lowest uid whose directory is not made yet.
            reserved = [uid for key, uid in self._uids.items() if key != launch.replica_id]
            identity = self.sandbox.uids.identity_for(existing, reserved)
            self._uids[launch.replica_id] = identity.uid
        private = await asyncio.to_thread(
            sandbox.prepare_private_dir, directory, launch.replica_id, launch.source, identity
        )
        return private, identity

    def _private(self, launch: ReplicaLaunch) -> ReplicaLaunch:
        """``launch`` as it runs contained: from its private copy of the code."""
        if self.sandbox is None:
            return launch
        private = PrivateDir.at(self.sandbox.directory / launch.replica_id)
        return replace(launch, source=private.code)

    def _handle(self, launch: ReplicaLaunch, port: int, pid: int) -> ReplicaHandle:
        """A replica this runtime started: its ``/healthz`` names it (``REPLICA_ENV``)."""
        url = _url(self.host, port)
        return ReplicaHandle(launch.replica_id, url, self.host, pid, identity=launch.replica_id)

    def _forkable(self, launch: ReplicaLaunch, template: WorkerTemplate) -> bool:
        """Whether ``launch`` would run the same forked from the template as started afresh."""
        if launch.bridge is not None or not template.ready:
            return False
        if any(key.upper().startswith(_IMPORT_TIME_ENV) for key in launch.env):
            return False
        # A fork starts with all the template imported: a small memory limit would leave it
        # no room to run (a fresh process only maps what the model imports).
        held = template.data_bytes()
        limit = _limits(launch).memory_mb * 1024 * 1024
        if held is None or held + _FORK_HEADROOM > limit:
            return False
        # A module of the model's own named like a preloaded one would be shadowed by it.
        try:
            names = {Path(entry).stem for entry in os.listdir(launch.source)}
        except OSError:
            return False
        return not names & template.top_modules

    def _begin_log(self, launch: ReplicaLaunch, port: int, how: str = "") -> tuple[Path, int]:
        """The replica's log with a header line appended; where its own output starts."""
        log_path = self.log_path(launch)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            detail = f" ({how})" if how else ""
            line = f"--- {stamp} starting replica {launch.replica_id} on port {port}{detail}\n"
            out.write(line.encode())
            return log_path, out.tell()

    def _spawn(
        self,
        launch: ReplicaLaunch,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        identity: Identity | None,
        port: int,
        log_path: Path,
        offset: int,
    ) -> ReplicaHandle:
        deaths = self.deaths_path(launch)
        fd = os.open(deaths, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if launch.bridge is None:
                env = {**env, "CORMORANT_WORKER_DEATHS_FD": str(fd)}
            with log_path.open("ab") as out:
                popen = subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=cwd,
                    # Its own session: it outlives the deployer, and its group holds its
                    # children.
                    start_new_session=True,
                    pass_fds=(fd,) if launch.bridge is None else (),
                    # Switched before the interpreter starts: nothing of it runs as root.
                    user=identity.uid if identity else None,
                    group=identity.gid if identity else None,
                    extra_groups=[] if identity else None,
                    # After the uid switch: a credential change clears the parent-death signal.
                    preexec_fn=self._parent_death_hook(),
                )
        finally:
            os.close(fd)
        if launch.bridge is not None and self.sandbox is not None:
            # The bridge does not set its own limits; its imports take far longer than this.
            _set_limits(popen.pid, _limits(launch))
        self._procs[launch.replica_id] = _Process(
            popen.pid, popen, log_path, offset, uid=_uid(identity), deaths_offset=_size(deaths)
        )
        self._procs[launch.replica_id].spool = self._spool_of(launch)
        self._record(launch, popen.pid, argv)
        return self._handle(launch, port, popen.pid)

    async def adopt(
        self, launch: ReplicaLaunch, *, url: str, host: str | None, pid: int | None
    ) -> ReplicaHandle | None:
        """The running worker ``pid`` if it is still this replica's (same source and port)."""
        if pid is None:
            return None
        launch = self._private(launch)
        port = str(urlsplit(url).port)
        port_flag = "--metrics-port" if launch.bridge is not None else "--port"
        source = str(launch.source)
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                _reap(pid)
                cmdline: list[str] = []
            else:
                cmdline = process.cmdline()
        except psutil.Error:
            cmdline = []
        # The pid may have been reused by another program since the row was written.
        if not (_has_flag(cmdline, port_flag, port) and _has_flag(cmdline, "--source", source)):
            _kill_orphans(pid, port_flag, port, source)
            return None
        log_path = self.log_path(launch)
        offset = log_path.stat().st_size if log_path.exists() else 0
        private = PrivateDir.at(launch.source.parent)
        uids = self.sandbox.uids if self.sandbox is not None else None
        uid = private.owner() if uids is not None else None
        if uid is not None and uids is not None:
            self._uids[launch.replica_id] = uid
            uids.claim(uid)  # held again, as before this fleet's restart
        self._procs[launch.replica_id] = _Process(
            pid, None, log_path, offset, uid=uid, deaths_offset=_size(self.deaths_path(launch))
        )
        self._procs[launch.replica_id].spool = self._spool_of(launch)
        self._record(launch, pid, lifetime.shown_cmdline(cmdline))
        return ReplicaHandle(launch.replica_id, url, host or self.host, pid, adopted=True)

    async def exited(self, handle: ReplicaHandle) -> Exit | None:
        """How the replica's process ended, or None while it runs."""
        proc = self._procs.get(handle.replica_id)
        if proc is None:
            return Exit(None, "")
        code = _exit_code(proc)
        if isinstance(code, _Running):
            return None
        return Exit(code, self._tail(proc))

    async def deaths(self, handle: ReplicaHandle) -> list[WorkerDeath]:
        """Worker deaths the replica's master reported since the last call."""
        proc = self._procs.get(handle.replica_id)
        if proc is None:
            return []
        path = proc.log_path.with_suffix(".deaths")
        try:
            with path.open("rb") as fh:
                fh.seek(proc.deaths_offset)
                data = fh.read(1 << 20)
        except OSError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        proc.deaths_offset += len(complete)
        found = []
        for line in complete.splitlines():
            try:
                entry = json.loads(line)
                found.append(WorkerDeath(entry.get("pid"), str(entry["cause"]),
                                         str(entry.get("detail") or entry["cause"])))  # fmt: skip
            except (ValueError, KeyError, TypeError):
                continue
        return found

    async def stop(self, handle: ReplicaHandle, *, grace_s: float) -> Exit:
        """SIGTERM (gunicorn finishes in-flight requests), SIGKILL the group after ``grace_s``."""
        proc = self._procs.get(handle.replica_id)
        if proc is None:
            return Exit(None, "")
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        ended = await self.exited(handle)
        while ended is None and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
            ended = await self.exited(handle)
        if ended is None:
            log.warning(
                "replica %s did not stop within %.0f s; killing it", handle.replica_id, grace_s
            )
        await self.kill(handle)
        return ended or Exit(-signal.SIGKILL, self._tail(proc))

    async def kill(self, handle: ReplicaHandle) -> None:
        """SIGKILL the replica's process group (its forks included) and forget it."""
        proc = self._procs.pop(handle.replica_id, None)
        if proc is None:
            return
        lifetime.remove_record(self.records, handle.replica_id)
        _kill_group(proc.pid)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if not isinstance(_exit_code(proc), _Running):
                break
            await asyncio.sleep(_POLL_S)
        _release(proc)
        if proc.uid is not None:
            # What left the process group (a daemonised child) still runs under its uid.
            await asyncio.to_thread(_kill_uid, proc.uid)
        await self._replay_spool(proc)
        if self.sandbox is not None:
            await asyncio.to_thread(
                sandbox.remove_private_dir, self.sandbox.directory, handle.replica_id
            )
        uid = self._uids.pop(handle.replica_id, None)
        if uid is not None and self.sandbox is not None and self.sandbox.uids is not None:
            self.sandbox.uids.release(uid)

    async def _replay_spool(self, proc: _Process) -> None:
        """Publish what the (dead) replica's workers spooled but JetStream did not ack."""
        if proc.spool is None:
            return
        directory, labels = proc.spool
        sink = self.spool_sink
        if sink is not None:
            subject = f"{PredictionLogged.subject_prefix}.{labels.endpoint}"
            try:
                queued = spooling.replay(directory, labels, sink, subject)
            except OSError as exc:
                log.warning("the prediction spool %s was not replayed: %s", directory, exc)
                queued = 0
            if queued:
                log.info("replica of %s: %d spooled prediction(s) published", labels.endpoint,
                         queued)  # fmt: skip
                if not await sink.flush(_SPOOL_FLUSH_S):
                    log.warning("spooled predictions of %s still wait for JetStream; they "
                                "stay queued in the deployer", labels.endpoint)  # fmt: skip
        if self.sandbox is None:
            await asyncio.to_thread(shutil.rmtree, directory, True)

    def _spool_of(self, launch: ReplicaLaunch) -> tuple[Path, spooling.Labels] | None:
        """Where a worker replica spools its predictions (None for a stream replica)."""
        if launch.bridge is not None:
            return None
        if self.sandbox is not None:
            private = PrivateDir.at(self.sandbox.directory / launch.replica_id)
            directory = private.scratch / SPOOL_DIR
        else:
            directory = self.spools / launch.replica_id
        return directory, spooling.Labels(launch.endpoint, None, launch.version)

    def _parent_death_signal(self) -> int | None:
        return signal.SIGTERM if self.die_with_deployer else None

    def _parent_death_hook(self) -> Callable[[], None] | None:
        """SIGTERM for the replica when the deployer dies, if it lives no longer than that."""
        return lifetime.parent_death_hook(signal.SIGTERM) if self.die_with_deployer else None

    def _record(self, launch: ReplicaLaunch, pid: int, cmdline: Sequence[str]) -> None:
        """Note the replica under ``run/replicas/`` until it is stopped (see ``lifetime``)."""
        record = lifetime.ProcessRecord(
            launch.replica_id, pid, tuple(cmdline), details={"endpoint": launch.endpoint}
        )
        try:
            lifetime.write_record(self.records, record)
        except OSError as exc:  # a full disk must not stop a replica from serving
            log.warning("replica %s: cannot record its pid: %s", launch.replica_id, exc)

    def _command(self, launch: ReplicaLaunch) -> list[str]:
        return self.bridge_command if launch.bridge is not None else self.command

    def _argv(self, launch: ReplicaLaunch, port: int) -> list[str]:
        """The replica's command line, listening on ``port``."""
        if launch.bridge is not None:
            return [
                *self.bridge_command,
                *launch.bridge_args(),
                "--metrics-host", self.host,
                "--metrics-port", str(port),
            ]  # fmt: skip
        return [*self.command, *launch.worker_args(), "--host", self.host, "--port", str(port)]

    def _env(self, launch: ReplicaLaunch, private: PrivateDir | None = None) -> dict[str, str]:
        # A worker's settings are not a bridge's, nor the other way round.
        other = "CORMORANT_WORKER_" if launch.bridge is not None else "CORMORANT_KAFKA_BRIDGE_"
        own = {k: v for k, v in self.env.items() if not k.startswith(other)}
        own[REPLICA_ENV] = launch.replica_id
        if launch.bridge is not None:
            own.update(launch.bridge.environment())
        else:
            own.update(launch.worker_settings())
            key = self.replica_keys(launch.replica_id) if self.replica_keys else None
            if key is not None:
                # Its own key only: what the gateway and batch present to this replica.
                own[REPLICA_KEY_VARIABLE] = key
            located = self._spool_of(launch)
            if located is not None and (self.sandbox is None or private is not None):
                own["CORMORANT_WORKER_SPOOL_DIR"] = str(located[0])
        if self.sandbox is None:
            return own
        # Only its own settings: nothing else of this process's environment.
        return sandbox.contained_environment(
            os.environ, own, home=private.scratch if private is not None else None
        )

    def forget(self, handle: ReplicaHandle) -> None:
        """Stop tracking a replica without touching its process (it keeps serving)."""
        proc = self._procs.pop(handle.replica_id, None)
        self._uids.pop(handle.replica_id, None)  # its private directory keeps the uid taken
        if proc is not None:
            lifetime.remove_record(self.records, handle.replica_id)
            _release(proc)

    def log_path(self, launch: ReplicaLaunch) -> Path:
        """The replica's log file."""
        return self.logs / f"{launch.endpoint}-{launch.replica_id}.log"

    def deaths_path(self, launch: ReplicaLaunch) -> Path:
        """Where the replica's master reports its workers' deaths."""
        return self.log_path(launch).with_suffix(".deaths")

    def _tail(self, proc: _Process) -> str:
        try:
            with proc.log_path.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                start = max(proc.log_offset, size - 64 * 1024)
                fh.seek(start)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()][-_TAIL_LINES:]
        return _clip("\n".join(lines))


class _Running:
    """The process has not ended (``_exit_code``'s answer while it runs)."""


_RUNNING = _Running()


def _exit_code(proc: _Process) -> int | _Running | None:
    """The exit code once ended (None when unknown), ``_RUNNING`` while it runs."""
    if proc.popen is not None:
        code = proc.popen.poll()
        return _RUNNING if code is None else code
    if proc.template is not None:
        reported = proc.template.exit_code(proc.pid)
        if reported is not None:
            return reported
        if proc.template.watches(proc.pid):
            return _RUNNING
    # Adopted, or its template died: the exit code went to whoever reaped it.
    return _RUNNING if _alive(proc.pid) else None


def _limits(launch: ReplicaLaunch) -> Limits:
    return Limits.from_mapping(launch.resources)


def _set_limits(pid: int, limits: Limits) -> None:
    for kind, value in (
        (resource.RLIMIT_DATA, limits.memory_mb * 1024 * 1024),
        (resource.RLIMIT_NPROC, limits.max_processes),
        (resource.RLIMIT_NOFILE, limits.open_files),
    ):
        with contextlib.suppress(OSError, ValueError):
            resource.prlimit(pid, kind, (value, value))


def _uid(identity: Identity | None) -> int | None:
    return identity.uid if identity is not None else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _kill_uid(uid: int) -> None:
    """SIGKILL every process running as ``uid`` (a replica's own uid: nothing else has it)."""
    for process in psutil.process_iter(["uids"]):
        try:
            uids = process.info.get("uids")
            if uids is not None and uid in (uids.real, uids.effective):
                process.kill()
        except psutil.Error:
            continue


def _read(path: Path) -> str:
    return path.read_text(errors="replace").strip()


def _release(proc: _Process) -> None:
    if proc.template is not None:
        proc.template.exits.pop(proc.pid, None)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _has_flag(cmdline: Sequence[str], flag: str, value: str) -> bool:
    return (
        any(cmdline[i] == flag and cmdline[i + 1] == value for i in range(len(cmdline) - 1))
        or f"{flag}={value}" in cmdline
    )


def _alive(pid: int) -> bool:
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.Error:
        return False
    _reap(pid)
    return False


def _reap(pid: int) -> None:
    # A zombie child of ours (adopted within the same process, as tests do) is collected here.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _kill_orphans(group: int, port_flag: str, port: str, source: str) -> None:
    """Kill what is left of a dead replica's group: forked workers would keep serving."""
    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = process.info.get("cmdline") or []
            if (
                os.getpgid(process.pid) == group
                and _has_flag(cmdline, port_flag, port)
                and _has_flag(cmdline, "--source", source)
            ):
                process.kill()
        except (psutil.Error, OSError):
            continue


def _kill_group(pid: int) -> None:
    # The worker leads its own process group (start_new_session), so this reaches it and
    # every process it forked, and nothing else.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _clip(text: str) -> str:
    return text if len(text) <= _TAIL_CHARS else "…" + text[-_TAIL_CHARS:]
