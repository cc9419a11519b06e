"""Settings of the triggers (prefix ``CORMORANT_ALERTS_``): SMTP, webhook, flow and evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from cormorant.common.settings import ServiceSettings


class TriggerSettings(ServiceSettings):
    """What the triggers need on top of a service's settings; ``AlertsSettings`` extends it."""

    smtp_host: str = "127.0.0.1"
    """SMTP server that e-mail actions are sent through."""

    smtp_port: int = Field(default=25, gt=0, lt=65536)
    """Port of the SMTP server."""

    smtp_security: Literal["none", "starttls", "tls"] = "none"
    """``starttls`` upgrades a plain connection, ``tls`` connects with TLS from the start."""

    smtp_username: str | None = None
    """SMTP login; none: send without authenticating."""

    smtp_password: SecretStr | None = None
    """Password of ``smtp_username``."""

    smtp_sender: str = "cormorant@localhost"
    """``From`` address of the e-mails triggers send."""

    smtp_timeout_s: float = Field(default=30.0, gt=0)
    """Seconds one SMTP delivery may take."""

    webhook_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds a webhook receiver has to answer one POST."""

    delivery_attempts: int = Field(default=8, ge=1)
    """Attempts at a firing's action before it is marked failed."""

    retry_backoff_s: float = Field(default=1.0, gt=0)
    """Wait before the second attempt; it doubles with each attempt after."""

    retry_backoff_max_s: float = Field(default=300.0, gt=0)
    """Longest wait between two attempts."""

    deliverers: int = Field(default=4, ge=1)
    """Firings one replica delivers at the same time."""

    evaluation_tick_s: float = Field(default=0.25, gt=0)
    """Longest wait between two looks for due triggers (they are also woken when one is due)."""

    evaluation_batch: int = Field(default=100, ge=1)
    """Due triggers one replica evaluates in one transaction."""

    max_values_per_evaluation: int = Field(default=10_000, ge=1)
    """Metric values one evaluation reads; the rest are read by the next one."""

    gateway_url: str | None = None
    """Public URL of the platform (the gateway): flows and flow actions call its API, e-mails
    link to it; unset, flows call ``http://127.0.0.1:8080``."""

    api_key: SecretStr | None = None
    """Admin key flows and flow actions call the API with (the local stack passes its bootstrap
    key); without it flow triggers are refused."""

    startup_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for PostgreSQL and NATS at start-up before giving up."""
