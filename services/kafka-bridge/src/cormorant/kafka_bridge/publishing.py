"""Prediction logs (``PredictionLogged``) and logged metrics (``MetricLogged``) on NATS.

The connection is made in the background at start-up; a replica without a reachable NATS
streams all the same and counts what it could not log. Publishing goes through the bounded
``BatchedPublisher``: it never blocks the stream and never fails it. Each event's id is the
message's request id, so a message predicted again after a crash is stored once by
JetStream (within the stream's duplicate window).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from types import TracebackType

from prometheus_client import CollectorRegistry

from cormorant.common import bus
from cormorant.common.bus.replica import shown
from cormorant.common.events import MetricLogged, PredictionLogged
from cormorant.common.predictor import JSONValue
from cormorant.kafka_bridge.metrics import BridgeMetrics
from cormorant.kafka_bridge.settings import KafkaBridgeSettings

log = logging.getLogger(__name__)

_PREDICTION = PredictionLogged.event_type


class PredictionLog:
    """Publishes one event per prediction (and metrics logged by predict code), if it can."""

    def __init__(self, settings: KafkaBridgeSettings, metrics: BridgeMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.publisher: bus.BatchedPublisher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._resources = AsyncExitStack()
        self._subject = f"{PredictionLogged.subject_prefix}.{settings.endpoint}"
        self._published = metrics.logged.labels(outcome="published")
        self._dropped = metrics.logged.labels(outcome="dropped")

    @property
    def active(self) -> bool:
        """Whether events are being published (NATS reachable and the publisher started)."""
        return self.publisher is not None

    async def __aenter__(self) -> PredictionLog:
        self._loop = asyncio.get_running_loop()
        if self.settings.publish_predictions:
            self._task = asyncio.create_task(self._connect(), name="prediction-log-connect")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.publisher = None
        await self._resources.aclose()

    def prediction(
        self,
        *,
        request_id: str,
        value: bytes | None,
        output: JSONValue | bytes,
        error: str | None,
        latency_ms: float,
        received_at: datetime,
    ) -> None:
        """Log one prediction: 200 with its output, or 500 with the error."""
        publisher = self.publisher
        if publisher is None:
            return
        try:
            # The endpoint is a slug (settings) and the rest is built here: orjson writes the
            # body (see bus.prediction_body).
            body = bus.prediction_body(
                event_id=request_id,
                occurred_at=datetime.now(UTC),
                request_id=request_id,
                endpoint=self.settings.endpoint,
                endpoint_id=None,
                version=self.settings.version,
                input=logged_input(value),
                output=logged_input(output) if isinstance(output, bytes) else output,
                error=error,
                status=500 if error is not None else 200,
                latency_ms=latency_ms,
                received_at=received_at,
                trace_id=None,
            )
        except ValueError as exc:  # never let the log stop the stream
            log.warning("prediction %s not logged: %s", request_id, exc)
            self._dropped.inc()
            return
        sent = publisher.publish_encoded(self._subject, _PREDICTION, request_id, body)
        (self._published if sent else self._dropped).inc()

    def metric(self, key: str, value: float) -> None:
        """The sink of ``Endpoint().log_metric`` in predict code; called on a predict thread."""
        loop = self._loop
        if loop is None or self.publisher is None:
            return
        event = MetricLogged(
            endpoint=self.settings.endpoint, version=self.settings.version, key=key, value=value
        )
        with contextlib.suppress(RuntimeError):  # the loop closed: the process is stopping
            loop.call_soon_threadsafe(self._publish_metric, event)

    def _publish_metric(self, event: MetricLogged) -> None:
        if self.publisher is not None:
            self.publisher.publish(event)

    async def _connect(self) -> None:
        settings = self.settings
        if not await bus.reachable(settings.nats_url, settings.nats_connect_timeout):
            log.warning("NATS at %s is not reachable: predictions will not be logged",
                        shown(settings.nats_url))  # fmt: skip
            return
        try:
            self.publisher = await self._resources.enter_async_context(
                _publisher(settings, self.metrics.registry)
            )
        except Exception as exc:
            log.warning("predictions will not be logged: %s: %s", type(exc).__name__, exc)
            return
        log.info("logging predictions to %s", shown(settings.nats_url))


def logged_input(value: bytes | None) -> str | None:
    """A message value as the prediction log keeps it: text, or Base64 when not UTF-8."""
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return base64.b64encode(value).decode()


@asynccontextmanager
async def _publisher(
    settings: KafkaBridgeSettings, registry: CollectorRegistry
) -> AsyncIterator[bus.BatchedPublisher]:
    name = f"cormorant-kafka-bridge {settings.endpoint}/{settings.version}"
    async with bus.replica_publisher(
        settings.nats_url,
        client_name=name,
        publisher_name="predictions",
        connect_timeout=settings.nats_connect_timeout,
        registry=registry,
    ) as publisher:
        yield publisher
