"""Settings of the Feedback service (environment prefix ``CORMORANT_FEEDBACK_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cormorant.common.settings import ServiceSettings


class FeedbackSettings(ServiceSettings):
    """Settings of the Feedback service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_FEEDBACK_", extra="ignore", populate_by_name=True
    )

    port: int = 8083
    """Port the service listens on."""

    max_upload_bytes: int = Field(default=1 << 30, gt=0)
    """Largest file accepted by an upload to a dataset, in bytes; larger ones get 413."""

    startup_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for PostgreSQL at start-up before giving up."""

    poll_interval_s: float = Field(default=1.0, gt=0)
    """Seconds between two looks for due feedback loops (a new loop is looked at at once)."""

    min_every_s: float = Field(default=60.0, gt=0)
    """Shortest ``every`` interval a feedback loop may have, in seconds."""

    scheduler: bool = True
    """Run due feedback loops in this replica (off: API only; runs on request still work)."""

    publish_events: bool = True
    """Publish ``FeedbackRunFinished`` on NATS (``CORMORANT_NATS_URL``) after each run."""
