"""Settings of the PredictLog service (environment prefix ``CORMORANT_PREDICTLOG_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from cormorant.common.settings import ServiceSettings


class PredictLogSettings(ServiceSettings):
    """Settings of the PredictLog service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_PREDICTLOG_", extra="ignore", populate_by_name=True
    )

    port: int = 8082
    """Port the service listens on."""
