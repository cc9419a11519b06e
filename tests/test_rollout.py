"""Model updates under load, through the gateway: not one request fails during a rollout.

Constant-rate load (``bench/rate_load.py``, 60 requests/s here; the bench runs 200/s) runs
through deploy v2 → 10 % → 50 % → promote → deploy v3 → 25 % → rollback, then the rollout of a
version whose replicas never become ready. Counts only, never times.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cormorant.sdk import Client
from cormorant.sdk.client import CormorantAPIError
from tests.conftest import ROOT, Stack

sys.path.insert(0, str(ROOT / "bench"))

from rate_load import RateLoad

RATE = 60.0
# Answers each stage must collect before the sequence moves on: enough to see the split.
PER_STAGE = 120
WORKERS_1 = {"workers": 1}


def model(root: Path, name: str, answer: str) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "predict.py").write_text(f"def predict(x):\n    return {answer!r}\n")
    return directory


async def hold(load: RateLoad, stage: str, count: int = PER_STAGE) -> None:
    """Let ``count`` answers of ``stage`` come in (the load keeps its own pace)."""
    load.stage = stage
    for _ in range(int(count / RATE * 20) + 400):
        if load.count(stage) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"stage {stage}: only {load.count(stage)} answers")


async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A blocking SDK call, off the event loop that runs the load."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_rollout_sequence_under_load_fails_no_request(stack: Stack, tmp_path: Path) -> None:
    """deploy v2 → 10 % → 50 % → promote → v3 → 25 % → rollback, plus a version that never
    becomes ready: 0 failed requests, 0 served by the broken version, and the split shows."""
    client: Client = stack.client()
    created = client.endpoints.create(
        "canary shop", str(model(tmp_path, "v1", "one")), server=WORKERS_1
    )
    slug, token = created["slug"], created["token"]
    client.endpoints.wait_until_running(slug)
    rollouts = client.rollouts
    load = RateLoad(f"{stack.url}/api/v1/endpoints/{slug}/predict", token, RATE)
    runner = asyncio.ensure_future(load.run(max_seconds=240))
    try:
        await hold(load, "v1")
        created_v2 = await call(rollouts.create_version, slug, model(tmp_path, "v2", "two"))
        assert created_v2["version"] == "2"
        await hold(load, "v2 created")
        assert (await call(rollouts.rollout, slug, "2", 10))["weights"] == {"1": 90, "2": 10}
        await hold(load, "10%", 2 * PER_STAGE)
        assert (await call(rollouts.rollout, slug, "2", 50))["weights"] == {"1": 50, "2": 50}
        await hold(load, "50%", 2 * PER_STAGE)
        promoted = await call(rollouts.promote, slug)
        assert promoted["weights"] == {"2": 100}
        await hold(load, "promoted")
        created_v3 = await call(rollouts.create_version, slug, model(tmp_path, "v3", "three"))
        assert created_v3["version"] == "3"
        assert (await call(rollouts.rollout, slug, "3", 25))["weights"] == {"2": 75, "3": 25}
        await hold(load, "25%", 2 * PER_STAGE)
        assert (await call(rollouts.rollback, slug))["weights"] == {"2": 100}
        await hold(load, "rolled back")

        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "predict.py").write_text(
            'raise RuntimeError("weights.bin missing")\n\n\ndef predict(x):\n    return x\n'
        )
        created_v4 = await call(rollouts.create_version, slug, broken)
        assert created_v4["version"] == "4"
        with pytest.raises(CormorantAPIError) as refused:
            await call(rollouts.rollout, slug, "4", 10)
        assert refused.value.status_code == 409
        assert "weights.bin missing" in refused.value.message
        await hold(load, "after broken")
    finally:
        load.stop()
        await runner

    failed = [s for s in load.samples if s.failed]
    by_version = Counter(s.version for s in load.samples)
    assert failed == [], f"{len(failed)} failed of {len(load.samples)}: {failed[:5]}"
    assert by_version["4"] == 0
    assert set(by_version) == {"1", "2", "3"}, by_version
    stages = {
        stage: Counter(s.version for s in load.samples if s.stage == stage)
        for stage in ("v1", "10%", "50%", "promoted", "25%", "rolled back", "after broken")
    }
    assert set(stages["v1"]) == {"1"}
    assert stages["10%"]["2"] > 0
    assert 0.3 < stages["50%"]["2"] / sum(stages["50%"].values()) < 0.7, stages["50%"]
    assert stages["25%"]["3"] > 0
    assert set(stages["after broken"]) == {"2"}

    traffic = client.rollouts.traffic(slug)
    assert traffic["weights"] == {"2": 100}
    assert traffic["stable"] == "2"
    assert traffic["rollouts"][0]["status"] == "failed"
    statuses = {v["version"]: v["status"] for v in traffic["versions"]}
    assert statuses["1"] == "retired"
    assert statuses["2"] == "ready"
    client.endpoints.delete(slug)


def test_cli_versions_rollout_promote_and_traffic(stack: Stack, tmp_path: Path) -> None:
    """The same from the command line: versions create/list, rollout, traffic, promote and a
    refused rollback, each with a message."""
    client = stack.client()
    slug = client.endpoints.create(
        "cli canary", str(model(tmp_path, "v1", "one")), server=WORKERS_1
    )["slug"]
    client.endpoints.wait_until_running(slug)
    # A path relative to where the command runs, as a user types it.
    relative = os.path.relpath(model(tmp_path, "v2", "two"), ROOT)
    created = stack.cli("versions", "create", slug, relative)
    assert created.returncode == 0, created.stderr
    assert "Created version 2" in created.stdout
    listed = stack.cli("versions", "list", slug)
    assert "stable" in listed.stdout
    bad = stack.cli("rollout", slug, "2", "--percent", "150")
    assert bad.returncode == 1
    assert "percent" in bad.stderr
    rolled = stack.cli("rollout", slug, "2", "--percent", "20")
    assert rolled.returncode == 0, rolled.stderr
    assert "v1: 80%, v2: 20%" in rolled.stdout
    shown = stack.cli("traffic", slug, "--json")
    assert '"canary": "2"' in shown.stdout
    promoted = stack.cli("promote", slug)
    assert promoted.returncode == 0, promoted.stderr
    assert "v2: 100%" in promoted.stdout
    refused = stack.cli("rollback", slug)
    assert refused.returncode == 1
    assert "nothing to roll back" in refused.stderr
    client.endpoints.delete(slug)
