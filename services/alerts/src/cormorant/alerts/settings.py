"""Settings of the Alerts service (environment prefix ``CORMORANT_ALERTS_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from cormorant.alerts.triggers.settings import TriggerSettings


class AlertsSettings(TriggerSettings):
    """Settings of the Alerts service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_ALERTS_", extra="ignore", populate_by_name=True
    )

    port: int = 8084
    """Port the service listens on."""
