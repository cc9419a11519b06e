"""Settings shared by every service, and the base each service's settings class extends.

Every value comes from the environment (prefix ``CORMORANT_``) or from the constructor;
nothing else in the code base reads the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _shared(name: str) -> AliasChoices:
    """Accept a shared setting by its field name or its one ``CORMORANT_`` variable."""
    return AliasChoices(name, f"CORMORANT_{name.upper()}")


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

    log_level: str = Field(default="INFO", validation_alias=_shared("log_level"))
    """Logging level of the service's own loggers."""

    log_json: bool = Field(default=True, validation_alias=_shared("log_json"))
    """Emit one JSON object per log line (for log pipelines) instead of plain text."""

    otlp_endpoint: str | None = Field(default=None, validation_alias=_shared("otlp_endpoint"))
    """OTLP/HTTP collector base URL; traces are exported only when this is set."""


class ServiceSettings(CommonSettings):
    """Base of a service's settings: an HTTP listener on top of the shared values."""

    host: str = "127.0.0.1"
    """Interface the service listens on."""

    port: int = 0
    """Port the service listens on (0 picks a free one)."""
