"""Settings shared by every service, and the base each service's settings class extends.

Every value comes from the environment (prefix ``CORMORANT_``) or from the constructor;
nothing else in the code base reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _shared(name: str, *former: str) -> AliasChoices:
    """Accept a shared setting by its field name or its one ``CORMORANT_`` variable (then by
    the ``former`` variables it had when it was a service's own)."""
    return AliasChoices(name, f"CORMORANT_{name.upper()}", *former)


def default_datasets_url(data_dir: Path) -> str:
    """The default storage of datasets: ``<data_dir>/datasets`` as an absolute local path."""
    return str((data_dir / "datasets").resolve())


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
