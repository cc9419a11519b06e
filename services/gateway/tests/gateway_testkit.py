"""Helpers of the gateway tests: real workers, stand-in services, a served gateway.

The gateway runs in the test's event loop under uvicorn on a real socket (the same server it
runs under in production), in front of real worker processes (``python -m cormorant.worker``).
The deployer is another service: here a tiny real HTTP app (``StandIn``) serves the routing
contract's JSON (``/internal/routing``) and stands in for the management services; tests that
cross real services live in the root ``tests/`` folder.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import uvicorn
from fastapi import FastAPI
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cormorant.common.auth import ADMIN_KEY_PREFIX, generate_token, hash_token
from cormorant.common.db import create_engine, session_factory, upgrade
from cormorant.common.db.models import (
    PREFIX_LENGTH,
    AdminKey,
    Endpoint,
    EndpointKind,
    EndpointToken,
)
from cormorant.common.events import Event
from cormorant.common.internal import RequireInternal, generate_internal_secret
from cormorant.devstack.testing.waits import eventually, wait_healthy
from cormorant.gateway.app import create_app
from cormorant.gateway.settings import GatewaySettings

INTERNAL_SECRET = generate_internal_secret()
"""The internal credential the stand-in services ask for and every test gateway carries."""

START_TIMEOUT = 150.0  # a readiness bound for several workers starting at once on 2 cores

TOOLBOX = """\
import os
import time

REPLICA = os.environ.get("CORMORANT_TEST_REPLICA", "?")


def _stream(count, delay):
    for index in range(count):
        if index:
            time.sleep(delay)
        yield {"index": index, "replica": REPLICA}


def predict(*args):
    if args and isinstance(args[0], str):
        action = args[0]
        if action == "whoami":
            return REPLICA
        if action == "sleep":
            time.sleep(args[1])
            return REPLICA
        if action == "stream":
            return _stream(args[1], args[2])
    return args[0] if len(args) == 1 else list(args)
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Worker:
    """A real worker process serving the toolbox model."""

    name: str
    version: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait(self) -> None:
        """Wait until /healthz answers 200; fail if the worker exits first."""
        wait_healthy(
            self.url, self.proc, self.log, name=f"worker {self.name}", within=START_TIMEOUT
        )

    def stop(self) -> None:
        """Terminate, then kill after a grace period."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def replica(self, state: str = "ready") -> dict[str, Any]:
        """This worker as a replica of the routing contract."""
        return {"id": self.name, "version": self.version, "url": self.url, "state": state}


def run_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    """Three workers of endpoint ``demo``: r1 and r2 serve version v1, r3 serves v2."""
    model = tmp_path_factory.mktemp("toolbox")
    (model / "toolbox.py").write_text(TOOLBOX)
    logs = tmp_path_factory.mktemp("worker-logs")
    env = dict(os.environ)
    env["CORMORANT_WORKER_PUBLISH_METRICS"] = "false"
    # A stack running on this machine must not receive these tests' predictions.
    env["CORMORANT_WORKER_LOG_PREDICTIONS"] = "false"
    env["CORMORANT_LOG_JSON"] = "false"
    started = []
    for name, version in (("r1", "v1"), ("r2", "v1"), ("r3", "v2")):
        port = free_port()
        log = logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "cormorant.worker",
                    "--source", str(model), "--file", "toolbox.py",
                    "--endpoint", "demo", "--version", version, "--port", str(port),
                    "--server", "workers=1", "--server", "threads=4",
                    "--env", f"CORMORANT_TEST_REPLICA={name}",
                ],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        started.append(Worker(name, version, proc, f"http://127.0.0.1:{port}", log))
    try:
        for worker in started:
            worker.wait()
        yield {worker.name: worker for worker in started}
    finally:
        for worker in started:
            worker.stop()


@asynccontextmanager
async def serve(app: Any, port: int = 0) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Serve an ASGI app under uvicorn in this event loop; yield its base URL."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws="none", http="httptools", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or task.done(), what="server start")
        if task.done():
            task.result()
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class StandIn:
    """A small real HTTP app standing in for the deployer (routing) and the other services."""

    name: str
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[dict[str, Any]] = field(default_factory=list)
    openapi: dict[str, Any] | None = None

    def app(self) -> Starlette:
        """The ASGI app: the routing contract, an echo of any /api/v1 call, a CSV stream."""

        async def routing(_: Request) -> Response:
            return JSONResponse({"endpoints": list(self.routes.values())})

        async def one_route(request: Request) -> Response:
            route = self.routes.get(request.path_params["slug"])
            if route is None:
                return JSONResponse({"error": {"code": "not_found", "message": "no"}}, 404)
            return JSONResponse(route)

        async def openapi(_: Request) -> Response:
            if self.openapi is None:
                return JSONResponse({}, 404)
            return JSONResponse(self.openapi)

        async def csv(_: Request) -> Response:
            async def rows() -> AsyncIterator[bytes]:
                yield b"id,value\n"
                for i in range(20_000):
                    yield f"{i},{i * 2}\n".encode()

            return StreamingResponse(rows(), media_type="text/csv")

        async def echo(request: Request) -> Response:
            body = await request.body()
            record = {
                "service": self.name,
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": dict(request.headers),
                "body": body.decode(),
            }
            self.seen.append(record)
            return JSONResponse(record, status_code=201 if request.method == "POST" else 200)

        # As a real service does: every call needs the internal credential the gateway adds.
        return Starlette(
            middleware=[
                Middleware(RequireInternal, secret=INTERNAL_SECRET, service=f"{self.name} stand-in")
            ],
            routes=[
                Route("/internal/routing", routing),
                Route("/internal/routing/{slug}", one_route),
                Route("/openapi.json", openapi),
                Route("/api/v1/endpoints/{slug}/logs.csv", csv),
                Route("/api/v1/{rest:path}", echo, methods=["GET", "POST", "PUT", "DELETE"]),
            ],
        )


@dataclass
class Secrets:
    """Tokens and keys written to the real database."""

    tokens: dict[str, str]
    """Endpoint slug → its endpoint token."""
    admin_key: str
    database_url: str

    async def add_token(self, slug: str) -> str:
        """A new token for ``slug`` (its endpoint row already exists)."""
        engine = create_engine(self.database_url)
        try:
            async with session_factory(engine)() as session, session.begin():
                endpoint = (
                    await session.execute(Endpoint.__table__.select().where(Endpoint.slug == slug))
                ).one()
                token = generate_token()
                session.add(
                    EndpointToken(
                        endpoint_id=endpoint.id,
                        token_hash=hash_token(token),
                        prefix=token[:PREFIX_LENGTH],
                    )
                )
            return token
        finally:
            await engine.dispose()

    async def revoke_tokens(self, slug: str) -> None:
        """Revoke every token of ``slug``."""
        from datetime import UTC, datetime

        from sqlalchemy import update

        engine = create_engine(self.database_url)
        try:
            async with session_factory(engine)() as session, session.begin():
                ids = Endpoint.__table__.select().with_only_columns(Endpoint.id)
                await session.execute(
                    update(EndpointToken)
                    .where(EndpointToken.endpoint_id.in_(ids.where(Endpoint.slug == slug)))
                    .values(revoked_at=datetime.now(UTC))
                )
        finally:
            await engine.dispose()


async def make_secrets(database_url: str) -> Secrets:
    """A migrated database with endpoints demo, other, batchy and an admin key."""
    await upgrade(database_url)
    engine = create_engine(database_url)
    tokens = {}
    admin_key = generate_token(ADMIN_KEY_PREFIX)
    try:
        async with session_factory(engine)() as session, session.begin():
            for slug, kind in (
                ("demo", EndpointKind.WEB),
                ("other", EndpointKind.WEB),
                ("batchy", EndpointKind.BATCH),
            ):
                endpoint = Endpoint(id=uuid.uuid4(), slug=slug, name=slug, kind=kind, spec={})
                session.add(endpoint)
                await session.flush()
                token = generate_token()
                tokens[slug] = token
                session.add(
                    EndpointToken(
                        endpoint_id=endpoint.id,
                        token_hash=hash_token(token),
                        prefix=token[:PREFIX_LENGTH],
                    )
                )
            session.add(
                AdminKey(
                    name="test", key_hash=hash_token(admin_key), prefix=admin_key[:PREFIX_LENGTH]
                )
            )
    finally:
        await engine.dispose()
    return Secrets(tokens, admin_key, database_url)


def demo_route(workers: dict[str, Worker], *names: str, **overrides: Any) -> dict[str, Any]:
    """The routing contract's route of ``demo`` over the named workers (default r1, r2)."""
    chosen = names or ("r1", "r2")
    route: dict[str, Any] = {
        "slug": "demo",
        "endpoint_id": str(uuid.uuid4()),
        "kind": "web",
        "status": "running",
        "timeout_s": 30,
        "generation": 1,
        "weights": {"v1": 100},
        "replicas": [workers[name].replica() for name in chosen],
    }
    route.update(overrides)
    return route


@dataclass
class Gateway:
    """A running gateway and what it talks to."""

    url: str
    app: FastAPI
    deployer: StandIn
    credentials: Secrets
    nc: Client
    http: httpx.AsyncClient

    def auth(self, slug: str = "demo") -> dict[str, str]:
        """Headers carrying ``slug``'s endpoint token."""
        return {"Authorization": f"Bearer {self.credentials.tokens[slug]}"}

    def admin(self) -> dict[str, str]:
        """Headers carrying the admin key."""
        return {"Authorization": f"Bearer {self.credentials.admin_key}"}

    async def predict(self, input_params: Any, slug: str = "demo", **kw: Any) -> httpx.Response:
        """POST predict with ``slug``'s token."""
        headers = {**self.auth(slug), **kw.pop("headers", {})}
        return await self.http.post(
            f"/api/v1/endpoints/{slug}/predict",
            json={"input_params": input_params},
            headers=headers,
            **kw,
        )

    async def publish(self, event: Event) -> None:
        """Publish an event on the real NATS, as the deployer does."""
        await self.nc.publish(event.subject, event.encode(), headers=event.headers())
        await self.nc.flush()


def gateway_starter(credentials: Secrets, nats_url: str) -> Callable[..., Any]:
    """Start a gateway (with settings overrides) in front of a stand-in deployer."""

    @asynccontextmanager
    async def start(
        routes: list[dict[str, Any]] | None = None, **overrides: Any
    ) -> AsyncIterator[Gateway]:
        deployer = StandIn("deployer", {r["slug"]: r for r in routes or []})
        async with serve(deployer.app()) as (deployer_url, _):
            values: dict[str, Any] = {
                "database_url": credentials.database_url,
                "nats_url": nats_url,
                "deployer_url": deployer_url,
                "internal_secret": INTERNAL_SECRET,
                "instance_id": "gw-test",
                "log_json": False,
                # Off unless a test asks for it: a fixed port would collide between runs.
                "grpc_port": 0,
            }
            settings = GatewaySettings(**(values | overrides))
            app = create_app(settings)
            async with serve(app) as (url, _):
                nc = await nats.connect(settings.nats_url)
                async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as http:
                    follower = app.state.follower
                    await eventually(
                        lambda: app.state.routing.loaded and follower.subscribed.is_set(),
                        what="gateway ready",
                    )
                    try:
                        yield Gateway(url, app, deployer, credentials, nc, http)
                    finally:
                        await nc.close()

    return start
