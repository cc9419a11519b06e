"""A restart of the alerts service neither loses nor doubles a firing: killed mid-evaluation,
or with a firing's e-mail in flight, it fires and delivers the incident exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from cormorant.alerts.settings import AlertsSettings
from cormorant.alerts.testing import (
    TRIGGERS_PATH,
    AlertsProcess,
    Mailbox,
    Metrics,
    evaluation_held,
    eventually,
    trigger_body,
)
from cormorant.common.db import asyncpg_dsn

PATH = TRIGGERS_PATH
TRIGGER = trigger_body(min_events=2)


@pytest.fixture
def alerts(settings: AlertsSettings, tmp_path: Path) -> Iterator[AlertsProcess]:
    """The service as a real process (started by the test)."""
    process = AlertsProcess(settings, tmp_path / "alerts.log")
    try:
        yield process
    finally:
        process.stop()


async def firings(alerts: AlertsProcess, trigger_id: str) -> list[dict[str, Any]]:
    """The trigger's firings."""
    async with httpx.AsyncClient(base_url=alerts.url, auth=alerts.auth) as http:
        answer = await http.get(f"/api/v1/triggers/{trigger_id}/firings")
    found: list[dict[str, Any]] = answer.json()["firings"]
    return found


async def create(alerts: AlertsProcess) -> str:
    """A new trigger; its id."""
    async with httpx.AsyncClient(base_url=alerts.url, auth=alerts.auth) as http:
        answer = await http.post(PATH, json=TRIGGER)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def delivered_once(alerts: AlertsProcess, trigger_id: str, mailbox: Mailbox) -> None:
    """Wait for the firing's delivery; then one firing, one e-mail, of that firing."""

    async def delivered() -> bool:
        found = await firings(alerts, trigger_id)
        return bool(found) and found[0]["status"] == "delivered"

    await eventually(delivered, within=60, what="the firing delivered after the restart")
    [firing] = await firings(alerts, trigger_id)
    assert mailbox.firings() == [firing["id"]]
    assert firing["values"] == [0.5, 0.4]


async def test_killed_mid_evaluation(
    settings: AlertsSettings, alerts: AlertsProcess, metrics: Metrics, mailbox: Mailbox
) -> None:
    """Killed while evaluating (the trigger's state locked, the values being read): the
    evaluation is redone after the restart and fires once."""
    await alerts.start()
    trigger_id = await create(alerts)
    await metrics.log("accuracy", 0.5, 0.4)
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        async with evaluation_held(conn, within=30):
            alerts.kill()
    finally:
        await conn.close()
    assert mailbox.messages == []
    await alerts.start()
    await delivered_once(alerts, trigger_id, mailbox)


async def test_killed_with_a_firing_in_flight(
    alerts: AlertsProcess, metrics: Metrics, mailbox: Mailbox
) -> None:
    """Killed while the firing's e-mail is in flight (the SMTP server has not accepted it):
    after the restart the same firing is delivered, and no second firing is recorded."""
    await alerts.start()
    trigger_id = await create(alerts)
    mailbox.hold()
    await metrics.log("accuracy", 0.5, 0.4)

    async def in_flight() -> bool:
        return mailbox.in_flight == 1

    await eventually(in_flight, within=30, what="the e-mail in flight")
    [firing] = await firings(alerts, trigger_id)
    alerts.kill()
    mailbox.release()  # the interrupted delivery is refused, never accepted
    await alerts.start()
    await delivered_once(alerts, trigger_id, mailbox)
    [after] = await firings(alerts, trigger_id)
    assert after["id"] == firing["id"]
    assert after["attempts"] == 1  # the killed attempt's count was never committed
