"""Settings of the Feedback service (environment prefix ``CORMORANT_FEEDBACK_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from cormorant.common.settings import ServiceSettings


class FeedbackSettings(ServiceSettings):
    """Settings of the Feedback service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_FEEDBACK_", extra="ignore", populate_by_name=True
    )

    port: int = 8083
    """Port the service listens on."""
