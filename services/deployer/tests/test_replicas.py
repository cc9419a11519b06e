"""Replica supervision: crashes are restarted and shown, failures explained, restarts adopt."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
from deployer_testkit import (
    DeployerHarness,
    pid_gone,
    running_deployer,
    worker_processes,
)

from cormorant.common import bus
from cormorant.common.bus import PREDICTIONS_STREAM
from cormorant.common.events import PredictionLogged
from cormorant.common.ports import free_port
from cormorant.deployer.settings import DeployerSettings
from cormorant.devstack.testing.spooling import spool_and_die
from cormorant.devstack.testing.waits import eventually
from cormorant.fleet.runtime import local

WORKERS_1 = {"workers": 1}
CRASHING_WORKER = """
import sys
if "--check" in sys.argv:
    sys.exit(0)
print("cannot open the model: disk on fire", flush=True)
sys.exit(3)
"""
REFUSING_WORKER = """
import sys
if "--check" in sys.argv:
    sys.exit(0)
print("python -m cormorant.worker: error: threads: not a number", file=sys.stderr)
sys.exit(2)
"""


def replica_pid(marker: str, slug: str) -> int:
    [process] = [p for p in worker_processes(marker) if slug in p.cmdline()]
    return process.pid


async def test_killed_replica_is_restarted_and_the_crash_is_shown(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """When a replica's process is killed, the user sees the crash (how it died, its log)
    in the endpoint's events, the restart count goes up, and a new process serves again."""
    await deployer.create(name="phoenix", source=str(model_dir), server=WORKERS_1)
    before = await deployer.wait_running("phoenix")
    assert before["restarts"] == 0
    marker = str(deployer.settings.data_dir)
    old_pid = replica_pid(marker, "phoenix")
    old_route = await deployer.route("phoenix")

    os.kill(old_pid, signal.SIGKILL)

    after = await deployer.wait_for(
        "phoenix",
        lambda e: e["restarts"] == 1 and e["replicas"]["ready"] == 1,
        what="restarted and ready",
    )
    assert after["status"] == "running"
    crashes = [e for e in after["events"] if e["state"] == "crashed"]
    assert len(crashes) == 1
    assert crashes[0]["reason"].startswith("killed by SIGKILL; log tail:")
    assert "Booting worker" in crashes[0]["reason"]
    assert [e["state"] for e in after["events"]][-3:] == ["crashed", "starting", "ready"]
    assert pid_gone(old_pid)
    new_route = await deployer.route("phoenix")
    assert new_route["replicas"][0]["id"] == old_route["replicas"][0]["id"]
    assert replica_pid(marker, "phoenix") != old_pid


async def test_a_port_another_process_took_is_not_mistaken_for_the_replica(
    deployer: DeployerHarness, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port given to a replica is taken by another server (answering 200 on /healthz)
    before the replica binds it: that server's answer never makes the replica ready; the
    replica crashes, starts again on another port and is ready there."""

    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    squatter = ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    taken = squatter.server_address[1]
    ports = iter([taken])
    monkeypatch.setattr(local, "free_port", lambda host: next(ports, None) or free_port(host))
    try:
        await deployer.create(name="squatted", source=str(model_dir), server=WORKERS_1)
        ready = await deployer.wait_running("squatted", timeout=90)
    finally:
        squatter.shutdown()
        squatter.server_close()
    states = [e["state"] for e in ready["events"]]
    assert states.index("crashed") < states.index("ready"), states
    [replica] = (await deployer.route("squatted"))["replicas"]
    assert not replica["url"].endswith(f":{taken}")


async def test_model_that_cannot_import_fails_the_endpoint_with_the_reason(
    deployer: DeployerHarness, tmp_path: Path
) -> None:
    """A predict file whose import raises leaves the endpoint `failed` with the worker's
    message, instead of `deploying` forever; it never receives traffic."""
    source = tmp_path / "broken"
    source.mkdir()
    (source / "predict.py").write_text(
        'raise RuntimeError("model.bin is missing")\n\n\ndef predict(x):\n    return x\n'
    )
    await deployer.create(name="broken", source=str(source), server=WORKERS_1)
    failed = await deployer.wait_for("broken", lambda e: e["status"] == "failed", what="failed")
    assert "RuntimeError: model.bin is missing" in failed["reason"]
    assert failed["replicas"]["ready"] == 0
    assert any(e["state"] == "crashed" for e in failed["events"])
    assert (await deployer.route("broken"))["replicas"] == []


async def test_replica_exiting_at_start_fails_the_endpoint_after_repeated_crashes(
    deployer_settings: DeployerSettings, model_dir: Path
) -> None:
    """A replica that exits while starting is restarted with growing delays; after repeated
    crashes the endpoint is `failed`, with the exit code and the end of the replica's log."""
    # A stand-in worker that accepts the configuration check and dies at every start.
    crashing = [sys.executable, "-c", CRASHING_WORKER]
    settings = deployer_settings.model_copy(update={"worker_command": crashing})
    async with DeployerHarness(settings) as deployer:
        await deployer.create(name="crashy", source=str(model_dir))
        failed = await deployer.wait_for("crashy", lambda e: e["status"] == "failed")
        assert failed["reason"].startswith("replica crashed 3 times in a row before becoming ready")
        assert "exited with code 3 before it was ready" in failed["reason"]
        assert "cannot open the model: disk on fire" in failed["reason"]
        crashes = [e for e in failed["events"] if e["state"] == "crashed"]
        assert len(crashes) >= 3
        assert failed["restarts"] >= 2


async def test_scaling_up_one_at_a_time_keeps_every_serving_replica(
    deployer_settings: DeployerSettings, model_dir: Path
) -> None:
    """Growing 2 → 3 starts one replica and stops none: the two already serving keep their
    processes (a scale-up used to stop every replica but the oldest, and the reconcile loop
    then replaced one every 10 s without ever reaching 3). The autoscaler is slowed down so
    that only this test decides the count."""
    settings = deployer_settings.model_copy(update={"autoscale_interval_s": 3600.0})
    async with running_deployer(settings) as deployer:
        await _grow_from_two_to_three(deployer, model_dir)


async def _grow_from_two_to_three(deployer: DeployerHarness, model_dir: Path) -> None:
    await deployer.create(
        name="grow", source=str(model_dir), server=WORKERS_1, replicas={"min": 2, "max": 3}
    )
    await deployer.wait_running("grow", ready=2)
    marker = str(deployer.settings.data_dir)
    serving = {p.pid for p in worker_processes(marker) if "grow" in p.cmdline()}
    supervisor = deployer.state["fleet"].supervisor
    [endpoint] = [e for e in supervisor.endpoints.values() if e.slug == "grow"]

    await supervisor.scale(endpoint, 3)
    await supervisor.converge(endpoint)  # what the reconcile loop does every 10 s

    after = await deployer.wait_running("grow", ready=3)
    assert not [e for e in after["events"] if e["state"] in ("stopped", "draining")]
    pids = {p.pid for p in worker_processes(marker) if "grow" in p.cmdline()}
    assert serving < pids, (serving, pids)
    assert len(pids) == 3


async def test_a_deployer_restart_leaves_every_replica_serving(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """The deployer holds no replica: restarting it alone (an upgrade, a crash) leaves the same
    worker processes serving, with no event; the endpoint then reads, routes and deletes as
    before."""
    await deployer.create(name="kept", source=str(model_dir), server=WORKERS_1)
    before = await deployer.wait_running("kept")
    marker = str(deployer.settings.data_dir)
    pids = sorted(p.pid for p in worker_processes(marker) if "kept" in p.cmdline())
    route = await deployer.route("kept")

    await deployer.restart_deployer()

    after = await deployer.wait_running("kept")
    assert sorted(p.pid for p in worker_processes(marker) if "kept" in p.cmdline()) == pids
    assert after["events"] == before["events"]
    assert (await deployer.route("kept"))["replicas"] == route["replicas"]
    deleted = await deployer.client.delete("/api/v1/endpoints/kept")
    assert deleted.status_code == 200, deleted.text
    await eventually(lambda: all(pid_gone(pid) for pid in pids), what="the replicas stopped")


async def test_restarted_fleet_adopts_running_replicas_without_restarting_them(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """Restarting the fleet (with the deployer: an upgrade, a crash) does not interrupt
    serving: the same worker processes keep running and are watched again; a replica that died
    meanwhile is replaced."""
    await deployer.create(
        name="steady", source=str(model_dir), server=WORKERS_1, replicas={"min": 2, "max": 2}
    )
    await deployer.wait_running("steady", ready=2)
    marker = str(deployer.settings.data_dir)
    pids = sorted(p.pid for p in worker_processes(marker) if "steady" in p.cmdline())
    route = await deployer.route("steady")

    await deployer.restart()

    after = await deployer.wait_running("steady", ready=2)
    assert sorted(p.pid for p in worker_processes(marker) if "steady" in p.cmdline()) == pids
    assert after["restarts"] == 0
    assert {e["reason"] for e in after["events"]} == {"adopted after a fleet restart"}
    assert (await deployer.route("steady"))["replicas"] == route["replicas"]

    # Killed while no deployer watches: the next one replaces it.
    await deployer.stop()
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    await deployer.start()
    replaced = await deployer.wait_for(
        "steady",
        lambda e: e["replicas"]["ready"] == 2 and e["restarts"] == 1,
        what="the dead replica replaced",
    )
    reasons = [e["reason"] or "" for e in replaced["events"] if e["state"] == "crashed"]
    assert any("not running after the deployer restarted" in r for r in reasons)
    alive = [p.pid for p in worker_processes(marker) if "steady" in p.cmdline()]
    assert victim not in alive
    assert len(alive) == 2


async def test_server_setting_the_worker_refuses_is_explained(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """`server: {bind: ...}` is refused at create time with the worker's own message, and
    nothing is created."""
    response = await deployer.client.post(
        "/api/v1/endpoints",
        json={
            "name": "bound",
            "source": str(model_dir),
            "server": {"workers": 1, "bind": "0.0.0.0:80"},
        },
    )
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert message.startswith("the worker refused this configuration: ")
    assert "server setting 'bind': cannot be set: the --port and --host flags own" in message
    assert (await deployer.client.get("/api/v1/endpoints")).json() == {"endpoints": []}


async def test_configuration_refused_at_start_fails_the_endpoint_at_once(
    deployer_settings: DeployerSettings, model_dir: Path
) -> None:
    """A replica that exits with the worker's `refused configuration` code (2) is not retried
    into a crash loop before the user hears why: the endpoint is `failed` at once."""
    refusing = [sys.executable, "-c", REFUSING_WORKER]
    settings = deployer_settings.model_copy(update={"worker_command": refusing})
    async with DeployerHarness(settings) as deployer:
        await deployer.create(name="refused", source=str(model_dir))
        failed = await deployer.wait_for("refused", lambda e: e["status"] == "failed")
        assert failed["reason"] == "the worker refused its configuration: threads: not a number"
        assert failed["restarts"] == 0


async def test_the_fleet_reports_each_replica_change_as_it_happens(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """``Fleet.observe()`` yields a new endpoint's replica as it starts and once it is ready,
    the same changes ``ReplicaChanged`` announces on NATS."""
    observed = deployer.state["fleet"].observe()
    try:
        created = await deployer.create(name="watched", source=str(model_dir), server=WORKERS_1)
        seen = []
        async with asyncio.timeout(60):
            async for change in observed:
                if change.endpoint != created["slug"]:
                    continue
                seen.append(change)
                if change.state == "ready":
                    break
    finally:
        await observed.aclose()
    assert [c.state for c in seen] == ["starting", "ready"]
    assert seen[1].version == "1"
    assert seen[1].url is not None
    assert seen[1].url.startswith("http://127.0.0.1:")
    route = await deployer.route(created["slug"])
    assert [r["id"] for r in route["replicas"]] == [seen[1].replica_id]


async def logged_request_ids(nats_url: str, slug: str, prefix: str) -> list[str]:
    """Request ids starting with ``prefix`` in the predictions stream for ``slug``."""
    nc = await bus.connect(nats_url, name="spool-reader")
    found: list[str] = []
    try:
        sub = await nc.jetstream().pull_subscribe(
            PredictionLogged.subject_filter(slug), stream=PREDICTIONS_STREAM
        )
        while True:
            try:
                messages = await sub.fetch(10, timeout=1)
            except TimeoutError:  # nats' own, or asyncio's that fetch raises on some paths
                break
            for msg in messages:
                for event in bus.decode_all(msg.data, msg.headers):
                    if isinstance(event, PredictionLogged) and event.request_id.startswith(prefix):
                        found.append(event.request_id)
    finally:
        await bus.close(nc)
    return found


async def test_a_killed_replicas_spooled_predictions_are_published_before_its_dir_goes(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """Predictions a replica's workers answered but had not published when the whole replica
    was killed are published by the deployer (once) as it replaces the replica."""
    await deployer.create(name="spooler", source=str(model_dir), server=WORKERS_1)
    await deployer.wait_running("spooler")
    marker = str(deployer.settings.data_dir)
    pid = replica_pid(marker, "spooler")
    directory = Path(psutil.Process(pid).environ()["CORMORANT_WORKER_SPOOL_DIR"])
    assert directory.is_relative_to(deployer.settings.resolved_sandbox_dir())
    spool_and_die(directory, 4)

    os.killpg(pid, signal.SIGKILL)

    await deployer.wait_for(
        "spooler",
        lambda e: e["restarts"] == 1 and e["replicas"]["ready"] == 1,
        what="restarted and ready",
    )
    nats_url = deployer.settings.nats_url

    async def published() -> list[str] | None:
        ids = await logged_request_ids(nats_url, "spooler", "dead-")
        return ids if len(ids) >= 4 else None

    ids = await eventually(published, within=30, what="the spooled predictions published")
    assert sorted(ids) == [f"dead-{i}" for i in range(4)]


@pytest.mark.skipif(os.geteuid() != 0, reason="replicas get uids of their own only as root")
async def test_replica_directories_live_under_a_root_owned_root_outside_the_home(
    deployer: DeployerHarness, model_dir: Path, tmp_path: Path
) -> None:
    """By default a stack run as root keeps its replicas' private directories under
    ``sandbox_root`` (root's, 0711, one subdirectory per stack): the directories holding the
    data directory (a home, say) are not opened to other users for them."""
    settings = deployer.settings
    assert settings.sandbox_dir is None
    await deployer.create(name="rooted", source=str(model_dir), server=WORKERS_1)
    await deployer.wait_running("rooted")
    directory = settings.resolved_sandbox_dir()
    assert directory.is_relative_to(settings.sandbox_root)
    assert not directory.is_relative_to(tmp_path)
    for path in (directory, *directory.parents):
        if path == settings.sandbox_root.parent:
            break
        info = os.stat(path)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o711), path
    [replica] = (await deployer.route("rooted"))["replicas"]
    private = directory / replica["id"]
    assert marker_in(private, replica_pid(str(settings.data_dir), "rooted"))
    # The test's own directory (where the data directory is, as a home would be) stays closed.
    assert not os.stat(tmp_path).st_mode & stat.S_IXOTH


def marker_in(private: Path, pid: int) -> bool:
    """Whether the replica ``pid`` runs from its private directory ``private``."""
    return psutil.Process(pid).cwd().startswith(str(private))
