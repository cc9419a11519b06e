"""Versions, canary shares, promote and rollback in the deployer, against real workers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import nats
from deployer_testkit import DeployerHarness

from cormorant.common.handshake import GENERATION_SUBJECT, GenerationQuery, GenerationReport
from cormorant.devstack.testing.waits import eventually

WORKERS_1 = {"workers": 1}


def model(tmp_path: Path, name: str, answer: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "predict.py").write_text(f"def predict(x):\n    return {answer!r}\n")
    return directory


async def answer_of(url: str, headers: dict[str, str]) -> Any:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{url}/predict", json={"input_params": 1}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["prediction"]


async def traffic(deployer: DeployerHarness, slug: str) -> dict[str, Any]:
    response = await deployer.client.get(f"/api/v1/endpoints/{slug}/traffic")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def version(document: dict[str, Any], label: str) -> dict[str, Any]:
    [found] = [v for v in document["versions"] if v["version"] == label]
    return found


async def ready_versions(deployer: DeployerHarness, slug: str) -> set[str]:
    return {r["version"] for r in (await deployer.route(slug))["replicas"]}


async def test_version_canary_promote_then_rollback_with_bad_input_refused(
    deployer: DeployerHarness, tmp_path: Path
) -> None:
    """A user adds v2 (no traffic), sends it 10 % then 50 %, promotes it (v1 retires), adds v3,
    gives it 25 % and rolls back to v2 (v3 retires). Every bad call is a 4xx that changes
    nothing."""
    slug = (
        await deployer.create(
            name="shop", source=str(model(tmp_path, "v1", "one")), server=WORKERS_1
        )
    )["slug"]
    await deployer.wait_running(slug)
    client = deployer.client

    created = await client.post(
        f"/api/v1/endpoints/{slug}/versions", json={"source": str(model(tmp_path, "v2", "two"))}
    )
    assert created.status_code == 201, created.text
    assert created.json()["version"] == "2"
    assert created.json()["weight"] == 0
    await eventually(lambda: _truthy(ready_versions(deployer, slug), {"1", "2"}), what="v2 ready")
    before = await traffic(deployer, slug)
    assert before["weights"] == {"1": 100}
    assert before["stable"] == "1"
    assert before["canary"] is None

    # Bad input: nothing changes.
    for body, status, words in [
        ({"version": "9", "percent": 10}, 404, "not running"),
        ({"version": "2", "percent": 0}, 400, "percent"),
        ({"version": "2", "percent": 101}, 400, "percent"),
        ({"version": "1", "percent": 10}, 400, "stable version"),
    ]:
        refused = await client.post(f"/api/v1/endpoints/{slug}/rollout", json=body)
        assert refused.status_code == status, refused.text
        assert words in refused.json()["error"]["message"]
    nothing = await client.post(f"/api/v1/endpoints/{slug}/promote")
    assert nothing.status_code == 409
    assert "nothing to promote" in nothing.text
    missing = await client.post(
        "/api/v1/endpoints/nope/rollout", json={"version": "2", "percent": 5}
    )
    assert missing.status_code == 404
    assert (await traffic(deployer, slug))["generation"] == before["generation"]

    ten = await client.post(
        f"/api/v1/endpoints/{slug}/rollout", json={"version": "2", "percent": 10}
    )
    assert ten.status_code == 200, ten.text
    assert ten.json()["weights"] == {"1": 90, "2": 10}
    assert ten.json()["canary"] == "2"
    fifty = (
        await client.post(f"/api/v1/endpoints/{slug}/rollout", json={"version": "2", "percent": 50})
    ).json()
    assert fifty["weights"] == {"1": 50, "2": 50}
    assert fifty["generation"] == before["generation"] + 2
    route = await deployer.route(slug)
    assert route["weights"] == {"1": 50, "2": 50}

    promoted = (await client.post(f"/api/v1/endpoints/{slug}/promote")).json()
    assert promoted["weights"] == {"2": 100}
    assert promoted["stable"] == "2"
    await eventually(lambda: _truthy(ready_versions(deployer, slug), {"2"}), what="v1 gone")
    [replica] = (await deployer.route(slug))["replicas"]
    assert await answer_of(replica["url"], deployer.replica_headers(replica)) == "two"
    endpoint = await deployer.wait_running(slug)
    assert endpoint["version"] == "2"
    retired = await eventually(lambda: _status(deployer, slug, "1", "retired"), what="v1 retired")
    assert retired["replicas"] == []
    nothing_back = await client.post(f"/api/v1/endpoints/{slug}/rollback")
    assert nothing_back.status_code == 409
    assert "nothing to roll back" in nothing_back.text

    third = await client.post(
        f"/api/v1/endpoints/{slug}/versions", json={"source": str(model(tmp_path, "v3", "three"))}
    )
    assert third.json()["version"] == "3"
    quarter = await client.post(
        f"/api/v1/endpoints/{slug}/rollout", json={"version": "3", "percent": 25}
    )
    assert quarter.json()["weights"] == {"2": 75, "3": 25}
    back = (await client.post(f"/api/v1/endpoints/{slug}/rollback")).json()
    assert back["weights"] == {"2": 100}
    await eventually(lambda: _status(deployer, slug, "3", "retired"), what="v3 retired")
    assert await ready_versions(deployer, slug) == {"2"}
    final = await traffic(deployer, slug)
    assert [h["action"] for h in final["history"]][:5] == [
        "rollback", "rollout", "promote", "rollout", "rollout"
    ]  # fmt: skip


async def test_canary_that_never_becomes_ready_gets_no_traffic(
    deployer: DeployerHarness, tmp_path: Path
) -> None:
    """A version whose model cannot import: the rollout answers 409 with the reason, the
    weights stay on the stable version, the failure is recorded, its replicas stop."""
    slug = (
        await deployer.create(
            name="safe", source=str(model(tmp_path, "v1", "one")), server=WORKERS_1
        )
    )["slug"]
    await deployer.wait_running(slug)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "predict.py").write_text(
        'raise RuntimeError("weights missing")\n\ndef predict(x):\n    return x\n'
    )
    created = await deployer.client.post(
        f"/api/v1/endpoints/{slug}/versions", json={"source": str(broken)}
    )
    assert created.status_code == 201, created.text
    refused = await deployer.client.post(
        f"/api/v1/endpoints/{slug}/rollout", json={"version": "2", "percent": 10}
    )
    assert refused.status_code == 409, refused.text
    assert "weights missing" in refused.json()["error"]["message"]
    document = await traffic(deployer, slug)
    assert document["weights"] == {"1": 100}
    assert document["rollouts"][0]["status"] == "failed"
    assert "weights missing" in document["rollouts"][0]["reason"]
    assert version(document, "2")["status"] in ("failed", "retired")
    await eventually(lambda: _status(deployer, slug, "2", "retired"), what="v2 retired")
    assert (await deployer.get(slug))["status"] == "running"


async def test_old_version_stops_only_after_the_gateway_applied_the_generation(
    deployer: DeployerHarness, tmp_path: Path, nats_url: str
) -> None:
    """A gateway that still routes by an older generation (or has requests in flight to v1)
    keeps v1's replicas up; once it reports the promote's generation they stop."""
    slug = (
        await deployer.create(name="hs", source=str(model(tmp_path, "v1", "one")), server=WORKERS_1)
    )["slug"]
    await deployer.wait_running(slug)
    applied = {"generation": 1}
    nc = await nats.connect(nats_url)

    async def answer(msg: Any) -> None:
        query = GenerationQuery.model_validate_json(msg.data)
        report = GenerationReport(
            gateway="test", endpoint=query.endpoint, generation=applied["generation"]
        )
        await msg.respond(report.model_dump_json().encode())

    await nc.subscribe(GENERATION_SUBJECT, cb=answer)
    try:
        await deployer.client.post(
            f"/api/v1/endpoints/{slug}/versions", json={"source": str(model(tmp_path, "v2", "two"))}
        )
        await deployer.client.post(
            f"/api/v1/endpoints/{slug}/rollout", json={"version": "2", "percent": 50}
        )
        promoted = (await deployer.client.post(f"/api/v1/endpoints/{slug}/promote")).json()
        # The handshake asks, sees generation 1, asks again: v1 stays routable meanwhile.
        await asyncio.sleep(1.5)  # a bounded wait for something that must NOT happen
        assert "1" in await ready_versions(deployer, slug)
        applied["generation"] = promoted["generation"]
        await eventually(lambda: _truthy(ready_versions(deployer, slug), {"2"}), what="v1 gone")
    finally:
        await nc.close()


async def _truthy(values: Any, expected: set[str]) -> bool:
    return bool(await values == expected)


async def _status(
    deployer: DeployerHarness, slug: str, label: str, status: str
) -> dict[str, Any] | None:
    found = version(await traffic(deployer, slug), label)
    return found if found["status"] == status else None


async def test_restart_during_a_canary_keeps_the_stable_version_serving(
    deployer: DeployerHarness, tmp_path: Path
) -> None:
    """A deployer restarted mid-rollout stops the canary's replicas (its share goes back to the
    stable version in the gateways), marks the progressive rollout failed with why, and a
    rollback then resets the weights."""
    slug = (
        await deployer.create(name="rs", source=str(model(tmp_path, "v1", "one")), server=WORKERS_1)
    )["slug"]
    await deployer.wait_running(slug)
    await deployer.client.post(
        f"/api/v1/endpoints/{slug}/versions", json={"source": str(model(tmp_path, "v2", "two"))}
    )
    policy = {"steps": [20, 100], "interval": "10m", "checks": []}
    started = await deployer.client.post(
        f"/api/v1/endpoints/{slug}/rollout", json={"version": "2", "percent": 5, "policy": policy}
    )
    assert started.status_code == 200, started.text
    assert started.json()["weights"] == {"1": 80, "2": 20}
    assert started.json()["rollouts"][0]["status"] == "running"
    await deployer.restart()
    await eventually(lambda: _truthy(ready_versions(deployer, slug), {"1"}), what="v2 stopped")
    document = await traffic(deployer, slug)
    assert document["rollouts"][0]["status"] == "failed"
    assert "restarted" in document["rollouts"][0]["reason"]
    back = await deployer.client.post(f"/api/v1/endpoints/{slug}/rollback")
    assert back.status_code == 200, back.text
    assert back.json()["weights"] == {"1": 100}
    assert (await deployer.get(slug))["status"] == "running"
