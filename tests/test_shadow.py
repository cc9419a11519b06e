"""Shadow traffic through the gateway of the session's stack, as a user drives it.

v1 answers ``live``; v2 answers ``{"shadow": x}``, a value no caller may ever see. With v2
shadowing 100 % of the traffic, every caller gets v1's answer and at least 95 % of the
requests show up a second time in the prediction log, tagged shadow, under the same request
id, with v2's answer. Stopping the shadow stops the mirroring. A shadow version that crashes
on some inputs and hangs on the others neither fails nor holds a caller (the client's own
timeout is far below the shadow's hang). Bad versions and percents are 4xx naming the field.
Counts and bounds only, never times.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cormorant.devstack.testing.models import model_dir
from cormorant.sdk import Client, Endpoint
from cormorant.sdk.client import CormorantAPIError
from tests.conftest import Stack

N = 200
WORKERS_1 = {"workers": 1}
# Longer than any caller waits here (CALLER_TIMEOUT_S): a caller held by the shadow fails.
SHADOW_HANG_S = 20
CALLER_TIMEOUT_S = 8.0


def wait_for(condition: Any, what: str, *, within: float = 90.0) -> Any:
    """Poll ``condition`` until it returns something truthy (a bounded wait for readiness)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {within:g} s")


def shadow_rows(endpoint: Endpoint, ids: set[str]) -> dict[str, dict[str, Any]]:
    """The shadow rows of the prediction log among ``ids``, by request id."""
    items = endpoint.logs(limit=5000, shadow="true")
    return {i["request_id"]: i for i in items if i["request_id"] in ids}


def live_rows(endpoint: Endpoint, ids: set[str]) -> dict[str, dict[str, Any]]:
    """The live rows of the prediction log among ``ids``, by request id."""
    items = endpoint.logs(limit=5000, shadow="false")
    return {i["request_id"]: i for i in items if i["request_id"] in ids}


def predict_all(url: str, token: str, inputs: list[Any]) -> list[httpx.Response]:
    """One predict request per input, each with the caller's own bounded timeout."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=CALLER_TIMEOUT_S, headers=headers) as http:
        return [http.post(url, json={"input_params": x}) for x in inputs]


def test_shadow_traffic_is_logged_never_returned_and_never_holds_a_caller(
    stack: Stack, tmp_path: Path
) -> None:
    """The issue's acceptance for shadow traffic, end to end through the gateway."""
    client: Client = stack.client()
    created = client.endpoints.create(
        "shadowed shop",
        str(model_dir(tmp_path, "v1", "def predict(x):\n    return 'live'\n")),
        server=WORKERS_1,
    )
    slug, token = created["slug"], created["token"]
    client.endpoints.wait_until_running(slug)
    endpoint = Endpoint(slug, token=token, url=stack.url, api_key=stack.admin_key)
    url = f"{stack.url}/api/v1/endpoints/{slug}/predict"
    rollouts = client.rollouts
    v2 = model_dir(tmp_path, "v2", "def predict(x):\n    return {'shadow': x}\n")
    assert rollouts.create_version(slug, v2, server=WORKERS_1)["version"] == "2"

    # Bad requests name the field to fix.
    for body, status, field in (
        ({"version": "2", "percent": 0}, 400, "percent"),
        ({"version": "2", "percent": 101}, 400, "percent"),
        ({"version": "9", "percent": 10}, 404, "version"),
        ({"version": "1", "percent": 10}, 400, "version"),
        ({"percent": 10}, 400, "version"),
    ):
        with pytest.raises(CormorantAPIError) as refused:
            client.request("POST", f"/api/v1/endpoints/{slug}/shadow", json=body)
        assert refused.value.status_code == status, (body, refused.value.message)
        assert field in refused.value.message, (body, refused.value.message)

    started = rollouts.shadow(slug, "2", 100)
    assert (started["version"], started["percent"]) == ("2", 100)
    assert rollouts.get_shadow(slug)["version"] == "2"
    shown = stack.cli("endpoints", "show", slug)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert '"shadow"' in shown.stdout
    assert '"percent": 100' in shown.stdout
    versions = {v["version"]: v["role"] for v in rollouts.traffic(slug)["versions"]}
    assert versions == {"1": "stable", "2": "shadow"}
    # v2 takes no live traffic while it shadows.
    with pytest.raises(CormorantAPIError) as busy:
        rollouts.rollout(slug, "2", 10)
    assert busy.value.status_code == 409

    answers = predict_all(url, token, list(range(N)))
    assert [a.status_code for a in answers] == [200] * N
    assert {a.json()["prediction"] for a in answers} == {"live"}  # 0 shadow answers returned
    assert {a.headers["x-cormorant-version"] for a in answers} == {"1"}
    ids = {a.headers["x-request-id"] for a in answers}
    assert len(ids) == N
    mirrored = wait_for(
        lambda: (rows := shadow_rows(endpoint, ids)) and len(rows) >= 0.95 * N and rows,
        "95 % of the mirrored requests logged tagged shadow",
    )
    assert {row["version"] for row in mirrored.values()} == {"2"}
    assert all(row["output"] == {"shadow": row["input"]} for row in mirrored.values())
    # The same request id links each shadow row to its live row.
    live = wait_for(lambda: (rows := live_rows(endpoint, ids)) and len(rows) == N and rows,
                    "the live rows logged")  # fmt: skip
    assert {row["output"] for row in live.values()} == {"live"}
    assert set(mirrored) <= set(live)

    stopped = stack.cli("endpoints", "shadow", slug, "--stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "no shadow traffic" in stopped.stdout
    after = predict_all(url, token, list(range(50)))
    assert {a.status_code for a in after} == {200}
    after_ids = {a.headers["x-request-id"] for a in after}
    wait_for(lambda: len(live_rows(endpoint, after_ids)) == 50, "the live rows after the stop")
    assert shadow_rows(endpoint, after_ids) == {}

    # A shadow version that raises on odd inputs and hangs on even ones.
    bad = model_dir(
        tmp_path,
        "v3",
        "import time\n\n\ndef predict(x):\n    if x % 2:\n"
        "        raise ValueError('shadow broke')\n"
        f"    time.sleep({SHADOW_HANG_S})\n    return 'late'\n",
    )
    assert rollouts.create_version(slug, bad, server={"workers": 1, "threads": 2})["version"] == "3"
    shadowed = stack.cli("endpoints", "shadow", slug, "--version", "3", "--percent", "100")
    assert shadowed.returncode == 0, shadowed.stdout + shadowed.stderr
    held = predict_all(url, token, list(range(40)))
    assert [a.status_code for a in held] == [200] * 40  # no caller waited for the shadow
    assert {a.json()["prediction"] for a in held} == {"live"}
    held_ids = {a.headers["x-request-id"] for a in held}
    crashed = wait_for(
        lambda: [r for r in shadow_rows(endpoint, held_ids).values() if r["status"] == 500],
        "the crashing shadow's answers logged",
    )
    assert all(r["version"] == "3" and "shadow broke" in r["error"] for r in crashed)
    rollouts.stop_shadow(slug)
    client.endpoints.delete(slug)
