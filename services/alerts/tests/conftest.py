"""Fixtures of the Alerts tests: a migrated database with an endpoint, real NATS, a real SMTP
server and webhook receiver, and the service run in-process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from cormorant.alerts.settings import AlertsSettings
from cormorant.alerts.testing import (
    Mailbox,
    Metrics,
    WebhookReceiver,
    running,
    smtp_server,
    webhook_receiver,
)
from cormorant.common.internal import generate_internal_secret
from cormorant.common.ports import free_port


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server: its mailbox and port."""
    with smtp_server() as server:
        yield server


@pytest.fixture
def mailbox(smtp: tuple[Mailbox, int]) -> Mailbox:
    """What the SMTP server received."""
    return smtp[0]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A real HTTP server recording webhook POSTs."""
    with webhook_receiver() as server:
        yield server


@pytest.fixture
def settings(
    tmp_path: Path,
    nats_url: str,
    migrated_url: str,
    smtp: tuple[Mailbox, int],
    endpoint_id: uuid.UUID,
) -> AlertsSettings:
    """The service's settings for this test's servers, with short ticks and backoffs; the
    public API its flows would call is not running (exec-only flows)."""
    return AlertsSettings(
        data_dir=tmp_path / "data",
        internal_secret=generate_internal_secret(),
        gateway_url=f"http://127.0.0.1:{free_port()}",
        api_key="cmk_test",
        nats_url=nats_url,
        database_url=migrated_url,
        smtp_port=smtp[1],
        evaluation_tick_s=0.05,
        retry_backoff_s=0.05,
        log_json=False,
    )


@pytest.fixture
async def client(settings: AlertsSettings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the service running in-process."""
    async with running(settings) as http:
        yield http


@pytest.fixture
def metrics(migrated_url: str, endpoint_id: uuid.UUID) -> Metrics:
    """Stores metric values of ``iris``."""
    return Metrics(migrated_url, endpoint_id)


@pytest.fixture
def alerts(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The flows tests' name for the client of the running service."""
    return client
