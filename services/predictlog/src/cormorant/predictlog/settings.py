"""Settings of the PredictLog service (environment prefix ``CORMORANT_PREDICTLOG_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cormorant.common.settings import ServiceSettings


class PredictLogSettings(ServiceSettings):
    """Settings of the PredictLog service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_PREDICTLOG_", extra="ignore", populate_by_name=True
    )

    port: int = 8082
    """Port the service listens on."""

    retention_days: int = Field(default=30, ge=1)
    """Days of predictions kept: older daily partitions are dropped."""

    partitions_ahead_days: int = Field(default=3, ge=1)
    """Daily partitions created ahead of today, so a new day never starts in the default one."""

    maintenance_interval_s: float = Field(default=86_400.0, gt=0)
    """Interval of the partition upkeep (create ahead, drop past retention); also run at start."""

    ingest_batch: int = Field(default=2_000, ge=1, le=50_000)
    """Most events fetched and written in one COPY; a batch is whatever arrived, up to this."""

    ingest_consumers: int = Field(default=2, ge=1, le=16)
    """Consumer loops sharing the predictions durable, so one writes while another fetches."""

    durable_prefix: str = Field(default="predictlog", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Prefix of the durable JetStream consumer names (``<prefix>-predictions``, ``-metrics``)."""

    ack_wait_s: float = Field(default=10.0, gt=0)
    """Seconds JetStream waits for an ack before redelivering (after a crash, for instance)."""

    max_deliver: int = Field(default=10, ge=1)
    """Deliveries of one event before it is given up (an endpoint that never appears...)."""

    fetch_timeout_s: float = Field(default=1.0, gt=0)
    """Longest wait of one fetch on an idle stream."""

    endpoint_cache_s: float = Field(default=60.0, ge=0)
    """Seconds a slug-to-endpoint-id lookup is reused by the ingest."""

    lag_sample_interval_s: float = Field(default=5.0, gt=0)
    """Interval at which the consumers' pending counts are sampled for Prometheus."""

    db_pool_size: int = Field(default=5, ge=1)
    """Connections of the API's pool (each ingest consumer has a connection of its own)."""

    logs_max_limit: int = Field(default=1_000, ge=1)
    """Largest page the logs API returns (the SDK and ``cormorant logs --follow`` ask for
    pages of up to 1,000)."""

    export_page_rows: int = Field(default=2_000, ge=1)
    """Rows read per query while streaming a CSV export; bounds the memory an export takes."""

    startup_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for PostgreSQL and NATS at start-up before giving up."""
