"""Settings of the Feedback service (environment prefix ``CORMORANT_FEEDBACK_``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cormorant.common.datasets import default_datasets_url
from cormorant.common.settings import ServiceSettings


class FeedbackSettings(ServiceSettings):
    """Settings of the Feedback service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_FEEDBACK_", extra="ignore", populate_by_name=True
    )

    port: int = 8083
    """Port the service listens on."""

    datasets_url: str | None = None
    """fsspec URL where dataset files are stored (``s3://bucket/prefix``, ``memory://x``, a
    directory); default ``<data_dir>/datasets``."""

    datasets_storage_options: dict[str, Any] = Field(default_factory=dict)
    """Options for the fsspec filesystem of ``datasets_url`` (a JSON object, e.g.
    ``{"endpoint_url": "http://minio:9000"}`` for S3-compatible storage)."""

    max_upload_bytes: int = Field(default=1 << 30, gt=0)
    """Largest file accepted by an upload to a dataset, in bytes; larger ones get 413."""

    startup_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for PostgreSQL at start-up before giving up."""

    def resolved_datasets_url(self) -> str:
        """``datasets_url``, or the local default under ``data_dir``."""
        return self.datasets_url or default_datasets_url(self.data_dir)
