"""The e-mail action with SMTP credentials and a configured sender, at a real aiosmtpd server
that checks the login."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from cormorant.alerts.settings import AlertsSettings
from cormorant.alerts.testing import (
    TRIGGERS_PATH,
    Mailbox,
    Metrics,
    eventually,
    running,
    smtp_server,
)

PATH = TRIGGERS_PATH
TRIGGER = {
    "title": "Latency up",
    "tag": "latency",
    "comparison": "gt",
    "value": 100,
    "every": "1s",
    "action": {"email": ["ops@example.org", "team@example.org"]},
}


@pytest.fixture
def login_smtp() -> Iterator[tuple[Mailbox, int]]:
    """An SMTP server that wants the login ``alerts`` / ``s3cret``."""
    with smtp_server(login=("alerts", "s3cret")) as server:
        yield server


async def fire(settings: AlertsSettings, metrics: Metrics) -> dict[str, Any]:
    """Create the trigger, log a value over it, and return its settled firing."""
    async with running(settings) as client:
        tid = (await client.post(PATH, json=TRIGGER)).json()["id"]
        await metrics.log("latency", 250.0)

        async def settled() -> bool:
            found = (await client.get(f"/api/v1/triggers/{tid}/firings")).json()["firings"]
            return bool(found) and found[0]["status"] != "pending"

        await eventually(settled, within=30, what="the firing settled")
        [firing] = (await client.get(f"/api/v1/triggers/{tid}/firings")).json()["firings"]
        result: dict[str, Any] = firing
        return result


async def test_credentials_and_sender_are_used(
    settings: AlertsSettings, metrics: Metrics, login_smtp: tuple[Mailbox, int]
) -> None:
    """With the server's login the e-mail goes out from the configured sender to everyone."""
    mailbox, port = login_smtp
    configured = settings.model_copy(
        update={
            "smtp_port": port,
            "smtp_username": "alerts",
            "smtp_password": SecretStr("s3cret"),
            "smtp_sender": "cormorant@example.org",
        }
    )
    firing = await fire(configured, metrics)
    assert firing["status"] == "delivered", firing
    [message] = mailbox.messages
    assert mailbox.logins == ["alerts"]
    assert message["From"] == "cormorant@example.org"
    assert message["To"] == "ops@example.org, team@example.org"
    assert "latency > 100" in message["Subject"]


async def test_a_refused_login_fails_the_firing_with_the_reason(
    settings: AlertsSettings, metrics: Metrics, login_smtp: tuple[Mailbox, int]
) -> None:
    """A wrong password is the server's final word (5xx): failed at once, the reason kept."""
    mailbox, port = login_smtp
    configured = settings.model_copy(
        update={"smtp_port": port, "smtp_username": "alerts", "smtp_password": SecretStr("wrong")}
    )
    firing = await fire(configured, metrics)
    assert firing["status"] == "failed"
    assert firing["attempts"] == 1
    assert "535" in firing["error"]
    assert mailbox.messages == []
