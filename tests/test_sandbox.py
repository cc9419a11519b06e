"""Hostile predict code is contained: no platform files or secrets, its own limits, a deadline.

Everything goes through the public API (and the CLI): a hostile model tries, from inside
predict, what the issue found it could do, while a second endpoint serves a steady load that
must not see a single failure.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from cormorant.common.sandbox import DEFAULT_OPEN_FILES
from cormorant.fleet.settings import FleetSettings
from tests.conftest import ROOT, Stack
from tests.test_replicas import Load, wait_for
from tests.test_web_endpoints import deploy

HOSTILE = ROOT / "tests" / "models" / "hostile"
ECHO = ROOT / "tests" / "models" / "echo"

MEMORY_MB = 256
MAX_PROCESSES = 32
# Long enough for the fork bomb to run on a busy machine.
TIMEOUT_S = 8
# A contained replica's own settings; anything else named CORMORANT_ is the platform's.
OWN_SETTINGS = {"CORMORANT_NATS_URL", "CORMORANT_LOG_LEVEL", "CORMORANT_LOG_JSON",
                "CORMORANT_OTLP_ENDPOINT", "CORMORANT_REPLICA_ID"}  # fmt: skip


class Hostile:
    """Calls the hostile endpoint's actions."""

    def __init__(self, stack: Stack, slug: str, token: str) -> None:
        self.slug = slug
        self.url = f"{stack.url}/api/v1/endpoints/{slug}/predict"
        self.http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def call(self, action: str, arg: object = None) -> httpx.Response:
        """POST the action; the raw answer."""
        return self.http.post(self.url, json={"input_params": [action, arg]})

    def result(self, action: str, arg: object = None) -> Any:
        """The prediction of an action that must succeed."""
        response = self.call(action, arg)
        assert response.status_code == 200, response.text
        return response.json()["prediction"]


def death_causes(stack: Stack, slug: str) -> list[str]:
    """The causes of the endpoint's replica events, oldest first."""
    events = stack.client().endpoints.get(slug)["events"]
    return [event["cause"] for event in events if event.get("cause")]


def own_path(value: str, directory: Path) -> bool:
    """Whether ``value`` is ``directory`` or a path inside it."""
    return value == str(directory) or value.startswith(f"{directory}/")


def test_hostile_predict_is_contained_and_its_neighbour_never_fails(stack: Stack) -> None:
    """Reading the stack file, the data dir or other versions fails; the environment holds no
    platform secret; memory past ``memory_mb`` and an endless loop cost only the worker (504,
    then 200 again within 10 s), a fork bomb stops at ``max_processes``, ``os._exit`` is an
    event and a restart, and a crash loop marks the endpoint degraded; meanwhile a second
    endpoint under load answers every request."""
    client = stack.client()
    calm, calm_token = deploy(stack, ECHO, "calm")
    slug, token = deploy(
        stack, HOSTILE, "hostile", "--memory-mb", str(MEMORY_MB),
        "--max-processes", str(MAX_PROCESSES), "--timeout", str(TIMEOUT_S),
    )  # fmt: skip
    hostile = Hostile(stack, slug, token)
    shown = client.endpoints.get(slug)
    assert shown["resources"]["memory_mb"] == MEMORY_MB
    assert shown["resources"]["max_processes"] == MAX_PROCESSES
    calm_view = client.endpoints.get(calm)
    calm_replica = next(e["replica_id"] for e in calm_view["events"] if e["state"] == "ready")
    replicas_dir = FleetSettings(data_dir=stack.data_dir).resolved_sandbox_dir()

    with Load(stack, calm, calm_token, clients=2, seconds="steady") as load:
        # Files of the platform and of other endpoints.
        for path in (
            stack.data_dir / "stack.json",
            stack.data_dir / "versions" / calm_view["source_digest"] / "predict.py",
            replicas_dir / calm_replica / "version" / "predict.py",
        ):
            outcome = hostile.result("read", str(path))
            assert outcome == {"ok": False, "error": "PermissionError"}, path
        assert hostile.result("list", str(stack.data_dir)) == {
            "ok": False,
            "error": "PermissionError",
        }
        assert hostile.result("list", str(replicas_dir))["ok"] is False

        # Who it is: an unprivileged uid, no capability, no way to gain one.
        me = hostile.result("whoami")
        assert me["uid"] != 0
        assert me["gid"] != 0
        assert me["groups"] in ([], [me["gid"]])
        assert int(me["cap_eff"], 16) == 0
        assert int(me["cap_prm"], 16) == 0
        assert me["no_new_privs"] == "1"
        # Its own code is there to read, not to change.
        assert hostile.result("read", f"{me['cwd']}/predict.py") == {"ok": True}
        write = hostile.result("write", f"{me['cwd']}/predict.py")
        assert write == {"ok": False, "error": "PermissionError"}

        # The environment: its own settings, nothing of the platform's.
        environ: dict[str, str] = hostile.result("environ")
        platform = {k for k in environ if k.startswith("CORMORANT_")} - OWN_SETTINGS
        assert {k for k in platform if not k.startswith("CORMORANT_WORKER_")} == set()
        for key, value in environ.items():
            assert stack.admin_key not in value, key
            assert stack.database_url not in value, key
            assert not own_path(value, stack.data_dir), key

        # A fork bomb stops at max_processes, inside predict.
        forks = hostile.result("fork", 100)
        assert forks["error"] == "BlockingIOError"
        assert forks["forked"] < MAX_PROCESSES

        # Memory past memory_mb: the call fails, that worker is replaced (event `oom`).
        allocation = hostile.call("allocate", MEMORY_MB * 2)
        assert allocation.status_code == 500, allocation.text
        assert "MemoryError" in allocation.text
        wait_for(lambda: "oom" in death_causes(stack, slug), 30, "the oom event")
        assert hostile.result("allocate", 16) == 16 * 1024 * 1024

        # An endless loop: 504 at the deadline, then the replica answers again within 10 s.
        started = time.monotonic()
        looped = hostile.call("loop")
        assert looped.status_code == 504, looped.text
        assert time.monotonic() - started < TIMEOUT_S + 5
        answered = time.monotonic()
        assert hostile.result("echo") == "echo"
        assert time.monotonic() - answered < 10
        wait_for(lambda: "timeout" in death_causes(stack, slug), 30, "the timeout event")

        # os._exit: the request fails, the death is an event and a restart.
        restarts = client.endpoints.get(slug)["restarts"]
        assert hostile.call("exit").status_code >= 500
        wait_for(lambda: "exit" in death_causes(stack, slug), 30, "the exit event")
        assert client.endpoints.get(slug)["restarts"] > restarts
        assert hostile.result("echo") == "echo"

        # Five deaths within a minute are a crash loop: degraded, with the last error.
        for _ in range(2):
            hostile.call("exit")
            hostile.result("echo")
        wait_for(
            lambda: client.endpoints.get(slug)["status"] == "degraded", 30, "a degraded status"
        )
        assert "exited with code 1" in client.endpoints.get(slug)["reason"]
        assert client.endpoints.get(calm)["status"] == "running"

    assert set(load.outcomes) == {200}, load.outcomes
    assert load.outcomes[200] > 0

    # The same deaths on the CLI and in the fleet's Prometheus metrics.
    shown = stack.cli("endpoints", "show", slug)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["restarts"] >= 5
    assert {"oom", "timeout", "exit"} <= {e["cause"] for e in view["events"] if e["cause"]}
    info = json.loads((stack.data_dir / "stack.json").read_text())
    metrics = httpx.get(f"{info['services']['fleet']['url']}/metrics").text
    for cause in ("oom", "timeout", "exit"):
        line = f'cormorant_replica_deaths_total{{cause="{cause}",endpoint="{slug}"}}'
        assert line in metrics, cause

    # A rerun keeps the limits it does not override.
    rerun = client.endpoints.rerun(slug, name="hostile-rerun", resources={"memory_mb": 300})
    assert rerun["resources"] == {"memory_mb": 300, "max_processes": MAX_PROCESSES,
                                  "open_files": DEFAULT_OPEN_FILES}  # fmt: skip
    client.endpoints.delete(rerun["slug"])
