"""Settings of the KafkaBridge service (environment prefix ``CORMORANT_KAFKA_BRIDGE_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from cormorant.common.settings import ServiceSettings


class KafkaBridgeSettings(ServiceSettings):
    """Settings of the KafkaBridge service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_KAFKA_BRIDGE_", extra="ignore", populate_by_name=True
    )

    port: int = 8085
    """Port the service listens on."""
