"""Progressive delivery through the gateway: a policy's checks on live metrics decide.

A canary whose custom metric (``log_metric`` in its predict code) breaks its check is rolled
back without a human, and the rollout records why; one that passes every check is promoted.
Live traffic comes from ``bench/rate_load.py`` at a low constant rate.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from cormorant.sdk import Client
from tests.conftest import ROOT, Stack

sys.path.insert(0, str(ROOT / "bench"))

from rate_load import RateLoad

RATE = 25.0


def metric_model(root: Path, name: str, quality: float) -> Path:
    """A model that answers ``name`` and logs ``quality`` with every prediction."""
    directory = root / name
    directory.mkdir()
    (directory / "predict.py").write_text(
        "from cormorant.sdk import Endpoint\n\n\n"
        "def predict(x):\n"
        f"    Endpoint().log_metric('quality', {quality})\n"
        f"    return {name!r}\n"
    )
    return directory


async def finished_rollout(client: Client, slug: str, within: float = 90.0) -> dict[str, Any]:
    """The endpoint's latest rollout once it is no longer running."""
    deadline = time.monotonic() + within
    while True:
        traffic = await asyncio.to_thread(client.rollouts.traffic, slug)
        latest: dict[str, Any] = traffic["rollouts"][0]
        if latest["status"] != "running":
            return {**latest, "traffic": traffic}
        assert time.monotonic() < deadline, f"rollout still running: {latest}"
        await asyncio.sleep(0.25)


async def test_policy_rolls_back_a_bad_canary_and_promotes_a_good_one(
    stack: Stack, tmp_path: Path
) -> None:
    """v2 logs quality 0.1 against a check of min 0.5: rolled back at its first step, with the
    reason recorded. v3 logs 0.95 (≥ 0.9× stable) with no errors: promoted after 20 → 100 %.
    No request fails meanwhile."""
    client = stack.client()
    created = client.endpoints.create(
        "graded", str(metric_model(tmp_path, "v1", 0.9)), server={"workers": 1}
    )
    slug = created["slug"]
    client.endpoints.wait_until_running(slug)
    load = RateLoad(f"{stack.url}/api/v1/endpoints/{slug}/predict", created["token"], RATE)
    runner = asyncio.ensure_future(load.run(max_seconds=240))
    try:
        await asyncio.to_thread(
            client.rollouts.create_version, slug, metric_model(tmp_path, "v2", 0.1)
        )
        policy = {
            "steps": [30, 100],
            "interval": "3s",
            "checks": [{"metric": "quality", "min": 0.5}, {"metric": "error_rate", "max": 0.05}],
        }
        started = await asyncio.to_thread(client.rollouts.rollout, slug, "2", policy=policy)
        assert started["weights"] == {"1": 70, "2": 30}
        assert started["rollouts"][0]["status"] == "running"
        bad = await finished_rollout(client, slug)
        assert bad["status"] == "rolled_back"
        assert "quality" in bad["reason"]
        assert "below 0.5" in bad["reason"]
        assert bad["traffic"]["weights"] == {"1": 100}
        assert bad["checks"][0]["results"][0]["passed"] is False
        assert bad["traffic"]["history"][0]["action"] == "rollback"
        assert "quality" in bad["traffic"]["history"][0]["reason"]

        await asyncio.to_thread(
            client.rollouts.create_version, slug, metric_model(tmp_path, "v3", 0.95)
        )
        policy["checks"] = [
            {"metric": "quality", "min_ratio": 0.9},
            {"metric": "error_rate", "max": 0.05},
        ]
        await asyncio.to_thread(client.rollouts.rollout, slug, "3", policy=policy)
        good = await finished_rollout(client, slug)
        assert good["status"] == "succeeded", good
        assert good["traffic"]["stable"] == "3"
        assert good["traffic"]["weights"] == {"3": 100}
        assert [c["percent"] for c in good["checks"]] == [30, 100]
    finally:
        load.stop()
        await runner
    failed = [s for s in load.samples if s.failed]
    assert failed == [], failed[:5]
    client.endpoints.delete(slug)


def test_bad_policies_are_refused_with_a_message(stack: Stack, tmp_path: Path) -> None:
    """Steps that do not increase, an unknown interval, a check without a bound: 400 each."""
    client = stack.client()
    slug = client.endpoints.create("policed", str(metric_model(tmp_path, "v1", 1.0)))["slug"]
    client.endpoints.wait_until_running(slug)
    client.rollouts.create_version(slug, metric_model(tmp_path, "v2", 1.0))
    for policy, words in [
        ({"steps": [50, 10]}, "steps must increase"),
        ({"steps": [10], "interval": "soon"}, "interval"),
        ({"steps": [10], "checks": [{"metric": "quality"}]}, "needs a bound"),
        ({"steps": [10], "bogus": 1}, "bogus"),
    ]:
        response = client._http.post(
            f"/api/v1/endpoints/{slug}/rollout",
            json={"version": "2", "percent": 10, "policy": policy},
        )
        assert response.status_code == 400, response.text
        assert words in response.json()["error"]["message"]
    assert client.rollouts.traffic(slug)["weights"] == {"1": 100}
    client.endpoints.delete(slug)
