"""Settings of the Alerts service (environment prefix ``CORMORANT_ALERTS_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from cormorant.common.settings import ServiceSettings


class AlertsSettings(ServiceSettings):
    """Settings of the Alerts service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_ALERTS_", extra="ignore", populate_by_name=True
    )

    port: int = 8084
    """Port the service listens on."""

    startup_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for PostgreSQL and NATS at start-up before giving up."""

    # Flows
    flows_api_url: str = "http://127.0.0.1:8080"
    """The public API (the gateway) that flow tasks call."""

    flows_api_key: SecretStr | None = None
    """Admin key flow tasks call the API with (the local stack passes its bootstrap key)."""

    flows_exec_memory_mb: int = Field(default=4096, ge=64)
    """Address space an ``exec`` task's process may use, in MiB."""

    flows_exec_open_files: int = Field(default=1024, ge=16)
    """Files an ``exec`` task's process may hold open."""

    flows_workspace_max_mb: int = Field(default=1024, ge=1)
    """Largest flow directory a run copies into its private workspace, in MiB."""
