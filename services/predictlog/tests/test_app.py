"""The PredictLog service answers its probes in the platform's shapes."""

from __future__ import annotations

import httpx
from pydantic import ByteSize

from cormorant.common import bus
from cormorant.common.settings import StreamSettings
from cormorant.predictlog.testing import quick_settings, running


async def test_health_metrics_and_error_shape(client: httpx.AsyncClient) -> None:
    """/healthz is 200, /metrics is Prometheus text with the ingest's series, 404 is JSON."""
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "cormorant_predictlog_rows_written_total" in metrics.text
    assert "cormorant_predictlog_consumer_events_total" in metrics.text
    missing = await client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_the_service_sizes_the_streams_as_its_settings_say(
    nats_url: str, migrated_url: str
) -> None:
    """Started with ``CORMORANT_BUS_STREAM_*`` values, the service creates the streams so."""
    sizing = StreamSettings(predictions_max_age_s=3600, predictions_max_bytes=ByteSize(2**20))
    async with running(quick_settings(nats_url, migrated_url, bus_stream=sizing)) as client:
        assert (await client.get("/healthz")).status_code == 200
    nc = await bus.connect(nats_url, name="inspect")
    try:
        config = (await nc.jetstream().stream_info(bus.PREDICTIONS_STREAM)).config
    finally:
        await bus.close(nc)
    assert (config.max_age, config.max_bytes) == (3600, 2**20)
