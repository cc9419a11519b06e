"""Settings of the Gateway service (environment prefix ``CORMORANT_GATEWAY_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from cormorant.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """Settings of the Gateway service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_GATEWAY_", extra="ignore", populate_by_name=True
    )

    port: int = 8080
    """Port the service listens on."""
