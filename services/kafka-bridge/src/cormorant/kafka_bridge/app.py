"""The replica's small HTTP side: ``/healthz`` (ready once streaming) and ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app
from cormorant.kafka_bridge.settings import KafkaBridgeSettings

TITLE = "cormorant-kafka-bridge"


def create_app(
    settings: KafkaBridgeSettings,
    *,
    ready: Callable[[], bool] = lambda: True,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The probe and scrape app; ``ready`` may raise a ``CormorantError`` saying why not."""
    app = create_service_app(
        title=TITLE, settings=settings, registry=registry or new_registry(), ready=ready
    )
    app.state.settings = settings
    return app


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM belongs to the replica's graceful stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MetricsServer:
    """Serves an app on the running loop, beside the stream."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and serve; the bound port (``port`` 0 picks a free one)."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, log_config=None, lifespan="off"
        )
        server = self._server = _Server(config)
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="metrics-server")
        while not server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
                raise RuntimeError("the metrics server stopped before it started")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        """Stop serving."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait([self._task], timeout=5)
