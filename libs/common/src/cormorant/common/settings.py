"""Settings shared by every service, and the base each service's settings class extends.

Every value comes from the environment (prefix ``CORMORANT_``) or from the constructor;
nothing else in the code base reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, ByteSize, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _shared(name: str, *former: str) -> AliasChoices:
    """Accept a shared setting by its field name or its one ``CORMORANT_`` variable (then by
    the ``former`` variables it had when it was a service's own)."""
    return AliasChoices(name, f"CORMORANT_{name.upper()}", *former)


_DAY = 86_400.0


def default_datasets_url(data_dir: Path) -> str:
    """The default storage of datasets: ``<data_dir>/datasets`` as an absolute local path."""
    return str((data_dir / "datasets").resolve())


class StreamSettings(BaseSettings):
    """How big and how redundant the platform's JetStream streams are (prefix
    ``CORMORANT_BUS_STREAM_``). Every service that declares the streams reads the same values,
    so they agree on one configuration: a stream that exists with other values is updated to
    these when a service starts."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_BUS_STREAM_", extra="ignore", use_attribute_docstrings=True
    )

    replicas: int = Field(default=1, ge=1, le=5)
    """Copies of each stream across a NATS cluster (JetStream allows 1 to 5, at most the number
    of servers; a single server, as the local stack's, takes only 1). Raising it on existing
    streams updates them in place."""

    predictions_max_age_s: float = Field(default=7 * _DAY, ge=0)
    """Seconds a logged prediction is kept on the predictions stream (0: until its size limit
    pushes it out). The prediction log's database keeps its own retention."""

    predictions_max_bytes: ByteSize | None = None
    """Largest size of the predictions stream (``800MiB``, ``20GiB``; MB and GB count in
    powers of 1000); the oldest messages go first. Unset: bounded by age only. On NATS with a
    ``max_file_store``, the three streams' sizes must fit in it."""

    metrics_max_age_s: float = Field(default=30 * _DAY, ge=0)
    """Seconds a logged metric is kept on the metrics stream (0: until its size limit)."""

    metrics_max_bytes: ByteSize | None = None
    """Largest size of the metrics stream (units as for the predictions stream's)."""

    events_max_age_s: float = Field(default=30 * _DAY, ge=0)
    """Seconds a platform event (endpoint, traffic, replica, job changes) is kept (0: until
    its size limit)."""

    events_max_bytes: ByteSize | None = None
    """Largest size of the events stream (units as for the predictions stream's)."""


class CommonSettings(BaseSettings):
    """Settings every service reads the same way, whatever its own prefix."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_",
        extra="ignore",
        populate_by_name=True,
        # Field docstrings become descriptions: docs/configuration.md is generated from them.
        use_attribute_docstrings=True,
    )

    data_dir: Path = Field(default=Path(".cormorant"), validation_alias=_shared("data_dir"))
    """Directory for local state: server data, model archives, datasets."""

    nats_url: str = Field(default="nats://127.0.0.1:4222", validation_alias=_shared("nats_url"))
    """NATS server with JetStream enabled."""

    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/cormorant",
        validation_alias=_shared("database_url"),
    )
    """SQLAlchemy URL of the PostgreSQL database (asyncpg driver)."""

    internal_secret: SecretStr | None = Field(
        default=None, validation_alias=_shared("internal_secret")
    )
    """The stack's internal credential: every service-to-service call carries it and every
    service but the gateway refuses a call without it (401; ``/healthz`` and ``/metrics`` stay
    open). ``cormorant up`` generates it; set the same value on every service. Never given to
    replicas."""

    log_level: str = Field(default="INFO", validation_alias=_shared("log_level"))
    """Logging level of the service's own loggers."""

    log_json: bool = Field(default=True, validation_alias=_shared("log_json"))
    """Emit one JSON object per log line (for log pipelines) instead of plain text."""

    otlp_endpoint: str | None = Field(default=None, validation_alias=_shared("otlp_endpoint"))
    """OTLP/HTTP collector base URL; traces are exported only when this is set."""

    # The deployer reads the files the feedback service stores: one setting keeps them on the
    # same storage. The per-service names it replaced are still read.
    datasets_url: str | None = Field(
        default=None,
        validation_alias=_shared(
            "datasets_url", "CORMORANT_DEPLOYER_DATASETS_URL", "CORMORANT_FEEDBACK_DATASETS_URL"
        ),
    )
    """fsspec URL where dataset files are stored (``s3://bucket/prefix``, ``memory://x``, a
    directory); default ``<data_dir>/datasets``. Formerly ``CORMORANT_DEPLOYER_DATASETS_URL``
    and ``CORMORANT_FEEDBACK_DATASETS_URL``, still read when this is unset."""

    datasets_storage_options: dict[str, Any] = Field(
        default_factory=dict,
        validation_alias=_shared(
            "datasets_storage_options",
            "CORMORANT_DEPLOYER_DATASETS_STORAGE_OPTIONS",
            "CORMORANT_FEEDBACK_DATASETS_STORAGE_OPTIONS",
        ),
    )
    """Options for the fsspec filesystem of ``datasets_url`` (a JSON object, e.g.
    ``{"endpoint_url": "http://minio:9000"}`` for S3-compatible storage). Formerly
    ``CORMORANT_DEPLOYER_DATASETS_STORAGE_OPTIONS`` and
    ``CORMORANT_FEEDBACK_DATASETS_STORAGE_OPTIONS``, still read when this is unset."""

    # Its own settings class, so its variables are CORMORANT_BUS_STREAM_* in every service
    # rather than each service's prefix.
    bus_stream: StreamSettings = Field(
        default_factory=StreamSettings, validation_alias=_shared("bus_stream")
    )
    """Sizing of the JetStream streams: the ``CORMORANT_BUS_STREAM_*`` variables below."""

    def resolved_datasets_url(self) -> str:
        """``datasets_url``, or the local default under ``data_dir``."""
        return self.datasets_url or default_datasets_url(self.data_dir)


class ServiceSettings(CommonSettings):
    """Base of a service's settings: an HTTP listener on top of the shared values."""

    host: str = "127.0.0.1"
    """Interface the service listens on."""

    port: int = 0
    """Port the service listens on (0 picks a free one)."""


class ArchivesSettings(ServiceSettings):
    """A service that reads the code archives of model versions (the deployer, the fleet)."""

    archives_url: str | None = Field(
        default=None, validation_alias=AliasChoices("archives_url", "CORMORANT_ARCHIVES_URL")
    )
    """fsspec URL where the code archive of every model version is stored (a directory,
    ``s3://bucket/prefix``…); default ``<data_dir>/archives``. Replicas run from a copy
    extracted under ``<data_dir>/versions``."""

    archives_storage_options: dict[str, Any] = Field(
        default_factory=dict,
        validation_alias=AliasChoices(
            "archives_storage_options", "CORMORANT_ARCHIVES_STORAGE_OPTIONS"
        ),
    )
    """Options for the fsspec filesystem of ``archives_url`` (a JSON object, e.g.
    ``{"endpoint_url": "http://minio:9000"}``)."""

    def resolved_archives_url(self) -> str:
        """``archives_url``, or ``<data_dir>/archives`` as an absolute local path."""
        return self.archives_url or str((self.data_dir / "archives").resolve())
