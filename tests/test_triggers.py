"""Triggers end to end through the gateway, on a stack of this module's own (its alerts
service gets killed): a model whose logged accuracy drifts below 0.8 for three evaluations
e-mails the team once and calls a webhook once, signed; killed mid-evaluation or with a firing
in flight, the alerts service loses no firing and doubles none; the CLI drives it all."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from cormorant.alerts.testing import Mailbox, evaluation_held, smtp_server, webhook_receiver
from cormorant.alerts.triggers.webhook import verify
from cormorant.common.db import asyncpg_dsn
from cormorant.devstack.testing.waits import eventually
from cormorant.sdk import Client, Endpoint
from tests import test_flows as flows
from tests.conftest import ROOT, Stack, running_stack
from tests.test_flows import RATE, TRAIN

sys.path.insert(0, str(ROOT / "bench"))

from rate_load import RateLoad

# The flows test's retrain flow, its endpoint named apart from the one that test creates.
RETRAIN_FLOW = flows.RETRAIN_FLOW.replace("endpoint: iris flow", "endpoint: iris retrained")

PREDICT = """\
from cormorant.sdk import Endpoint


def predict(accuracy):
    Endpoint().log_metric("accuracy", float(accuracy))
    return accuracy
"""


@pytest.fixture(scope="module")
def mail_server() -> Iterator[tuple[Mailbox, int]]:
    """The SMTP server the stack's alerts service sends through: its mailbox and port."""
    with smtp_server() as server:
        yield server


@pytest.fixture(scope="module")
def mail(mail_server: tuple[Mailbox, int]) -> Mailbox:
    """What the SMTP server accepted."""
    return mail_server[0]


@pytest.fixture(scope="module")
def own_stack(
    tmp_path_factory: pytest.TempPathFactory, mail_server: tuple[Mailbox, int]
) -> Iterator[Stack]:
    """A stack of this module's own, its e-mail going to the module's SMTP server."""
    settings = {
        "CORMORANT_ALERTS_SMTP_PORT": str(mail_server[1]),
        "CORMORANT_ALERTS_EVALUATION_TICK_S": "0.1",
        "CORMORANT_ALERTS_RETRY_BACKOFF_S": "0.2",
    }
    data_dir = tmp_path_factory.mktemp("triggerstack") / "data"
    with running_stack(data_dir, settings, cwd=ROOT) as stack:
        yield stack


@pytest.fixture(scope="module")
def model(own_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Endpoint:
    """A model that logs its input as its accuracy, deployed with the CLI."""
    directory = tmp_path_factory.mktemp("accuracy")
    (directory / "predict.py").write_text(PREDICT)
    result = own_stack.cli("deploy", str(directory), "--name", "drift", "--server", "workers=1")
    assert result.returncode == 0, result.stdout + result.stderr
    slug = result.stdout.split("Endpoint ", 1)[1].split(" created", 1)[0]
    token = result.stdout.split("(shown once):", 1)[1].split()[0]
    return Endpoint(slug, token=token, url=own_stack.url, api_key=own_stack.admin_key)


def create(stack: Stack, slug: str, *args: str) -> dict[str, Any]:
    """``cormorant triggers create SLUG --tag accuracy --lt 0.8 --every 1s ... --json``."""
    result = stack.cli(
        "triggers", "create", slug, "--tag", "accuracy", "--lt", "0.8", "--every", "1s",
        "--json", *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    created: dict[str, Any] = json.loads(result.stdout)
    return created


async def drift(client: Client, model: Endpoint, trigger_id: str, values: list[float]) -> None:
    """Predict each value in turn, each one seen by its own evaluation of the trigger."""
    for value in values:
        start = client.triggers.get(trigger_id)["state"]["evaluations"]
        assert await asyncio.to_thread(model.predict, value) == value

        async def seen(start: int = start) -> bool:
            state = client.triggers.get(trigger_id)["state"]
            last = state["last_evaluation"]
            return bool(state["evaluations"] > start and last.get("new_values"))

        await eventually(seen, within=60, what=f"an evaluation that read {value}")


def firings(client: Client, trigger_id: str) -> list[dict[str, Any]]:
    """The trigger's firings through the API."""
    return client.triggers.firings(trigger_id)


async def delivered(client: Client, trigger_id: str) -> None:
    """Wait until the trigger's newest firing is delivered."""

    async def done() -> bool:
        found = firings(client, trigger_id)
        return bool(found) and found[0]["status"] == "delivered"

    await eventually(done, within=60, what="the firing delivered")


async def test_accuracy_drift_emails_once(own_stack: Stack, model: Endpoint, mail: Mailbox) -> None:
    """Accuracy under 0.8 in three evaluations: one e-mail with endpoint, tag, values and
    severity; the drift going on within the cool-down sends nothing more."""
    assert model.slug is not None
    client = own_stack.client()
    created = create(
        own_stack, model.slug, "--min-events", "3", "--email", "team@example.org",
        "--severity", "critical", "--title", "Accuracy drift", "--cooldown", "10m",
    )  # fmt: skip
    tid = created["id"]
    before = len(mail.messages)
    await drift(client, model, tid, [0.95, 0.7, 0.65, 0.6])
    await delivered(client, tid)
    await drift(client, model, tid, [0.5, 0.4])
    [firing] = firings(client, tid)
    assert firing["values"] == [0.7, 0.65, 0.6]
    [message] = [m for m in mail.messages[before:] if m["X-Cormorant-Firing"] == firing["id"]]
    assert len(mail.messages) == before + 1
    assert model.slug in message["Subject"]
    raw = message.get_payload(decode=True)
    assert isinstance(raw, bytes)
    text = raw.decode()
    for part in (f"Endpoint:  {model.slug}", "Tag:       accuracy", "Severity:  critical"):
        assert part in text
    assert "0.7, 0.65, 0.6" in text
    assert f"/api/v1/triggers/{tid}/firings" in text
    shown = own_stack.cli("triggers", "firings", tid)
    assert shown.returncode == 0, shown.stderr
    assert "delivered" in shown.stdout
    assert own_stack.cli("triggers", "disable", tid).returncode == 0


async def test_webhook_receiver_gets_one_signed_post(own_stack: Stack, model: Endpoint) -> None:
    """The webhook action: one POST whose HMAC-SHA256 signature verifies with the secret."""
    assert model.slug is not None
    client = own_stack.client()
    with webhook_receiver() as receiver:
        created = create(own_stack, model.slug, "--min-events", "2", "--webhook", receiver.url)
        secret = created["secret"]
        await drift(client, model, created["id"], [0.5, 0.4])
        await delivered(client, created["id"])
        await drift(client, model, created["id"], [0.3])
        [post] = receiver.received
    assert verify(secret, post.body, post.headers["X-Cormorant-Signature"])
    payload = post.json()
    assert (payload["endpoint"], payload["tag"], payload["values"]) == (
        model.slug, "accuracy", [0.5, 0.4]
    )  # fmt: skip
    client.triggers.delete(created["id"])


def alerts_pid(stack: Stack) -> int:
    """The alerts service's pid, from the stack file."""
    return int(stack.described()["services"]["alerts"]["pid"])


async def restarted(stack: Stack, old_pid: int) -> None:
    """Wait until the supervisor has the alerts service up again under a new pid."""

    async def up() -> bool:
        try:
            pid = alerts_pid(stack)
        except (json.JSONDecodeError, KeyError, TypeError):  # the file is being rewritten
            return False
        if pid == old_pid:
            return False
        try:
            async with httpx.AsyncClient() as http:
                answer = await http.get(
                    f"{stack.url}/api/v1/triggers",
                    headers={"Authorization": f"Bearer {stack.admin_key}"},
                    timeout=2.0,
                )
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    await eventually(up, within=120, what="alerts restarted")


async def test_killed_mid_evaluation_and_in_flight_fires_once(
    own_stack: Stack, model: Endpoint, mail: Mailbox
) -> None:
    """SIGKILL the alerts service while it evaluates (its read of the values held up), then
    while the firing's e-mail is in flight: after each restart the incident is one firing,
    delivered once."""
    assert model.slug is not None
    client = own_stack.client()
    created = create(own_stack, model.slug, "--min-events", "2", "--email", "ops@example.org")
    tid = created["id"]
    await drift(client, model, tid, [0.5])
    conn = await asyncpg.connect(asyncpg_dsn(own_stack.database_url))
    try:
        await asyncio.to_thread(model.predict, 0.4)

        async def stored() -> bool:
            count = await conn.fetchval(
                "SELECT count(*) FROM metrics m JOIN endpoints e ON e.id = m.endpoint_id"
                " WHERE e.slug = $1 AND m.key = 'accuracy' AND m.value = 0.4",
                model.slug,
            )
            return bool(count)

        await eventually(stored, within=60, what="the value stored")
        mail.hold()  # the delivery after the restart will be in flight
        async with evaluation_held(conn, within=60):
            first = alerts_pid(own_stack)
            os.kill(first, signal.SIGKILL)
    finally:
        await conn.close()
    await restarted(own_stack, first)

    async def in_flight() -> bool:
        return mail.in_flight == 1

    await eventually(in_flight, within=60, what="the e-mail in flight")
    [firing] = firings(client, tid)
    second = alerts_pid(own_stack)
    os.kill(second, signal.SIGKILL)
    mail.release()  # the interrupted delivery is refused, never accepted
    await restarted(own_stack, second)
    await delivered(client, tid)
    [after] = firings(client, tid)
    assert after["id"] == firing["id"]
    assert after["values"] == [0.5, 0.4]
    assert [f for f in mail.firings() if f == firing["id"]] == [firing["id"]]
    client.triggers.delete(tid)


async def test_flow_trigger_retrains_and_rolls_out_while_serving(
    own_stack: Stack, tmp_path: Path
) -> None:
    """A flow trigger: the drift starts a retrain → deploy flow whose rollout policy promotes
    the new version, while a client's predictions all succeed."""
    (tmp_path / "train.py").write_text(TRAIN)
    flow_file = tmp_path / "flow.yaml"
    flow_file.write_text(RETRAIN_FLOW)
    client = own_stack.client()
    first = await asyncio.to_thread(client.flows.run, flow_file, timeout=240)
    assert first["status"] == "succeeded", first
    slug = "iris-retrained"
    unknown = own_stack.cli(
        "triggers", "create", slug, "--tag", "accuracy", "--lt", "0.8", "--flow", "nope"
    )
    assert unknown.returncode == 1
    assert "no flow 'nope'" in unknown.stderr
    created = create(own_stack, slug, "--min-events", "1", "--flow", "retrain-iris")
    assert created["warnings"]  # the model has not logged accuracy yet
    token = client.endpoints.rotate_token(slug)
    load = RateLoad(
        f"{own_stack.url}/api/v1/endpoints/{slug}/predict",
        token,
        RATE,
        body=b'{"input_params": [5.1, 3.5, 1.4, 0.2]}',
    )
    runner = asyncio.ensure_future(load.run(max_seconds=240))
    try:
        # Graded outside the model, as an evaluation job would: through the metrics API.
        monitor = Endpoint(slug, url=own_stack.url, api_key=own_stack.admin_key)
        await asyncio.to_thread(monitor.log_metric, "accuracy", 0.55)
        await delivered(client, created["id"])
        [firing] = firings(client, created["id"])
        run_id = firing["result"]["run_id"]

        async def finished() -> bool:
            run = client.flows.get_run("retrain-iris", run_id)
            return bool(run["status"] in ("succeeded", "failed", "cancelled"))

        await eventually(finished, within=240, what="the flow run the trigger started")
    finally:
        load.stop()
        await runner
    run = client.flows.get_run("retrain-iris", run_id)
    assert run["status"] == "succeeded", run
    traffic = client.rollouts.traffic(slug)
    assert traffic["stable"] == "2"
    assert traffic["rollouts"][0]["status"] == "succeeded"
    failed = [s for s in load.samples if s.failed]
    assert failed == [], f"{len(failed)} failed of {len(load.samples)}: {failed[:5]}"
    assert {s.version for s in load.samples} >= {"2"}
    client.triggers.delete(created["id"])
