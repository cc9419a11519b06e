"""Traces cross NATS: a batch's write span links the request of every event it stores."""

from __future__ import annotations

import asyncio
import uuid

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cormorant.common import bus
from cormorant.common.telemetry import new_registry
from cormorant.predictlog.database import EndpointDirectory, create_pool
from cormorant.predictlog.ingest import PredictionIngest
from cormorant.predictlog.monitoring import IngestMetrics
from cormorant.predictlog.testing import LogKit, quick_settings


async def test_packed_events_keep_their_own_traces(
    nats_url: str, migrated_url: str, endpoint_id: uuid.UUID
) -> None:
    """Five requests' events in one pack: the write span links all five traces."""
    kit = LogKit(nats_url, migrated_url, endpoint_id)
    traces = [uuid.uuid4().hex for _ in range(5)]
    nc = await bus.connect(nats_url, name="test")
    pool = await create_pool(migrated_url, size=1)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js)
        publisher = bus.BatchedPublisher(nc, name="traced", max_pack=bus.PACK_EVENTS)
        for i, trace_id in enumerate(traces):
            context = {"traceparent": f"00-{trace_id}-{i + 1:016x}-01"}
            assert publisher.publish(kit.prediction(i, trace_id=trace_id), context=context)
        await publisher.start()
        assert await publisher.stop() == 0
        assert publisher.stats.messages == 1

        ingest = PredictionIngest(
            nc,
            js,
            stream=bus.PREDICTIONS_STREAM,
            durable="traced",
            directory=EndpointDirectory(pool, ttl=60),
            metrics=IngestMetrics(new_registry()),
            settings=quick_settings(nats_url, migrated_url),
            max_ack_pending=1_000,
            tracer=provider.get_tracer("test"),
        )
        stopping = asyncio.Event()
        loop = asyncio.create_task(ingest.run(stopping))
        try:
            await kit.wait_rows(5, within=30)
        finally:
            stopping.set()
            await loop
    finally:
        await pool.close()
        await bus.close(nc)

    [span] = [s for s in exporter.get_finished_spans() if s.name == "predictlog write predictions"]
    linked = [format(link.context.trace_id, "032x") for link in span.links]
    assert sorted(linked) == sorted(traces)
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 1
