"""Test support: publishing predictions, counting rows, the service as a real process.

Used by the PredictLog tests and by end-to-end tests that need to drive the prediction log.
Waits poll with deadlines; nothing here sleeps for a fixed time. Requires the
``asgi-lifespan`` development dependency.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from asgi_lifespan import LifespanManager

from cormorant.common import bus
from cormorant.common.db import PredictionRow, asyncpg_dsn, copy_predictions
from cormorant.common.events import Event, PredictionLogged
from cormorant.common.internal import InternalAuth, generate_internal_secret
from cormorant.devstack.testing.service import ServiceUnderTest
from cormorant.predictlog.app import create_app
from cormorant.predictlog.settings import PredictLogSettings

SLUG = "iris"


class LogKit:
    """Publishes predictions, writes rows directly, and counts what the log holds."""

    def __init__(self, nats_url: str, database_url: str, endpoint_id: uuid.UUID) -> None:
        self.nats_url = nats_url
        self.database_url = database_url
        self.endpoint_id = endpoint_id
        self.run = uuid.uuid4().hex[:8]

    def prediction(
        self, i: int, *, received_at: datetime | None = None, **fields: Any
    ) -> PredictionLogged:
        """The ``i``-th prediction of this test (request ids are unique per test)."""
        values: dict[str, Any] = {
            "request_id": f"{self.run}-{i:06d}",
            "endpoint": SLUG,
            "version": "1",
            "input": [[5.1, 3.5, 1.4, 0.2], {"n": i}],
            "output": {"label": "setosa", "p": 0.97},
            "status": 200,
            "latency_ms": 1.5 + i % 7,
            "received_at": received_at or datetime.now(UTC),
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
        }
        return PredictionLogged(**(values | fields))

    async def publish(
        self, events: Iterable[Event], *, rate: float | None = None, columns: bool = True
    ) -> int:
        """Publish through a ``BatchedPublisher`` at about ``rate``/s and wait for the acks:
        predictions in column packs of up to 1,000 as replicas send them, or with ``columns``
        off packed by the publisher as the gateway and the kafka-bridge send them."""
        nc = await bus.connect(self.nats_url, name="predictlog-test-publisher")
        try:
            await bus.ensure_streams(nc.jetstream())
            publisher = bus.BatchedPublisher(
                nc, name="test", max_buffer=200_000, max_pack=bus.PACK_EVENTS
            )
            await publisher.start()
            started = time.monotonic()
            count = 0
            group: list[PredictionLogged] = []

            def send_group() -> None:
                pack, left_out = bus.prediction_pack(bus.PredictionColumns.of(group))
                assert pack is not None
                assert not left_out
                assert publisher.publish_pack(group[0].subject, pack)
                group.clear()

            for event in events:
                if columns and isinstance(event, PredictionLogged):
                    if group and (
                        (event.endpoint, event.endpoint_id, event.version)
                        != (group[0].endpoint, group[0].endpoint_id, group[0].version)
                    ):
                        send_group()
                    group.append(event)
                    if len(group) == 1_000:
                        send_group()
                else:
                    assert publisher.publish(event)
                count += 1
                if count % 500 == 0:
                    ahead = count / rate - (time.monotonic() - started) if rate else 0.0
                    await asyncio.sleep(max(ahead, 0.0))
            if group:
                send_group()
            assert await publisher.flush(120), "events not acknowledged by JetStream"
            stats = publisher.stats
            await publisher.stop()
            assert stats.dropped == 0, stats
            return count
        finally:
            await bus.close(nc)

    async def connect(self) -> asyncpg.Connection:
        """A connection to the test's database."""
        return await asyncpg.connect(asyncpg_dsn(self.database_url))

    async def create_endpoint(self, slug: str) -> uuid.UUID:
        """Add an endpoint row named ``slug``; its id."""
        endpoint_id = uuid.uuid4()
        conn = await self.connect()
        try:
            await conn.execute(
                "INSERT INTO endpoints (id, slug, name, kind) VALUES ($1, $2, $3, 'web')",
                endpoint_id,
                slug,
                slug,
            )
        finally:
            await conn.close()
        return endpoint_id

    async def counts(self) -> tuple[int, int]:
        """Rows of the endpoint in ``predictions`` and their distinct request ids."""
        conn = await self.connect()
        try:
            row = await conn.fetchrow(
                "SELECT count(*), count(DISTINCT request_id) FROM predictions"
                " WHERE endpoint_id = $1",
                self.endpoint_id,
            )
        finally:
            await conn.close()
        assert row is not None
        return int(row[0]), int(row[1])

    async def wait_rows(self, expected: int, *, within: float) -> None:
        """Wait until ``expected`` rows are stored; fail with the last count after ``within``."""
        deadline = time.monotonic() + within
        while (stored := (await self.counts())[0]) < expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{stored} rows of {expected} after {within:g} s")
            await asyncio.sleep(0.2)  # polling interval of a deadline wait

    async def copy(self, rows: Iterable[PredictionRow]) -> int:
        """COPY rows straight into ``predictions`` (test data, not through the ingest)."""
        conn = await self.connect()
        try:
            return await copy_predictions(conn, rows)
        finally:
            await conn.close()

    def row(self, i: int, received_at: datetime, **fields: Any) -> PredictionRow:
        """A ``PredictionRow`` of the test's endpoint."""
        values: dict[str, Any] = {
            "request_id": f"{self.run}-{i:06d}",
            "status": 200,
            "latency_ms": 2.0,
            "version": 1,
            "input": {"i": i},
            "output": [i],
        }
        return PredictionRow(
            received_at=received_at, endpoint_id=self.endpoint_id, **(values | fields)
        )


def quick_settings(nats_url: str, database_url: str, **overrides: Any) -> PredictLogSettings:
    """Settings with short waits, so redeliveries and samples happen within a test."""
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "database_url": database_url,
        "log_json": False,
        "internal_secret": generate_internal_secret(),
        "ack_wait_s": 2.0,
        "fetch_timeout_s": 0.5,
        "lag_sample_interval_s": 0.5,
        "startup_timeout_s": 30.0,
    }
    return PredictLogSettings(**(values | overrides))


@asynccontextmanager
async def running(settings: PredictLogSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The service in-process, ingest included; an HTTP client of its API."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://predictlog",
            auth=InternalAuth(settings.internal_secret),
        ) as http:
            yield http


class ServiceProcess(ServiceUnderTest):
    """``python -m cormorant.predictlog`` as a real process, killable like a crash."""

    def __init__(self, nats_url: str, database_url: str, log_path: Path) -> None:
        self.internal_secret = generate_internal_secret()
        env = {
            "CORMORANT_INTERNAL_SECRET": self.internal_secret,
            "CORMORANT_NATS_URL": nats_url,
            "CORMORANT_DATABASE_URL": database_url,
            "CORMORANT_PREDICTLOG_ACK_WAIT_S": "2",
            "CORMORANT_PREDICTLOG_FETCH_TIMEOUT_S": "0.5",
        }
        super().__init__("predictlog", env, log_path)

    @property
    def auth(self) -> InternalAuth:
        """The internal credential its API asks for."""
        return InternalAuth(self.internal_secret)


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in exposition.splitlines():
        metric, _, value = line.rpartition(" ")
        if not metric.startswith(name):
            continue
        found, _, rest = metric.partition("{")
        pairs = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if found == name and pairs == wanted:
            return float(value)
    return 0.0


def minutes_ago(minutes: float) -> datetime:
    """An instant ``minutes`` before now (UTC)."""
    return datetime.now(UTC) - timedelta(minutes=minutes)
