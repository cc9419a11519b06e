"""One replica's life: serve probes, import the model, join the group, stream, stop cleanly.

Order matters for a model swap: the model is imported (the new version "warms up") before
the consumer joins the group, so the group never waits on an import. ``/healthz`` answers
503 until the consumer received its first assignment, and again once stopping.

SIGTERM (or SIGINT) asks for a graceful stop: no new batch is fetched, the one in flight is
produced and committed, the consumer leaves the group (its partitions move at once, no
session timeout), the producer flushes. A second signal, or ``stop_timeout`` passing with
the batch unfinished, exits at once: that batch is not committed and is predicted again by
the next owner (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from enum import Enum
from typing import Any, Final

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from cormorant.common.errors import CormorantError, ServiceUnavailable
from cormorant.common.kafka_security import client_security
from cormorant.common.predictor import (
    PredictContext,
    Predictor,
    set_metric_sink,
    set_predict_context,
)
from cormorant.common.telemetry import new_registry
from cormorant.kafka_bridge.app import MetricsServer, create_app
from cormorant.kafka_bridge.bridge import Bridge, Topics
from cormorant.kafka_bridge.consume import BatchConsumer, create_consumer
from cormorant.kafka_bridge.dlq import TopicsMissing, check_topics
from cormorant.kafka_bridge.lag import register_lag
from cormorant.kafka_bridge.metrics import BridgeMetrics
from cormorant.kafka_bridge.predict import BatchPredictor
from cormorant.kafka_bridge.produce import BatchProducer, create_producer
from cormorant.kafka_bridge.publishing import PredictionLog
from cormorant.kafka_bridge.settings import KafkaBridgeSettings

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""A runtime failure (broker refused us, a bug): worth restarting with a backoff."""
EXIT_REFUSED: Final = 2
"""A configuration that cannot work (model import, missing topics, security): do not retry."""


class Phase(Enum):
    """Where a replica is in its life, as ``/healthz`` reports it."""

    LOADING = "importing the model"
    CONNECTING = "connecting to Kafka"
    JOINING = "joining the consumer group"
    STREAMING = "streaming"
    STOPPING = "stopping"


class NotStreaming(ServiceUnavailable):
    """The replica is not (or no longer) consuming."""

    code = "not_ready"


class Replica:
    """A stream-endpoint replica built from its settings."""

    def __init__(self, settings: KafkaBridgeSettings, predictor: Predictor | None = None) -> None:
        self.settings = settings
        self.metrics = BridgeMetrics(new_registry())
        self.app = create_app(settings, ready=self.ready, registry=self.metrics.registry)
        self.phase = Phase.LOADING
        self.bridge: Bridge | None = None
        self.port: int | None = None
        self._predictor = predictor
        self._stop = asyncio.Event()
        self._signals = 0

    def ready(self) -> bool:
        """True while streaming; otherwise raises what the replica is doing."""
        if self.phase is Phase.STREAMING:
            return True
        raise NotStreaming(f"{self.settings.endpoint}/{self.settings.version}: {self.phase.value}")

    def request_stop(self) -> None:
        """Begin a graceful stop (what SIGTERM does)."""
        self._stop.set()
        self.phase = Phase.STOPPING
        self.metrics.ready.set(0)
        if self.bridge is not None:
            self.bridge.stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: graceful stop; a second one: exit at once."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1:
            in_flight = self.bridge.in_flight if self.bridge is not None else 0
            log.warning("second %s: exiting now; %d in-flight message(s) not committed",
                        sig.name, in_flight)  # fmt: skip
            _exit_now(EXIT_FAILED)
        log.info("%s: stopping gracefully", sig.name)
        self.request_stop()

    async def run(self) -> int:
        """Run until stopped; the process exit code."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(settings.predict_threads, thread_name_prefix="predict")
        async with AsyncExitStack() as stack:
            stack.callback(pool.shutdown, wait=False, cancel_futures=True)
            server = MetricsServer(self.app, settings.host, settings.port)
            self.port = await server.start()
            stack.push_async_callback(server.stop)
            log.info("probes on http://%s:%d/healthz and /metrics", settings.host, self.port)

            set_predict_context(PredictContext(settings.endpoint, settings.version))
            stack.callback(set_predict_context, None)
            try:
                predictor = await self._load(loop, pool)
                security = client_security(settings.security)
            except CormorantError as exc:
                log.error("refused: %s", exc.message)
                return EXIT_REFUSED
            if self._stop.is_set():
                return EXIT_OK

            prediction_log = await stack.enter_async_context(PredictionLog(settings, self.metrics))
            set_metric_sink(prediction_log.metric)
            stack.callback(set_metric_sink, None)

            self.phase = Phase.CONNECTING
            try:
                await self._check_topics(security)
            except TopicsMissing as exc:
                log.error("refused: %s", exc)
                return EXIT_REFUSED
            producer = create_producer(
                settings.bootstrap_servers,
                client_id=self._client_id(),
                security=security,
                **_producer_options(settings),
            )
            await producer.start()
            stack.push_async_callback(producer.stop)
            consumer = BatchConsumer(
                create_consumer(
                    settings.bootstrap_servers,
                    group=settings.group,
                    client_id=self._client_id(),
                    security=security,
                    **_consumer_options(settings),
                ),
                settings.input_topics,
                max_batch=settings.max_batch,
                max_poll_interval=settings.max_poll_interval_ms / 1000,
                probe=lambda: AIOKafkaConsumer(
                    bootstrap_servers=settings.bootstrap_servers,
                    client_id=self._client_id(),
                    enable_auto_commit=False,
                    fetch_max_wait_ms=settings.fetch_max_wait_ms,
                    **security,
                ),
            )
            bridge = self.bridge = Bridge(
                consumer,
                BatchProducer(producer),
                BatchPredictor(
                    predictor,
                    tries=settings.predict_tries,
                    backoff=settings.retry_backoff_ms / 1000,
                ),
                pool,
                topics=Topics(
                    output=settings.output_topic,
                    dead_letter=settings.dead_letter_topic,
                    group=settings.group,
                    endpoint=settings.endpoint,
                    version=settings.version,
                ),
                metrics=self.metrics,
                predict_threads=settings.predict_threads,
                prediction_log=prediction_log,
            )
            register_lag(self.metrics.registry, consumer.lag)
            if self._stop.is_set():
                return EXIT_OK
            # Everything allocated so far (modules, the model, the clients) lives as long as
            # the process: out of the collector's sight, a full collection takes 1-2 ms
            # instead of ~50 ms, which every message in flight would wait for.
            gc.freeze()
            self.phase = Phase.JOINING
            started = time.perf_counter()
            await consumer.start()
            stack.push_async_callback(consumer.close)
            runner = asyncio.create_task(bridge.run(), name="kafka-bridge")
            code = await self._stream(bridge, runner, consumer, started)
            log.info(
                "stopped: %d batches, %d consumed, %d produced, %d dead-lettered, "
                "%d duplicates avoided at handovers, %d produced but not committed",
                bridge.stats.batches, bridge.stats.consumed, bridge.stats.produced,
                bridge.stats.dead_lettered, bridge.stats.duplicates_avoided,
                bridge.stats.uncommitted,
            )  # fmt: skip
            return code
        return EXIT_OK  # pragma: no cover - the stack does not swallow exceptions

    async def _stream(
        self, bridge: Bridge, runner: asyncio.Task[None], consumer: BatchConsumer, started: float
    ) -> int:
        stop = asyncio.create_task(self._stop.wait())
        joined = asyncio.create_task(bridge.joined.wait())
        try:
            await asyncio.wait([joined, runner, stop], return_when=asyncio.FIRST_COMPLETED)
            if joined.done() and not self._stop.is_set():
                self.phase = Phase.STREAMING
                self.metrics.ready.set(1)
                log.info("streaming: joined group %s in %.1f s", self.settings.group,
                         time.perf_counter() - started)  # fmt: skip
            await asyncio.wait([runner, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            joined.cancel()
            stop.cancel()
        bridge.stop()
        done, _ = await asyncio.wait([runner], timeout=self.settings.stop_timeout)
        if not done:
            log.error("the batch in flight did not finish within %.0f s: %d message(s) not "
                      "committed, they will be predicted again", self.settings.stop_timeout,
                      bridge.in_flight)  # fmt: skip
            # A predict thread cannot be interrupted; leave the group, then exit without it.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await consumer.close()
            _exit_now(EXIT_FAILED)
        code = EXIT_OK
        if runner.exception() is not None:
            exc = runner.exception()
            log.error("streaming failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            code = EXIT_FAILED
        # Leaving the group hands the partitions over now rather than after a session timeout.
        await consumer.close()
        return code

    async def _load(self, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor) -> Predictor:
        if self._predictor is not None:
            return self._predictor
        settings = self.settings
        os.environ.update(settings.env)
        started = time.perf_counter()
        predictor = await loop.run_in_executor(
            pool, lambda: Predictor.load(settings.predictor_spec(), temp_dir=settings.temp_dir)
        )
        log.info("model %s:%s imported in %.2f s", settings.file, settings.function,
                 time.perf_counter() - started)  # fmt: skip
        return predictor

    async def _check_topics(self, security: dict[str, Any]) -> None:
        settings = self.settings
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=self._client_id(),
            request_timeout_ms=settings.request_timeout_ms,
            **security,
        )
        await admin.start()
        try:
            await check_topics(
                admin,
                required=[*settings.input_topics, settings.output_topic],
                dead_letter_topic=settings.dead_letter_topic,
                create_dead_letter=settings.create_dlq_topic,
                bootstrap_servers=settings.bootstrap_servers,
            )
        finally:
            await admin.close()

    def _client_id(self) -> str:
        return f"cormorant-kafka-bridge-{self.settings.endpoint}-{self.settings.version}"


def _producer_options(settings: KafkaBridgeSettings) -> dict[str, Any]:
    acks: int | str = "all" if settings.acks in ("all", "-1") else int(settings.acks)
    return {
        "acks": acks,
        "linger_ms": settings.linger_ms,
        "max_batch_size": settings.max_produce_batch_bytes,
        "compression_type": settings.compression_type,
        "request_timeout_ms": settings.request_timeout_ms,
    }


def _consumer_options(settings: KafkaBridgeSettings) -> dict[str, Any]:
    return {
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "rebalance_timeout_ms": settings.rebalance_timeout_ms,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "request_timeout_ms": max(settings.request_timeout_ms, settings.session_timeout_ms + 5000),
    }


def _exit_now(code: int) -> None:
    """Exit without waiting for predict threads, which cannot be interrupted."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stderr.flush()
    os._exit(code)
