"""The triggers API: create, read, change, delete, and clear 4xx answers for bad input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from cormorant.alerts.testing import SLUG, TRIGGERS_PATH, Metrics, eventually, trigger_body

PATH = TRIGGERS_PATH


def body(**changes: Any) -> dict[str, Any]:
    """A valid trigger evaluated every minute, with ``changes``."""
    return trigger_body(**{"every": "1m", **changes})


async def test_create_show_list_update_delete(client: httpx.AsyncClient, metrics: Metrics) -> None:
    """A trigger round-trips through every route; disabling and deleting take effect."""
    await metrics.log("accuracy", 0.9)
    created = await client.post(PATH, json=body())
    assert created.status_code == 201, created.text
    trigger = created.json()
    assert trigger["warnings"] == []
    assert trigger["secret"] is None
    assert trigger["endpoint"] == SLUG
    assert (trigger["tag"], trigger["comparison"], trigger["value"]) == ("accuracy", "lt", 0.8)
    assert (trigger["every"], trigger["every_seconds"], trigger["min_events"]) == ("1m", 60, 3)
    assert trigger["cooldown_seconds"] == 180  # every × min_events
    assert trigger["state"]["streak"] == 0

    shown = (await client.get(f"/api/v1/triggers/{trigger['id']}")).json()
    assert shown["title"] == "Accuracy dropped"
    assert shown["severity"] == "critical"
    listed = (await client.get(PATH)).json()["triggers"]
    assert [t["id"] for t in listed] == [trigger["id"]]
    assert [t["id"] for t in (await client.get("/api/v1/triggers")).json()["triggers"]] == [
        trigger["id"]
    ]

    patched = await client.patch(
        f"/api/v1/triggers/{trigger['id']}", json={"enabled": False, "every": "30s"}
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["enabled"], patched.json()["every"]) == (False, "30s")

    assert (await client.delete(f"/api/v1/triggers/{trigger['id']}")).status_code == 204
    gone = await client.get(f"/api/v1/triggers/{trigger['id']}")
    assert gone.status_code == 404
    assert (await client.get(PATH)).json()["triggers"] == []


async def test_a_tag_never_logged_is_accepted_with_a_warning(client: httpx.AsyncClient) -> None:
    """The spec wants the exact tag; one the endpoint never logged is named in a warning."""
    created = await client.post(PATH, json=body(tag="acuracy"))
    assert created.status_code == 201, created.text
    [warning] = created.json()["warnings"]
    assert "'acuracy'" in warning
    assert SLUG in warning


async def test_a_webhook_trigger_gets_a_secret_shown_once(client: httpx.AsyncClient) -> None:
    """A generated signing secret is in the creation answer only; a given one is kept."""
    created = (await client.post(PATH, json=body(action={"webhook": "http://x.test/h"}))).json()
    assert len(created["secret"]) >= 32
    assert created["action"] == {"webhook": "http://x.test/h"}
    shown = (await client.get(f"/api/v1/triggers/{created['id']}")).json()
    assert shown["secret"] is None
    assert "secret" not in shown["action"]
    mine = "s" * 20
    given = await client.post(PATH, json=body(action={"webhook": "https://x.test", "secret": mine}))
    assert given.json()["secret"] == mine


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"value": "high"}, "value"),
        ({"every": "0.5s"}, "every"),
        ({"every": "soon"}, "every"),
        ({"min_events": 0}, "min_events"),
        ({"comparison": ">="}, "comparison"),
        ({"severity": "loud"}, "severity"),
        ({"action": {"email": ["not-an-address"]}}, "email"),
        ({"action": {"webhook": "ftp://x.test/h"}}, "webhook"),
        ({"action": {"webhook": "http://x.test/h", "secret": "short"}}, "secret"),
        ({"action": {"email": ["a@x.org"], "webhook": "http://x.test"}}, "action"),
        ({"action": {"page": "me"}}, "action"),
        ({"action": {"flow": "retrain"}}, "flow"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    client: httpx.AsyncClient, changes: dict[str, Any], field: str
) -> None:
    """Each bad field gets a 400 whose message names it; nothing is stored."""
    answer = await client.post(PATH, json=body(**changes))
    assert answer.status_code == 400, answer.text
    assert field in answer.json()["error"]["message"]
    assert (await client.get(PATH)).json()["triggers"] == []


async def test_unknown_endpoint_and_trigger_are_404(client: httpx.AsyncClient) -> None:
    """A slug or trigger id that names nothing is a 404 saying where to look."""
    answer = await client.post("/api/v1/endpoints/nope/triggers", json=body())
    assert answer.status_code == 404
    assert "nope" in answer.json()["error"]["message"]
    for path in ("/api/v1/triggers/xyz", "/api/v1/triggers/xyz/firings"):
        missing = await client.get(path)
        assert missing.status_code == 404
        assert "UUID" in missing.json()["error"]["message"]
    unknown = await client.delete("/api/v1/triggers/00000000-0000-0000-0000-000000000000")
    assert unknown.status_code == 404


async def test_a_new_condition_rearms_and_enabling_counts_from_now(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    """Changing the threshold starts the count afresh; values logged while a trigger was
    disabled are not counted once it is enabled again."""
    created = (await client.post(PATH, json=body(every="1s", min_events=5))).json()
    path = f"/api/v1/triggers/{created['id']}"
    await metrics.log("accuracy", 0.5, 0.5)

    async def counted() -> bool:
        return int((await client.get(path)).json()["state"]["streak"]) == 2

    await eventually(counted, within=30, what="two values counted")
    changed = (await client.patch(path, json={"value": 0.6})).json()
    assert (changed["value"], changed["state"]["streak"]) == (0.6, 0)

    assert (await client.patch(path, json={"enabled": False})).json()["enabled"] is False
    await metrics.log("accuracy", 0.1, 0.1, 0.1)
    enabled = (await client.patch(path, json={"enabled": True})).json()
    start = enabled["state"]["evaluations"]

    async def evaluated() -> bool:
        return int((await client.get(path)).json()["state"]["evaluations"]) > start

    await eventually(evaluated, within=30, what="an evaluation after enabling")
    state = (await client.get(path)).json()["state"]
    assert state["streak"] == 0
    assert state["last_evaluation"]["new_values"] == 0
