"""Metrics logged by predict code (``Endpoint().log_metric``), published as ``MetricLogged``.

``log_metric`` runs on a predict thread; the sink only schedules the publish on the event
loop (``call_soon_threadsafe``), so a prediction never waits for, nor fails because of, NATS.
The NATS connection is made in the background at start-up: a replica without a reachable
NATS serves all the same and counts its metrics as unpublished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from cormorant.common import bus
from cormorant.common.events import MetricLogged
from cormorant.worker.metrics import WorkerMetrics
from cormorant.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

MetricPublish = Callable[[str, float], bool]
"""Publishes one metric on the event loop without blocking; ``False`` when it was dropped."""


class MetricSinkService:
    """The metric sink of a worker process and the background NATS connection behind it."""

    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.publish: MetricPublish | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._resources = AsyncExitStack()
        self._published = metrics.metrics_published.labels(outcome="published")
        self._dropped = metrics.metrics_published.labels(outcome="dropped")

    async def __aenter__(self) -> MetricSinkService:
        self._loop = asyncio.get_running_loop()
        if self.settings.publish_metrics:
            self._task = asyncio.create_task(self._connect(), name="metric-publisher")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.publish = None
        await self._resources.aclose()

    def __call__(self, key: str, value: float) -> None:
        """The sink predict threads call: hand the metric to the loop and return at once."""
        loop = self._loop
        if loop is None:
            self._dropped.inc()
            return
        try:
            loop.call_soon_threadsafe(self._deliver, key, value)
        except RuntimeError:  # the loop is closed: the process is stopping
            self._dropped.inc()

    def _deliver(self, key: str, value: float) -> None:
        publish = self.publish
        if publish is None:
            log.info("metric %s=%s not published: no NATS connection", key, value)
            self._dropped.inc()
            return
        try:
            accepted = publish(key, value)
        except Exception:
            log.exception("publishing metric %s failed", key)
            accepted = False
        (self._published if accepted else self._dropped).inc()

    async def _connect(self) -> None:
        # A replica may start before NATS (or while it restarts): keep trying in the
        # background, so metrics flow as soon as it is back; until then they count as dropped.
        delay = 1.0
        while not await _reachable(self.settings.nats_url, self.settings.nats_connect_timeout):
            if delay == 1.0:
                log.warning("NATS at %s is not reachable: metrics are dropped until it is",
                            self.settings.nats_url)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        try:
            publish = await self._resources.enter_async_context(
                nats_metric_publisher(self.settings, self.metrics.registry)
            )
        except Exception as exc:
            log.warning("metrics will not be published: %s: %s", type(exc).__name__, exc)
            return
        self.publish = publish
        log.info("publishing logged metrics to %s", self.settings.nats_url)


def metric_sink(settings: WorkerSettings, metrics: WorkerMetrics) -> MetricSinkService:
    """The sink for ``set_metric_sink``; enter it (async with) to connect in the background."""
    return MetricSinkService(settings, metrics)


# ----------------------------------------------------------------------------------------
# WIRING to cormorant.common.bus / cormorant.common.events: the one place that knows them.
# ----------------------------------------------------------------------------------------
@asynccontextmanager
async def nats_metric_publisher(
    settings: WorkerSettings, registry: CollectorRegistry | None = None
) -> AsyncIterator[MetricPublish]:
    """Connect to NATS and publish each metric as ``MetricLogged`` via the batched publisher."""
    name = f"cormorant-worker {settings.endpoint}/{settings.version}"
    # bus.connect waits for a server forever; a replica must not, it serves without NATS.
    async with asyncio.timeout(settings.nats_connect_timeout):
        client = await bus.connect(settings.nats_url, name=name)
    try:
        await bus.ensure_streams(client.jetstream())
        publisher = bus.BatchedPublisher(client, name="logged-metrics", registry=registry)
        await publisher.start()
        try:

            def publish(key: str, value: float) -> bool:
                event = MetricLogged(
                    endpoint=settings.endpoint, version=settings.version, key=key, value=value
                )
                return publisher.publish(event)

            yield publish
        finally:
            await publisher.stop()
    finally:
        await bus.close(client)


async def _reachable(url: str, seconds: float) -> bool:
    """Whether anything accepts TCP on the first server of ``url`` (fails fast when not)."""
    first = url.split(",")[0].strip()
    parts = urlsplit(first if "://" in first else f"nats://{first}")
    try:
        async with asyncio.timeout(seconds):
            _, writer = await asyncio.open_connection(
                parts.hostname or "127.0.0.1", parts.port or 4222
            )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
