"""`cormorant down` leaves no process of the stack behind: web, batch and stream replicas, forked
from the worker template or started afresh, also after the supervisor was SIGKILLed; `cormorant
up` stops what an earlier run left running and says which, never a process that reuses a pid.

Each test runs a stack of its own (free ports, own data dir), on the session's tansu broker.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from cormorant.devstack.testing.running import stack_environment
from cormorant.kafka_bridge.testing import create_topics
from cormorant.sdk import Client, CormorantAPIError, Endpoint
from cormorant.sdk.streams import Streams
from tests.conftest import ROOT, processes_under

MODELS = ROOT / "tests" / "models"
REPLICA_MODULES = ("cormorant.worker", "cormorant.kafka_bridge")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cormorant.sdk.cli", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _wait(condition: Callable[[], object], what: str, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within:g} s")
        time.sleep(0.2)


def _replicas(data_dir: Path) -> list[psutil.Process]:
    """Replica processes of this stack that lead their session (gunicorn masters, bridges)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if not any(str(data_dir) in part for part in cmdline):
            continue
        if any(cmdline[i : i + 2] == ["-m", m] for m in REPLICA_MODULES for i in range(3)):
            try:
                if os.getsid(process.pid) == process.pid:
                    found.append(process)
            except OSError:
                continue
    return found


def _restarted(data_dir: Path, name: str, killed: int) -> bool:
    """Whether service ``name`` runs again (another pid than ``killed``) and is ready."""
    service = json.loads((data_dir / "stack.json").read_text())["services"][name]
    if service["pid"] == killed:
        return False
    try:
        return httpx.get(f"{service['url']}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _template(data_dir: Path) -> psutil.Process:
    # A contained stack gives the template no data dir: it is the fleet's child.
    fleet = json.loads((data_dir / "stack.json").read_text())["services"]["fleet"]["pid"]
    for process in psutil.Process(fleet).children():
        try:
            if "cormorant.worker.template" in process.cmdline():
                return process
        except psutil.Error:
            continue
    raise AssertionError("no worker template runs")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """The stack's data dir; whatever the test leaves running is stopped after it."""
    path = tmp_path / "data"
    yield path
    _cli(stack_environment(path), "down")


@pytest.fixture
async def topics(kafka_bootstrap: str) -> tuple[str, str]:
    """A fresh 2-partition input topic and its output topic."""
    tag = uuid.uuid4().hex[:8]
    await create_topics(kafka_bootstrap, {f"in-{tag}": 2, f"out-{tag}": 2})
    return f"in-{tag}", f"out-{tag}"


class Running:
    """A stack brought up by the CLI, and the endpoints deployed on it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        # The same ports for every `up`, as a user's second `make up` has.
        self.env = stack_environment(data_dir)

    def up(self) -> subprocess.CompletedProcess[str]:
        result = _cli(self.env, "up", "--no-example")
        assert result.returncode == 0, result.stdout + result.stderr
        stack = json.loads((self.data_dir / "stack.json").read_text())
        self.client = Client(stack["services"]["gateway"]["url"], stack["admin_key"])
        self.supervisor = int(stack["supervisor_pid"])
        return result

    def ready(self, slug: str) -> int:
        """Ready replicas of ``slug``; 0 while the deployer restarts (the gateway says 502)."""
        try:
            ready: int = self.client.endpoints.get(slug)["replicas"]["ready"]
        except CormorantAPIError as exc:
            if exc.status_code != 502:
                raise
            return 0
        return ready

    def batch_job(self, slug: str, tmp_path: Path) -> None:
        """Start a job of a minute's rows and wait for the batch replica to serve it."""
        rows = tmp_path / f"rows-{uuid.uuid4().hex[:6]}.csv"
        with rows.open("w", newline="") as fh:
            csv.writer(fh).writerows([("a", "b"), *((i, i) for i in range(1200))])
        endpoint = Endpoint(slug, url=self.client.url, api_key=self.client.api_key)
        endpoint.batch_predict(rows, "out/rows.csv", "shutdown-rows", wait=False)
        _wait(lambda: self.ready(slug) >= 1, "a batch replica serving the job")


def _deploy_every_kind(
    stack: Running, kafka_bootstrap: str, topics: tuple[str, str]
) -> dict[str, str]:
    client = stack.client
    web = client.endpoints.create(
        "web", MODELS / "echo", replicas={"min": 2, "max": 2}, server={"workers": "1"}
    )
    stream = Streams(client).create(
        "stream", MODELS / "stream", bootstrap_servers=kafka_bootstrap,
        input_topics=[topics[0]], output_topic=topics[1], min_replicas=2, max_replicas=2,
    )  # fmt: skip
    batch = client.endpoints.create(
        "batch", MODELS / "slow", kind="batch", replicas={"min": 0, "max": 1},
        server={"workers": "1"}, env={"SLOW_DELAY_MS": "50"},
    )  # fmt: skip
    return {"web": web["slug"], "stream": stream["slug"], "batch": batch["slug"]}


def _serving_every_kind(
    stack: Running, kafka_bootstrap: str, topics: tuple[str, str], tmp_path: Path
) -> dict[str, str]:
    """Web (2, forked from the template), stream (2) and batch (1, mid-job) replicas serving."""
    # Web replicas fork from the template once it has imported the model libraries.
    fleet_log = stack.data_dir / "logs" / "fleet.log"
    _wait(lambda: "worker template ready" in fleet_log.read_text(), "the worker template")
    slugs = _deploy_every_kind(stack, kafka_bootstrap, topics)
    _wait(lambda: stack.ready(slugs["web"]) == 2, "2 web replicas ready")
    _wait(lambda: stack.ready(slugs["stream"]) == 2, "2 stream replicas ready")
    stack.batch_job(slugs["batch"], tmp_path)
    replicas = _replicas(stack.data_dir)
    assert len(replicas) == 5, [p.cmdline() for p in replicas]
    template = _template(stack.data_dir)
    forked = [p for p in replicas if p.ppid() == template.pid]
    assert len(forked) >= 2, "the web replicas were not forked from the template"
    return slugs


@pytest.mark.timeout(600)
def test_down_stops_every_replica_of_every_kind_and_waits_for_them(
    data_dir: Path, tmp_path: Path, kafka_bootstrap: str, topics: tuple[str, str]
) -> None:
    """Web (forked from the template), stream and batch (mid-job) replicas: once `down` says
    the stack stopped, no process of the stack is left."""
    stack = Running(data_dir)
    stack.up()
    _serving_every_kind(stack, kafka_bootstrap, topics, tmp_path)

    down = _cli(stack.env, "down")

    assert down.returncode == 0, down.stdout + down.stderr
    assert "Stack stopped" in down.stdout
    assert processes_under(data_dir) == []


@pytest.mark.timeout(600)
def test_nothing_outlives_a_killed_supervisor_or_fleet_and_up_stops_leftovers(
    data_dir: Path, tmp_path: Path, kafka_bootstrap: str, topics: tuple[str, str]
) -> None:
    """`up` stops a replica an earlier run left (saying so) and spares a process whose pid was
    recorded for another command line. A SIGKILLed fleet's replicas end with it (and are
    started again); after SIGKILL of the supervisor every replica ends by itself, and `down`
    leaves no process of the stack."""
    # What an earlier run left: one replica still running its recorded command line, and a
    # record whose pid another program now has.
    ghost_cmd = [sys.executable, "-c", "import time; time.sleep(600)", str(data_dir)]
    ghost = subprocess.Popen(ghost_cmd, start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    stack = Running(data_dir)
    try:
        records = data_dir / "run" / "replicas"
        records.mkdir(parents=True)
        ghost_record = {"pid": ghost.pid, "cmdline": ghost_cmd, "endpoint": "ghost"}
        (records / "leftover.json").write_text(json.dumps(ghost_record))
        reused = {"pid": other.pid, "cmdline": [sys.executable, "-m", "cormorant.worker"]}
        (records / "reused.json").write_text(json.dumps(reused))

        up = stack.up()

        assert f"replica leftover of ghost (pid {ghost.pid})" in up.stderr, up.stderr
        assert ghost.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None
        assert "reused" not in up.stderr
        assert not (records / "leftover.json").exists()
        assert not (records / "reused.json").exists()
    finally:
        for process in (ghost, other):
            process.kill()
            process.wait()
    slugs = _serving_every_kind(stack, kafka_bootstrap, topics, tmp_path)

    # The fleet killed outright: the kernel ends its replicas (forked ones through the
    # template, which ends with it); the restarted fleet starts them again.
    before = {p.pid for p in _replicas(data_dir)}
    stack_file = json.loads((data_dir / "stack.json").read_text())
    killed = stack_file["services"]["fleet"]["pid"]
    os.kill(killed, signal.SIGKILL)
    _wait(
        lambda: not before & {p.pid for p in _replicas(data_dir)},
        "the killed fleet's replicas gone",
        within=60,
    )
    # Until the supervisor restarted it, the rows still say what the killed fleet ran.
    _wait(lambda: _restarted(data_dir, "fleet", killed), "the fleet restarted", within=60)
    _wait(lambda: stack.ready(slugs["web"]) == 2, "2 web replicas after the fleet's restart")
    _wait(lambda: stack.ready(slugs["stream"]) == 2, "2 stream replicas after it")
    stack.batch_job(slugs["batch"], tmp_path)

    os.kill(stack.supervisor, signal.SIGKILL)
    # Nobody is asked to stop: the services die with the supervisor, replicas with the fleet.
    _wait(lambda: not _replicas(data_dir), "replicas gone with the supervisor", within=90)
    down = _cli(stack.env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_under(data_dir) == []
