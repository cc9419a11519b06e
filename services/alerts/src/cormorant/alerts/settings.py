"""Settings of the Alerts service (environment prefix ``CORMORANT_ALERTS_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cormorant.alerts.triggers.settings import TriggerSettings


class AlertsSettings(TriggerSettings):
    """Settings of the Alerts service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_ALERTS_", extra="ignore", populate_by_name=True
    )

    port: int = 8084
    """Port the service listens on."""

    # Flows call the public API at ``gateway_url`` with ``api_key``, as trigger flow actions do.
    flows_exec_memory_mb: int = Field(default=4096, ge=64)
    """Address space an ``exec`` task's process may use, in MiB."""

    flows_exec_open_files: int = Field(default=1024, ge=16)
    """Files an ``exec`` task's process may hold open."""

    flows_workspace_max_mb: int = Field(default=1024, ge=1)
    """Largest flow directory a run copies into its private workspace, in MiB."""
