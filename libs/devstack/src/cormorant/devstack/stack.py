"""The local stack's supervisor: NATS, PostgreSQL and every service on one machine.

``cormorant up`` starts this module in the background (``python -m cormorant.devstack.stack``);
it starts the servers, runs migrations, starts the services, restarts any that crash, and
on SIGTERM stops everything it started, in reverse order, and the replicas the fleet left.
Every process it starts gets SIGTERM from the kernel if the supervisor dies (even by SIGKILL);
the fleet's replicas die with the fleet service the same way (``cormorant.common.lifetime``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from cormorant.common.auth import ADMIN_KEY_PREFIX, generate_token, hash_token
from cormorant.common.internal import generate_internal_secret
from cormorant.common.lifetime import REPLICA_RECORDS, stop_recorded
from cormorant.common.ports import port_open
from cormorant.common.retry import Backoff
from cormorant.common.settings import CommonSettings
from cormorant.devstack.servers import ManagedProcess, NatsServer, PostgresServer
from cormorant.devstack.servers.nats import NatsUsers, generate_nats_password
from cormorant.devstack.servers.postgres import generate_password
from cormorant.sdk.stackfile import (
    INTERNAL_SECRET_FILE,
    PID_FILE,
    SECRETS_FILE,
    read_private_json,
    read_stack_file,
    write_private_json,
    write_stack_file,
    write_supervisor_pid,
)

log = logging.getLogger("cormorant.stack")

# Seconds the fleet gets to stop: a replica's stop_timeout_s (35 s) and its drain.
_FLEET_STOP_S = 60
_RESTART_BACKOFF = Backoff(initial=0.5, cap=30.0)
"""Between a service's exit and its restart, growing with its restarts."""


class StackError(RuntimeError):
    """The stack cannot start; the message says what to change."""


class StackSettings(CommonSettings):
    """Ports and limits of the local stack (environment prefix ``CORMORANT_STACK_``)."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_STACK_", extra="ignore", populate_by_name=True
    )

    database_url: str | None = Field(  # type: ignore[assignment]
        default=None, validation_alias=AliasChoices("database_url", "CORMORANT_DATABASE_URL")
    )
    """Use this PostgreSQL instead of starting the embedded one."""

    host: str = "127.0.0.1"
    """Interface every local service and server listens on."""

    nats_port: int = 4222
    """nats-server client port."""

    postgres_port: int = 5433
    """Embedded PostgreSQL port (unused when ``CORMORANT_DATABASE_URL`` is set)."""

    gateway_port: int = 8080
    """Gateway: the public front door."""

    gateway_grpc_port: int = 8001
    """Gateway's Open Inference Protocol over gRPC (0: off)."""

    deployer_port: int = 8081
    """Deployer's internal API."""

    fleet_port: int = 8086
    """Fleet service's internal API (it runs the replicas)."""

    predictlog_port: int = 8082
    """Prediction log service's internal API."""

    feedback_port: int = 8083
    """Feedback and datasets service's internal API."""

    alerts_port: int = 8084
    """Alerts service's internal API."""

    batch_port: int = 8085
    """Batch service's internal API."""

    ready_timeout: float = 60.0
    """Seconds a service may take to answer ``/healthz`` before start-up fails."""


@dataclass(slots=True)
class ServiceSpec:
    """One service of the stack: its name, module and port."""

    name: str
    module: str
    port: int
    grpc_port: int | None = None
    """A second port, for gRPC (the gateway's Open Inference Protocol)."""


def service_specs(settings: StackSettings) -> list[ServiceSpec]:
    """The services ``cormorant up`` runs, in start order.

    The worker and kafka-bridge are not here: they are replicas the fleet starts per endpoint
    version. The fleet starts first: the deployer waits for it.
    """
    return [
        ServiceSpec("fleet", "cormorant.fleet", settings.fleet_port),
        ServiceSpec("deployer", "cormorant.deployer", settings.deployer_port),
        ServiceSpec("predictlog", "cormorant.predictlog", settings.predictlog_port),
        ServiceSpec("feedback", "cormorant.feedback", settings.feedback_port),
        ServiceSpec("alerts", "cormorant.alerts", settings.alerts_port),
        ServiceSpec("batch", "cormorant.batch", settings.batch_port),
        ServiceSpec(
            "gateway", "cormorant.gateway", settings.gateway_port, settings.gateway_grpc_port
        ),
    ]


class ServiceProcess(ManagedProcess):
    """A service run as ``python -m <module>``, ready once ``/healthz`` answers 200."""

    def __init__(
        self, spec: ServiceSpec, *, host: str, env: dict[str, str], logs: Path, timeout: float
    ) -> None:
        super().__init__(spec.name, logs / f"{spec.name}.log", ready_line=None)
        self.parent_death_signal = signal.SIGTERM
        self.spec = spec
        self.host = host
        self.env = env
        self.ready_timeout = timeout
        self.restarts = 0
        self.next_start = 0.0

    @property
    def url(self) -> str:
        """Base URL of the service."""
        return f"http://{self.host}:{self.spec.port}"

    def command(self) -> Sequence[str]:
        """``python -m`` the service with this interpreter."""
        return [sys.executable, "-m", self.spec.module]

    def popen_kwargs(self) -> dict[str, Any]:
        """The stack's environment plus this service's host and port."""
        env = {**os.environ, **self.env, self.env_prefix + "HOST": self.host}
        env[self.env_prefix + "PORT"] = str(self.spec.port)
        if self.spec.grpc_port is not None:
            env[self.env_prefix + "GRPC_PORT"] = str(self.spec.grpc_port)
        return {"env": env}

    @property
    def env_prefix(self) -> str:
        """The service's settings prefix, e.g. ``CORMORANT_GATEWAY_``."""
        return f"CORMORANT_{self.spec.name.upper().replace('-', '_')}_"

    def is_ready(self) -> bool:
        """``/healthz`` answers 200."""
        try:
            return httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class Stack:
    """Everything the supervisor started, for shutdown and the stack file."""

    settings: StackSettings
    data_dir: Path
    nats: NatsServer
    postgres: PostgresServer | None
    database_url: str
    internal_secret: str
    services: list[ServiceProcess] = field(default_factory=list)
    admin_key: str = ""

    def describe(self, state: str) -> dict[str, Any]:
        """The stack file's content."""
        return {
            "state": state,
            "supervisor_pid": os.getpid(),
            "updated_at": datetime.now(UTC).isoformat(),
            "data_dir": str(self.data_dir),
            "nats_url": self.nats.url,
            "database_url": self.database_url,
            "admin_key": self.admin_key,
            "services": {svc.spec.name: _described(svc) for svc in self.services},
            "servers": {
                "nats": {"url": self.nats.url, "pid": self.nats.pid, **_identity(self.nats)},
                "postgres": {
                    "url": self.database_url,
                    "pid": self.postgres.pid if self.postgres else None,
                    **(_identity(self.postgres) if self.postgres else {}),
                },
            },
        }


def _described(service: ServiceProcess) -> dict[str, Any]:
    described: dict[str, Any] = {
        "url": service.url, "pid": service.pid, "restarts": service.restarts, **_identity(service),
    }  # fmt: skip
    if service.spec.grpc_port:
        described["grpc"] = f"{service.host}:{service.spec.grpc_port}"
    return described


def _identity(process: ManagedProcess) -> dict[str, Any]:
    """How ``cormorant down``/``up`` recognise the process later, and how to stop it."""
    return {"cmdline": list(process.command()), "stop_signal": int(process.stop_signal)}


def stack_secrets(data_dir: Path) -> dict[str, str]:
    """The stack's secrets, generated the first time and kept after (mode 0600): the internal
    credential of its services, the PostgreSQL superuser's and application role's passwords
    (the embedded cluster keeps them, so they must outlive a restart), and the NATS platform
    and replica users' passwords."""
    makers = {
        "internal_secret": generate_internal_secret,
        "postgres_superuser_password": generate_password,
        "postgres_password": generate_password,
        "nats_password": generate_nats_password,
        "nats_replica_password": generate_nats_password,
    }
    path = data_dir / SECRETS_FILE
    found = read_private_json(path) or {}
    secrets = {name: str(found[name]) for name in makers if isinstance(found.get(name), str)}
    if len(secrets) < len(makers):
        secrets = {name: secrets.get(name) or make() for name, make in makers.items()}
        write_private_json(path, {**found, **secrets})
    token = data_dir / INTERNAL_SECRET_FILE
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets["internal_secret"])
    os.chmod(token, 0o600)
    return secrets


async def _prepare_database(url: str, existing_key: str | None) -> str:
    """Migrate the database and make sure a bootstrap admin key exists; return the key."""
    from sqlalchemy import select

    from cormorant.common.db import create_engine, session_factory, upgrade, wait_for_database
    from cormorant.common.db.models import AdminKey
    from cormorant.common.db.models.auth import PREFIX_LENGTH

    await wait_for_database(url, timeout=60)
    await upgrade(url)
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session, session.begin():
            if existing_key:
                found = await session.scalar(
                    select(AdminKey.id).where(
                        AdminKey.key_hash == hash_token(existing_key),
                        AdminKey.revoked_at.is_(None),
                    )
                )
                if found is not None:
                    return existing_key
            key = generate_token(ADMIN_KEY_PREFIX)
            session.add(
                AdminKey(name="bootstrap", key_hash=hash_token(key), prefix=key[:PREFIX_LENGTH])
            )
            return key
    finally:
        await engine.dispose()


def _check_ports_free(settings: StackSettings, embedded_pg: bool) -> None:
    wanted = {"nats": settings.nats_port}
    if embedded_pg:
        wanted["postgres"] = settings.postgres_port
    wanted.update({spec.name: spec.port for spec in service_specs(settings)})
    busy = [f"{name} ({port})" for name, port in wanted.items() if port_open(settings.host, port)]
    if busy:
        raise StackError(
            "ports already in use: "
            + ", ".join(busy)
            + ". Stop what uses them, or choose others with CORMORANT_STACK_<NAME>_PORT."
        )


class Supervisor:
    """Starts the stack, keeps it running, stops it on SIGTERM/SIGINT."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.absolute()
        self.stopping = False

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("stopping on signal %s", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        """Run until asked to stop; the exit code of the supervisor."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_supervisor_pid(self.data_dir)
        stack = self._plan()
        ready = False
        try:
            self._start(stack)
            ready = True
            write_stack_file(self.data_dir, stack.describe("ready"))
            log.info("stack ready")
            self._watch(stack)
            return 0
        except Exception as exc:
            log.exception("stack failed")
            previous = read_stack_file(self.data_dir) or {}
            write_stack_file(self.data_dir, {**previous, "state": "failed", "error": str(exc)})
            return 1
        finally:
            self._stop(stack)
            if ready:
                write_stack_file(self.data_dir, stack.describe("stopped"))
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / PID_FILE).unlink()

    def _plan(self) -> Stack:
        settings = self.settings
        secrets = stack_secrets(self.data_dir)
        internal = secrets["internal_secret"]
        nats = NatsServer(
            self.data_dir / "nats",
            host=settings.host,
            port=settings.nats_port,
            users=NatsUsers(secrets["nats_password"], secrets["nats_replica_password"]),
        )
        nats.parent_death_signal = signal.SIGTERM
        if settings.database_url is not None:
            return Stack(settings, self.data_dir, nats, None, settings.database_url, internal)
        postgres = PostgresServer(
            self.data_dir,
            host=settings.host,
            port=settings.postgres_port,
            superuser_password=secrets["postgres_superuser_password"],
            password=secrets["postgres_password"],
        )
        postgres.parent_death_signal = signal.SIGTERM
        return Stack(settings, self.data_dir, nats, postgres, postgres.url, internal)

    def _start(self, stack: Stack) -> None:
        settings = self.settings
        _check_ports_free(settings, stack.postgres is not None)
        nats = stack.nats
        nats.spawn()
        if stack.postgres is not None:
            stack.postgres.start()
        nats.wait_ready()
        previous = read_stack_file(self.data_dir) or {}
        stack.admin_key = asyncio.run(
            _prepare_database(stack.database_url, previous.get("admin_key"))
        )
        env = {
            "CORMORANT_DATA_DIR": str(self.data_dir),
            "CORMORANT_NATS_URL": nats.url,
            "CORMORANT_DATABASE_URL": stack.database_url,
            # Every service-to-service call carries it; the fleet keeps it from replicas.
            "CORMORANT_INTERNAL_SECRET": stack.internal_secret,
            # `make down` leaves no process: the fleet stops its replicas when it stops,
            # and the kernel ends them if it dies (its restart starts them again).
            "CORMORANT_FLEET_STOP_REPLICAS_ON_SHUTDOWN": "true",
            # Replicas publish predictions and metrics as a user that may do nothing else.
            "CORMORANT_FLEET_REPLICA_NATS_URL": nats.replica_url,
            # The deployer places replicas through the fleet's internal API.
            "CORMORANT_DEPLOYER_FLEET_URL": f"http://{settings.host}:{settings.fleet_port}",
        }
        # The gateway forwards the management API to the services that own it (the fleet
        # owns none: the deployer calls it).
        for spec in service_specs(settings)[:-1]:
            if spec.name != "fleet":
                env[f"CORMORANT_GATEWAY_{spec.name.upper()}_URL"] = (
                    f"http://{settings.host}:{spec.port}"
                )
        # The deployer reads live metrics there for rollout policies' checks, batch for
        # comparing jobs; batch asks the deployer for replicas.
        env["CORMORANT_DEPLOYER_PREDICTLOG_URL"] = env["CORMORANT_GATEWAY_PREDICTLOG_URL"]
        env["CORMORANT_BATCH_PREDICTLOG_URL"] = env["CORMORANT_GATEWAY_PREDICTLOG_URL"]
        env["CORMORANT_BATCH_DEPLOYER_URL"] = env["CORMORANT_GATEWAY_DEPLOYER_URL"]
        # Flows and trigger flow actions call the public API with the bootstrap key: given to
        # alerts alone.
        own = {
            "alerts": {
                "CORMORANT_ALERTS_GATEWAY_URL": f"http://{settings.host}:{settings.gateway_port}",
                "CORMORANT_ALERTS_API_KEY": stack.admin_key,
            }
        }
        logs = self.data_dir / "logs"
        for spec in service_specs(settings):
            svc = ServiceProcess(
                spec,
                host=settings.host,
                env=env | own.get(spec.name, {}),
                logs=logs,
                timeout=settings.ready_timeout,
            )
            stack.services.append(svc)
            svc.spawn()
        for svc in stack.services:
            svc.wait_ready()
            log.info("%s ready at %s", svc.spec.name, svc.url)

    def _watch(self, stack: Stack) -> None:
        """Restart what crashes, with exponential backoff, until asked to stop."""
        while not self.stopping:
            changed = False
            for svc in stack.services:
                if svc.running() or self.stopping:
                    continue
                now = time.monotonic()
                if svc.next_start == 0.0:
                    code = svc.proc.returncode if svc.proc else None
                    backoff = _RESTART_BACKOFF.delay(svc.restarts + 1)
                    log.warning(
                        "%s exited (code %s); restart in %.1fs", svc.spec.name, code, backoff
                    )
                    svc.next_start = now + backoff
                elif now >= svc.next_start:
                    svc.restarts += 1
                    svc.next_start = 0.0
                    svc.spawn()
                    changed = True
            for server in (stack.nats, stack.postgres):
                if server is not None and not server.running() and not self.stopping:
                    log.warning("%s exited; restarting", server.name)
                    server.start()
                    changed = True
            if changed:
                write_stack_file(self.data_dir, stack.describe("ready"))
            time.sleep(0.2)  # supervision tick: child exits are polled, nothing waits on it

    def _stop(self, stack: Stack) -> None:
        # All at once: stopped one by one, the fleet (last) could run out of `down`'s time.
        for svc in reversed(stack.services):
            if svc.proc is not None and svc.running():
                with contextlib.suppress(ProcessLookupError):
                    svc.proc.send_signal(svc.stop_signal)
        for svc in reversed(stack.services):
            # The fleet first drains and stops its replicas (up to its stop_timeout_s, 35 s).
            svc.stop(timeout=_FLEET_STOP_S if svc.spec.name == "fleet" else 35)
        # Whatever the fleet could not stop (it was killed, or it crashed just before).
        for record in stop_recorded(self.data_dir / REPLICA_RECORDS, grace_s=10):
            log.warning("stopped replica %s (pid %d) the fleet left", record.name, record.pid)
        if stack.postgres is not None:
            stack.postgres.stop(timeout=30)
        stack.nats.stop(timeout=15)


def main() -> None:
    """Entry point of the supervisor process."""
    from cormorant.common.telemetry import configure_logging

    settings = StackSettings()
    configure_logging(settings.log_level, json_lines=False)
    # Readiness polls and migration plumbing would bury the lines a person needs.
    for chatty in ("alembic", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    raise SystemExit(Supervisor(settings).run())


if __name__ == "__main__":
    main()
