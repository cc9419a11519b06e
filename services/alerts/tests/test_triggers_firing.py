"""Evaluation and delivery: a trigger fires once per incident, by e-mail or signed webhook,
with retries; one evaluator per trigger across replicas."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import nats
from sqlalchemy import text

from cormorant.alerts.settings import AlertsSettings
from cormorant.alerts.testing import (
    SLUG,
    TRIGGERS_PATH,
    Mailbox,
    Metrics,
    WebhookReceiver,
    eventually,
    running,
)
from cormorant.alerts.testing import trigger_body as trigger
from cormorant.alerts.triggers.evaluator import Evaluator
from cormorant.alerts.triggers.metrics import TriggerMetrics
from cormorant.alerts.triggers.webhook import verify
from cormorant.common.db import create_engine, session_factory
from cormorant.common.events import AlertFired, decode
from cormorant.common.telemetry import new_registry

PATH = TRIGGERS_PATH


async def evaluations(client: httpx.AsyncClient, trigger_id: str) -> int:
    """How many evaluations the trigger has had."""
    found = (await client.get(f"/api/v1/triggers/{trigger_id}")).json()
    return int(found["state"]["evaluations"])


async def firings(client: httpx.AsyncClient, trigger_id: str) -> list[dict[str, Any]]:
    """The trigger's firings, newest first."""
    answer = await client.get(f"/api/v1/triggers/{trigger_id}/firings")
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["firings"]
    return found


async def after_evaluations(client: httpx.AsyncClient, trigger_id: str, count: int) -> None:
    """Wait until ``count`` more evaluations happened."""
    start = await evaluations(client, trigger_id)

    async def done() -> bool:
        return await evaluations(client, trigger_id) >= start + count

    await eventually(done, within=30, what=f"{count} more evaluations")


async def test_drift_below_threshold_sends_one_email(
    client: httpx.AsyncClient, metrics: Metrics, mailbox: Mailbox, nats_url: str
) -> None:
    """Three low values over evaluations fire one e-mail with endpoint, tag, values and
    severity; an AlertFired event is published; the cool-down keeps the incident at one."""
    nc = await nats.connect(nats_url)
    events = await nc.subscribe(AlertFired.subject_filter())
    created = (await client.post(PATH, json=trigger())).json()
    tid = created["id"]
    for value in (0.75, 0.7, 0.65):
        await metrics.log("accuracy", value)
        await after_evaluations(client, tid, 1)

    async def mailed() -> bool:
        return len(mailbox.messages) >= 1

    await eventually(mailed, within=30, what="the e-mail")
    # The incident goes on; the cool-down (3 s) keeps it from firing again meanwhile.
    await metrics.log("accuracy", 0.5, 0.4)
    await after_evaluations(client, tid, 1)
    [firing] = await firings(client, tid)
    assert firing["status"] == "delivered"
    assert firing["values"] == [0.75, 0.7, 0.65]
    [message] = mailbox.messages
    assert message["To"] == "team@example.org"
    assert SLUG in message["Subject"]
    assert "CRITICAL" in message["Subject"]
    raw = message.get_payload(decode=True)
    assert isinstance(raw, bytes)
    content = raw.decode()
    for part in (f"Endpoint:  {SLUG}", "Tag:       accuracy", "accuracy < 0.8", "critical"):
        assert part in content
    assert "0.75, 0.7, 0.65" in content
    assert message["Message-ID"] == f"<{firing['id']}@cormorant>"

    msg = await events.next_msg(timeout=10)
    event = decode(msg.data, msg.headers)
    assert isinstance(event, AlertFired)
    assert (event.endpoint, event.metric, event.severity) == (SLUG, "accuracy", "critical")
    assert event.values == [0.75, 0.7, 0.65]
    assert event.event_id == firing["id"].replace("-", "")
    await nc.close()

    shown = (await client.get(f"/api/v1/triggers/{tid}")).json()
    assert shown["last_fired_at"] is not None
    scrape = (await client.get("/metrics")).text
    assert 'cormorant_alerts_firings_total{action="email",severity="critical"} 1.0' in scrape
    assert 'cormorant_alerts_deliveries_total{action="email",outcome="delivered"} 1.0' in scrape


async def test_it_rearms_after_the_cooldown_and_resets_on_recovery(
    client: httpx.AsyncClient, metrics: Metrics, mailbox: Mailbox
) -> None:
    """A good value resets the count; after the cool-down a new incident fires again."""
    tid = (await client.post(PATH, json=trigger(min_events=2, cooldown="1s"))).json()["id"]
    await metrics.log("accuracy", 0.7)
    await after_evaluations(client, tid, 1)
    await metrics.log("accuracy", 0.95)  # recovered: the count starts over
    await after_evaluations(client, tid, 1)
    await metrics.log("accuracy", 0.7)
    await after_evaluations(client, tid, 1)
    assert await firings(client, tid) == []
    shown = (await client.get(f"/api/v1/triggers/{tid}")).json()
    assert shown["state"]["streak"] == 1
    assert shown["state"]["last_evaluation"]["outcome"] == "counting"

    await metrics.log("accuracy", 0.6)
    await after_evaluations(client, tid, 1)
    assert len(await firings(client, tid)) == 1
    await after_evaluations(client, tid, 2)  # the cool-down is over
    await metrics.log("accuracy", 0.1, 0.2)
    await after_evaluations(client, tid, 1)

    async def two() -> bool:
        return len(mailbox.messages) == 2

    await eventually(two, within=30, what="the second incident's e-mail")
    assert [f["values"] for f in await firings(client, tid)] == [[0.1, 0.2], [0.7, 0.6]]


async def test_webhook_gets_one_signed_post(
    client: httpx.AsyncClient, metrics: Metrics, receiver: WebhookReceiver
) -> None:
    """The receiver gets one JSON POST whose HMAC-SHA256 signature verifies with the secret."""
    created = (
        await client.post(PATH, json=trigger(min_events=1, action={"webhook": receiver.url}))
    ).json()
    secret = created["secret"]
    await metrics.log("accuracy", 0.5)

    async def posted() -> bool:
        return bool(receiver.received)

    await eventually(posted, within=30, what="the webhook POST")
    await after_evaluations(client, created["id"], 1)
    [post] = receiver.received
    assert post.path == "/hook"
    assert verify(secret, post.body, post.headers["X-Cormorant-Signature"])
    assert not verify(
        "another secret of some length", post.body, post.headers["X-Cormorant-Signature"]
    )
    payload = post.json()
    assert (payload["endpoint"], payload["tag"], payload["values"]) == (SLUG, "accuracy", [0.5])
    assert payload["severity"] == "critical"
    assert post.headers["X-Cormorant-Firing"] == payload["firing_id"]
    [firing] = await firings(client, created["id"])
    assert firing["result"] == {"status": 200}


async def test_webhook_failures_are_retried_with_backoff(
    client: httpx.AsyncClient, metrics: Metrics, receiver: WebhookReceiver
) -> None:
    """Two 503s, then 200: delivered at the third attempt, every attempt the same firing."""
    receiver.statuses.extend([503, 503])
    tid = (
        await client.post(PATH, json=trigger(min_events=1, action={"webhook": receiver.url}))
    ).json()["id"]
    await metrics.log("accuracy", 0.5)

    async def delivered() -> bool:
        found = await firings(client, tid)
        return bool(found) and found[0]["status"] == "delivered"

    await eventually(delivered, within=30, what="delivery after the retries")
    [firing] = await firings(client, tid)
    assert firing["attempts"] == 3
    assert len(receiver.received) == 3
    assert {p.headers["X-Cormorant-Firing"] for p in receiver.received} == {firing["id"]}


async def test_a_refused_webhook_fails_without_retrying(
    client: httpx.AsyncClient, metrics: Metrics, receiver: WebhookReceiver
) -> None:
    """A 400 is the receiver's final word: the firing is failed with the reason."""
    receiver.statuses.append(400)
    tid = (
        await client.post(PATH, json=trigger(min_events=1, action={"webhook": receiver.url}))
    ).json()["id"]
    await metrics.log("accuracy", 0.5)

    async def failed() -> bool:
        found = await firings(client, tid)
        return bool(found) and found[0]["status"] == "failed"

    await eventually(failed, within=30, what="the failed firing")
    [firing] = await firings(client, tid)
    assert firing["attempts"] == 1
    assert "400" in firing["error"]


async def test_a_trigger_held_by_one_evaluator_is_passed_by_the_others(
    settings: AlertsSettings, metrics: Metrics
) -> None:
    """While one replica holds a trigger's state (mid-evaluation), another's evaluator passes
    it by, and evaluates it once the hold ends."""
    async with running(settings) as client:
        tid = (await client.post(PATH, json=trigger(min_events=1))).json()["id"]
    engine = create_engine(settings.database_url)
    evaluator = Evaluator(
        session_factory(engine),
        TriggerMetrics(new_registry()),
        tick=0.05,
        batch=10,
        max_values=100,
        on_fired=asyncio.Event(),
    )
    try:
        await metrics.log("accuracy", 0.5)
        async with engine.connect() as conn, conn.begin():
            await conn.execute(
                text(
                    "UPDATE trigger_states SET next_evaluation_at = now()"
                    " WHERE trigger_id = :id RETURNING 1"
                ),
                {"id": tid},
            )
            assert await evaluator.evaluate_due() == 0
        assert await evaluator.evaluate_due() == 1
        assert evaluator.on_fired.is_set()
        assert await evaluator.evaluate_due() == 0  # not due again for a second
    finally:
        await engine.dispose()


async def test_two_replicas_fire_an_incident_once(
    settings: AlertsSettings, metrics: Metrics, mailbox: Mailbox
) -> None:
    """Two replicas evaluating the same triggers: each incident is one firing, one e-mail."""
    async with running(settings) as first, running(settings) as second:
        ids = [
            (await first.post(PATH, json=trigger(min_events=2, title=f"t{n}"))).json()["id"]
            for n in range(3)
        ]
        await metrics.log("accuracy", 0.5, 0.4)
        for tid in ids:
            await after_evaluations(second, tid, 2)

        async def mailed() -> bool:
            return len(mailbox.messages) >= 3

        await eventually(mailed, within=30, what="three e-mails")
        for tid in ids:
            await after_evaluations(first, tid, 1)
            assert len(await firings(first, tid)) == 1
        assert len(mailbox.messages) == 3
        assert len(set(mailbox.firings())) == 3
