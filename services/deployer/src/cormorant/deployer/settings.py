"""Settings of the Deployer service (environment prefix ``CORMORANT_DEPLOYER_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from cormorant.common.settings import ServiceSettings


class DeployerSettings(ServiceSettings):
    """Settings of the Deployer service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_DEPLOYER_", extra="ignore", populate_by_name=True
    )

    port: int = 8081
    """Port the service listens on."""
