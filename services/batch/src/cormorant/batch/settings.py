"""Settings of the Batch service (environment prefix ``CORMORANT_BATCH_``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from cormorant.common.settings import ServiceSettings


def _former(name: str) -> AliasChoices:
    """Read ``name`` as ``CORMORANT_BATCH_<NAME>``, or by the deployer's name from before batch
    jobs had a service of their own."""
    return AliasChoices(
        f"CORMORANT_BATCH_{name.upper()}", f"CORMORANT_DEPLOYER_BATCH_{name.upper()}"
    )


class BatchSettings(ServiceSettings):
    """Settings of the Batch service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_BATCH_", extra="ignore", populate_by_name=True
    )

    port: int = 8085
    """Port the service listens on."""

    deployer_url: str = "http://127.0.0.1:8081"
    """Deployer: grants a batch endpoint its replicas for a while (``demand``) and serves the
    routing snapshot the ready replicas are read from."""

    predictlog_url: str = "http://127.0.0.1:8082"
    """Prediction log service, whose charts give the custom metrics of ``compare``."""

    idle_timeout_s: float = Field(default=60.0, ge=0, validation_alias=_former("idle_timeout_s"))
    """Seconds a batch endpoint keeps its replicas after its last job before the deployer
    scales it to 0. Formerly ``CORMORANT_DEPLOYER_BATCH_IDLE_TIMEOUT_S``, still read."""

    chunk_rows: int = Field(default=10000, ge=1, validation_alias=_former("chunk_rows"))
    """Most rows a job sends to a replica in one request (fewer for wide rows). Formerly
    ``CORMORANT_DEPLOYER_BATCH_CHUNK_ROWS``, still read."""

    requests_per_replica: int = Field(
        default=2, ge=1, validation_alias=_former("requests_per_replica")
    )
    """Chunks a job keeps in flight per replica. Formerly
    ``CORMORANT_DEPLOYER_BATCH_REQUESTS_PER_REPLICA``, still read."""

    ready_timeout_s: float = Field(default=240.0, gt=0)
    """Seconds a job waits for a ready replica of its endpoint before it fails."""

    startup_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for PostgreSQL and NATS at start-up before giving up."""
