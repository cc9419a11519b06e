"""Test support: a deployer run in-process against real servers, and waits with deadlines.

The deployer tests' kit (kept out of the shipped package): its conftest puts this folder on
``sys.path``. Requires the ``asgi-lifespan`` development dependency.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any

import httpx
import psutil
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic_settings import SettingsConfigDict

from cormorant.common.internal import REPLICA_KEY_HEADER, InternalAuth, replica_key
from cormorant.deployer.app import create_app
from cormorant.deployer.settings import DeployerSettings
from cormorant.devstack.testing.waits import eventually
from cormorant.fleet.app import create_app as create_fleet_app
from cormorant.fleet.settings import FleetSettings

BASE_URL = "http://deployer"


class PlatformSettings(FleetSettings, DeployerSettings):
    """The deployer's and the fleet's settings in one: a test sets both at once."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_FLEET_", extra="ignore", populate_by_name=True
    )

    def deployer(self) -> DeployerSettings:
        """The deployer's part."""
        return DeployerSettings(
            **{name: getattr(self, name) for name in DeployerSettings.model_fields}
        )

    def fleet(self) -> FleetSettings:
        """The fleet's part."""
        names = FleetSettings.model_fields
        return FleetSettings(**{name: getattr(self, name) for name in names})


async def _fleet_gone(scope: Any, receive: Any, send: Any) -> None:
    """The fleet once stopped: every call fails (a 500 through the transport)."""
    raise ConnectionRefusedError("the fleet service is down")


class DeployerHarness:
    """A deployer app and the fleet app it places replicas with, their lifespans running (the
    deployer calls the fleet in-process), and an HTTP client speaking to the deployer."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self.app: FastAPI | None = None
        self._manager: LifespanManager | None = None
        self._fleet: LifespanManager | None = None
        self._client: httpx.AsyncClient | None = None
        self._fleet_transport: httpx.ASGITransport | None = None

    @property
    def state(self) -> dict[str, Any]:
        """The components the running apps' lifespans yielded (``fleet``: the fleet's own)."""
        assert self._manager is not None, "the deployer is not running"
        assert self._fleet is not None, "the fleet is not running"
        # asgi-lifespan keeps the lifespan state here and hands it to every request's scope.
        return {**self._manager._state, **self._fleet._state}

    @property
    def client(self) -> httpx.AsyncClient:
        """The client of the running app."""
        assert self._client is not None, "the deployer is not running"
        return self._client

    async def start(self) -> None:
        """Run the app's start-up (migrations, NATS, adoption of running replicas)."""
        self._fleet = LifespanManager(
            create_fleet_app(self.settings.fleet()), startup_timeout=60, shutdown_timeout=120
        )
        await self._fleet.__aenter__()
        # An error inside the fleet app answers 500, as a fleet process would.
        fleet = httpx.ASGITransport(app=self._fleet.app, raise_app_exceptions=False)
        self._fleet_transport = fleet
        await self._start_deployer()

    async def _start_deployer(self) -> None:
        assert self._fleet_transport is not None, "the fleet is not running"
        self.app = create_app(self.settings.deployer(), fleet_transport=self._fleet_transport)
        self._manager = LifespanManager(self.app, startup_timeout=60, shutdown_timeout=120)
        await self._manager.__aenter__()
        transport = httpx.ASGITransport(app=self._manager.app)
        self._client = httpx.AsyncClient(
            transport=transport,
            base_url=BASE_URL,
            timeout=120,
            auth=InternalAuth(self.settings.internal_secret),
        )

    async def restart_deployer(self) -> None:
        """Stop the deployer alone and start a new one; the fleet keeps running."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._manager is not None:
            manager, self._manager = self._manager, None
            await manager.__aexit__(None, None, None)
        await self._start_deployer()

    async def stop(self) -> None:
        """Shut the app down; replicas keep running unless the settings say otherwise."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        try:
            if self._manager is not None:
                manager, self._manager = self._manager, None
                await manager.__aexit__(None, None, None)
        finally:
            if self._fleet is not None:
                fleet, self._fleet = self._fleet, None
                await fleet.__aexit__(None, None, None)

    async def stop_fleet(self) -> None:
        """Shut the fleet app down alone (its replicas keep running); the deployer's calls to it
        then fail as calls to a fleet process that is restarting would."""
        if self._fleet is not None:
            fleet, self._fleet = self._fleet, None
            await fleet.__aexit__(None, None, None)
        if self._fleet_transport is not None:
            self._fleet_transport.app = _fleet_gone

    async def restart(self) -> None:
        """Stop the app and start a new one on the same database and data directory."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> DeployerHarness:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def create(self, **body: Any) -> dict[str, Any]:
        """Create an endpoint; fail with the server's message unless it answers 201."""
        response = await self.client.post("/api/v1/endpoints", json=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def get(self, slug: str) -> dict[str, Any]:
        """The endpoint's JSON."""
        response = await self.client.get(f"/api/v1/endpoints/{slug}")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def replica_headers(self, replica: Mapping[str, Any]) -> dict[str, str]:
        """The header a replica's port asks of its callers (its key), for a routing
        document's ``replica``, as the gateway sends it."""
        secret = self.settings.internal_secret
        assert secret is not None, "replica keys come from the internal secret"
        return {REPLICA_KEY_HEADER: replica_key(secret, str(replica["id"]))}

    async def route(self, slug: str) -> dict[str, Any]:
        """The endpoint's routing document."""
        response = await self.client.get(f"/internal/routing/{slug}")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    async def wait_for(
        self,
        slug: str,
        check: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - the failure names what was awaited
        what: str = "state",
    ) -> dict[str, Any]:
        """The endpoint's JSON once ``check`` holds for it."""

        async def current() -> dict[str, Any] | None:
            document = await self.get(slug)
            return document if check(document) else None

        try:
            return await eventually(current, within=timeout, what=f"{slug}: {what}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nendpoint now: {await self.get(slug)}") from None

    async def wait_running(
        self,
        slug: str,
        ready: int = 1,
        timeout: float = 60.0,  # noqa: ASYNC109 - the failure names what was awaited
    ) -> dict[str, Any]:
        """The endpoint's JSON once it runs with ``ready`` ready replicas."""
        return await self.wait_for(
            slug,
            lambda e: e["status"] == "running" and e["replicas"]["ready"] == ready,
            timeout=timeout,
            what=f"running with {ready} ready replica(s)",
        )


def worker_processes(marker: str, *, forks: bool = False) -> list[psutil.Process]:
    """Replica processes (gunicorn masters; with ``forks``, their workers too) whose command
    line mentions ``marker``, e.g. a test's data dir."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if not (any(marker in part for part in cmdline) and "cormorant.worker" in cmdline):
            continue
        with contextlib.suppress(OSError):
            # Each replica leads its own session; its forked workers share it.
            leader = os.getsid(process.pid) == process.pid
            if (leader or forks) and "--check" not in cmdline:
                found.append(process)
    return found


def kill_workers(marker: str) -> None:
    """SIGKILL every worker started under ``marker``, with everything it forked."""
    processes = worker_processes(marker, forks=True)
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            process.kill()
    deadline = time.monotonic() + 5.0
    for process in processes:
        # Our children are reaped here; others count as gone once they are zombies, which
        # whoever adopted them may never reap.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(process.pid, 0)
        while not pid_gone(process.pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def pid_gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (a zombie counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@contextlib.asynccontextmanager
async def running_deployer(settings: PlatformSettings) -> AsyncIterator[DeployerHarness]:
    """A started deployer; once it stops, every replica it started is killed and their
    private directories (outside the test's directory, as root) removed."""
    harness = DeployerHarness(settings)
    try:
        await harness.start()
        yield harness
    finally:
        try:
            await harness.stop()
        finally:
            kill_workers(str(settings.data_dir))
            shutil.rmtree(settings.resolved_sandbox_dir(), ignore_errors=True)
