"""Capacity on demand: a batch endpoint held up while its demand is fresh, 0 once it lapses."""

from __future__ import annotations

from pathlib import Path

from deployer_testkit import DeployerHarness


async def test_a_demand_scales_a_batch_endpoint_up_and_its_lapse_back_to_zero(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """PUT demand starts replicas (at most ``max``); renewing replaces the deadline; once it
    lapses the endpoint is idle at 0 again."""
    created = await deployer.create(
        name="on demand", kind="batch", source=str(model_dir), server={"workers": 1},
        replicas={"max": 1},
    )  # fmt: skip
    slug = created["slug"]
    path = f"/internal/endpoints/{slug}/demand"
    answer = await deployer.client.put(path, json={"replicas": 5, "ttl_s": 60})
    assert answer.status_code == 200, answer.text
    assert answer.json()["desired"] == 1
    await deployer.wait_running(slug, ready=1)
    renewed = await deployer.client.put(path, json={"replicas": 1, "ttl_s": 0.5})
    assert renewed.json()["ready"] == 1
    idle = await deployer.wait_for(
        slug, lambda e: e["status"] == "idle" and e["replicas"]["ready"] == 0, what="idle at 0"
    )
    assert idle["replicas"]["desired"] == 0


async def test_a_demand_on_an_unknown_or_web_endpoint_is_refused(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """404 for an unknown slug, 409 for a web endpoint, 400 for a bad body."""
    missing = await deployer.client.put(
        "/internal/endpoints/nope/demand", json={"replicas": 1, "ttl_s": 5}
    )
    assert missing.status_code == 404
    web = await deployer.create(name="web", source=str(model_dir), server={"workers": 1})
    path = f"/internal/endpoints/{web['slug']}/demand"
    refused = await deployer.client.put(path, json={"replicas": 1, "ttl_s": 5})
    assert refused.status_code == 409
    assert "only batch endpoints" in refused.json()["error"]["message"]
    bad = await deployer.client.put(path, json={"replicas": -1, "ttl_s": 5})
    assert bad.status_code == 400
