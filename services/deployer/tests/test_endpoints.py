"""Creating, reading, listing and deleting web endpoints against real servers and workers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import nats
from deployer_testkit import DeployerHarness, pid_gone, worker_processes

from cormorant.common.events import decode
from cormorant.devstack.testing.waits import eventually

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
WORKERS_1 = {"workers": 1}


async def predict(url: str, value: Any, headers: dict[str, str]) -> Any:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{url}/predict", json={"input_params": value}, headers=headers
        )
    assert response.status_code == 200, response.text
    return response.json()["prediction"]


async def test_create_from_directory_deploys_then_runs_and_answers(
    deployer: DeployerHarness, nats_url: str
) -> None:
    """A user deploying the multi_args example sees `deploying`, then `running`; the routed
    replica answers /predict, and the gateway learns about it from NATS events."""
    nc = await nats.connect(nats_url)
    seen: list[Any] = []

    async def collect(msg: Any) -> None:
        seen.append(decode(msg.data, msg.headers))

    await nc.subscribe("cormorant.>", cb=collect)
    try:
        created = await deployer.create(
            name="Iris Species",
            source=str(EXAMPLES / "multi_args"),
            server=WORKERS_1,
            env={"FLAG": "on"},
        )
        assert created["slug"] == "iris-species"
        assert created["status"] == "deploying"
        assert created["token"].startswith("cmt_")
        assert created["version"] == "1"
        assert created["replicas"] == {"ready": 0, "desired": 1, "min": 1, "max": 1, "target": 4.0}
        assert created["predict_url"] == "/api/v1/endpoints/iris-species/predict"
        assert created["file"] == "predict.py"
        assert created["function"] == "predict"
        assert created["timeout_s"] == 60.0
        assert created["env"] == {"FLAG": "on"}

        running = await deployer.wait_running("iris-species")
        assert "token" not in running
        assert [e["state"] for e in running["events"]][-2:] == ["starting", "ready"]

        route = await deployer.route("iris-species")
        assert route["weights"] == {"1": 100}
        assert route["generation"] == 1
        assert route["status"] == "running"
        assert route["timeout_s"] == 60.0
        [replica] = route["replicas"]
        assert replica["state"] == "ready"
        assert replica["version"] == "1"
        answer = await predict(replica["url"], [5.1, 1.4, 0.2], deployer.replica_headers(replica))
        assert answer["species"] == "setosa"

        table = (await deployer.client.get("/internal/routing")).json()
        assert [r["slug"] for r in table["endpoints"]] == ["iris-species"]

        def kinds() -> set[str]:
            return {type(e).__name__ for e in seen if getattr(e, "endpoint", None)}

        await eventually(
            lambda: _async(
                {"EndpointChanged", "VersionCreated", "TrafficChanged", "ReplicaChanged"} <= kinds()
            ),
            what="events on NATS",
        )
        ready = [e for e in seen if type(e).__name__ == "ReplicaChanged" and e.state == "ready"]
        assert ready[0].url == replica["url"]
        assert ready[0].replica_id == replica["id"]
        created_events = [e for e in seen if getattr(e, "change", None) == "created"]
        assert created_events[0].attributes["slug"] == "iris-species"
        assert "token" not in json.dumps(created_events[0].attributes)
    finally:
        await nc.close()


async def _async(value: bool) -> bool:
    return value


async def test_list_get_and_delete_stop_the_replica_processes(
    deployer: DeployerHarness, model_dir: Path, deployer_settings: Any
) -> None:
    """Deleting an endpoint stops its worker processes, hides it from list and routing, and a
    second delete says the endpoint is not found."""
    first = await deployer.create(name="tiny", source=str(model_dir), server=WORKERS_1)
    second = await deployer.create(name="tiny", source=str(model_dir), server=WORKERS_1)
    assert (first["slug"], second["slug"]) == ("tiny", "tiny-2")
    await deployer.wait_running("tiny")
    await deployer.wait_running("tiny-2")

    listed = (await deployer.client.get("/api/v1/endpoints")).json()["endpoints"]
    assert {e["slug"] for e in listed} == {"tiny", "tiny-2"}

    marker = str(deployer_settings.data_dir)
    pids = [p.pid for p in worker_processes(marker)]
    assert len(pids) >= 2
    tiny_pids = [p.pid for p in worker_processes(marker) if "tiny" in p.cmdline()]

    response = await deployer.client.delete("/api/v1/endpoints/tiny")
    assert response.status_code == 200, response.text
    final = response.json()
    assert final["status"] == "stopped"
    assert final["replicas"]["ready"] == 0
    assert [e["state"] for e in final["events"]][-2:] == ["draining", "stopped"]

    remaining = {p.pid for p in worker_processes(marker)}
    gone = [pid for pid in tiny_pids if pid not in remaining or pid_gone(pid)]
    assert len(gone) == len(tiny_pids)
    assert remaining, "the other endpoint's replica keeps running"

    listed = (await deployer.client.get("/api/v1/endpoints")).json()["endpoints"]
    assert [e["slug"] for e in listed] == ["tiny-2"]
    assert (await deployer.client.get("/internal/routing/tiny")).status_code == 404
    missing = await deployer.client.delete("/api/v1/endpoints/tiny")
    assert missing.status_code == 404
    assert "endpoint 'tiny' not found" in missing.json()["error"]["message"]

    # The slug of a deleted endpoint stays taken: its logs keep pointing at it.
    third = await deployer.create(name="tiny", source=str(model_dir), server=WORKERS_1)
    assert third["slug"] == "tiny-3"


async def test_an_endpoint_still_reads_while_the_fleet_is_down(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """The control plane does not go down with the fleet: an endpoint and the list still read
    from the database (without the recent replica events, which are the fleet's)."""
    await deployer.create(name="steady", source=str(model_dir), server=WORKERS_1)
    await deployer.wait_running("steady")
    await deployer.stop_fleet()

    shown = await deployer.get("steady")
    assert shown["status"] == "running"
    assert shown["replicas"]["ready"] == 1
    assert shown["events"] == []
    listed = await deployer.client.get("/api/v1/endpoints")
    assert listed.status_code == 200, listed.text
    assert [e["slug"] for e in listed.json()["endpoints"]] == ["steady"]


async def test_batch_endpoint_rests_idle_at_zero_replicas(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """A batch endpoint is created without starting any worker: `idle`, zero replicas."""
    created = await deployer.create(name="nightly", kind="batch", source=str(model_dir))
    assert created["status"] == "idle"
    assert created["kind"] == "batch"
    assert created["replicas"] == {"ready": 0, "desired": 0, "min": 0, "max": 1, "target": 4.0}
    assert worker_processes(str(deployer.settings.data_dir)) == []
    route = await deployer.route("nightly")
    assert route["kind"] == "batch"
    assert route["replicas"] == []

    rerun = await deployer.client.post("/api/v1/endpoints/nightly/rerun")
    assert rerun.status_code == 201, rerun.text
    assert rerun.json()["slug"] == "nightly-2"
    assert rerun.json()["status"] == "idle"
    assert rerun.json()["source_digest"] == created["source_digest"]


async def test_concurrent_creates_with_one_name_get_distinct_slugs(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """Users creating endpoints of the same name at the same moment each get their own slug."""
    created = await asyncio.gather(
        *(deployer.create(name="Same Name!", kind="batch", source=str(model_dir)) for _ in range(4))
    )
    assert sorted(c["slug"] for c in created) == [
        "same-name",
        "same-name-2",
        "same-name-3",
        "same-name-4",
    ]


async def test_request_in_flight_when_the_endpoint_is_deleted_still_gets_its_answer(
    deployer: DeployerHarness, tmp_path: Path
) -> None:
    """Stopping drains: a slow prediction already running when the user deletes the
    endpoint completes with its answer before the replica exits."""
    source = tmp_path / "slow"
    source.mkdir()
    # The replica runs under a uid of its own: it may only leave its mark where anyone can
    # reach (pytest's directories are 0700, and the deployer opens no directory for replicas).
    signals = Path(tempfile.mkdtemp(prefix="cormorant-signals-"))
    os.chmod(signals, 0o777)
    started = signals / "started"
    (source / "predict.py").write_text(
        "import pathlib, time\n\n\n"
        "def predict(seconds):\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        "    time.sleep(seconds)\n"
        "    return 'finished'\n"
    )
    await deployer.create(name="slow", source=str(source), server=WORKERS_1)
    await deployer.wait_running("slow")
    replica = (await deployer.route("slow"))["replicas"][0]
    in_flight = asyncio.create_task(predict(replica["url"], 1.5, deployer.replica_headers(replica)))

    try:
        await eventually(lambda: _async(started.exists()), what="the prediction started")
        response = await deployer.client.delete("/api/v1/endpoints/slow")
        assert response.status_code == 200
        assert await in_flight == "finished"
        assert worker_processes(str(deployer.settings.data_dir)) == []
    finally:
        shutil.rmtree(signals, ignore_errors=True)
