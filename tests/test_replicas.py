"""Replicas under load: a killed one is replaced, and the autoscaler follows concurrency."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import psutil

from tests.conftest import ROOT, Stack
from tests.test_web_endpoints import deploy

TOOLBOX = ROOT / "tests" / "models" / "toolbox"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def replica_pids(slug: str) -> list[int]:
    """PIDs of the gunicorn masters serving ``slug`` (found by their command line)."""
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "cormorant.worker" in cmdline and slug in cmdline and "--endpoint" in cmdline:
            # A master leads its replica's process group; its workers share the command line.
            with contextlib.suppress(OSError):
                if os.getpgid(proc.info["pid"]) == proc.info["pid"]:
                    pids.append(proc.info["pid"])
    return pids


class Load:
    """Closed-loop clients hammering one endpoint until stopped; counts outcomes."""

    def __init__(self, stack: Stack, slug: str, token: str, clients: int, seconds: str) -> None:
        self.url = f"{stack.url}/api/v1/endpoints/{slug}/predict"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.body = {"input_params": seconds}
        self.outcomes: Counter[int] = Counter()
        self.in_flight = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                with self.lock:
                    self.in_flight += 1
                try:
                    status = client.post(self.url, json=self.body, headers=self.headers).status_code
                except httpx.HTTPError:
                    status = 0
                with self.lock:
                    self.in_flight -= 1
                    self.outcomes[status] += 1

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def test_killed_replica_is_replaced_and_only_its_requests_fail(stack: Stack) -> None:
    """SIGKILL one of two replicas under load: the deployer restarts it, the crash shows in
    the endpoint's events, and the failed requests number no more than were in flight."""
    slug, token = deploy(
        stack, TOOLBOX, "kill-me", "--function", "slow", "--min", "2", "--max", "2"
    )
    client = stack.client()
    wait_for(lambda: client.endpoints.get(slug)["replicas"]["ready"] == 2, 60, "2 replicas")
    with Load(stack, slug, token, clients=4, seconds="0.05") as load:
        wait_for(lambda: load.outcomes[200] > 50, 30, "traffic to flow")
        victim = replica_pids(slug)[0]
        os.killpg(victim, signal.SIGKILL)
        wait_for(lambda: victim not in replica_pids(slug), 10, "the replica to die")
        wait_for(
            lambda: (
                client.endpoints.get(slug)["replicas"]["ready"] == 2
                and len(replica_pids(slug)) == 2
            ),
            60,
            "the replacement replica",
        )
        served_after = load.outcomes[200]
        wait_for(lambda: load.outcomes[200] > served_after + 50, 30, "traffic after recovery")
    failed = sum(n for status, n in load.outcomes.items() if status != 200)
    # At most the requests inside the killed process fail: 4 clients, so at most 4.
    assert failed <= 4, load.outcomes
    endpoint = client.endpoints.get(slug)
    assert endpoint["restarts"] >= 1
    assert any(event["state"] == "crashed" for event in endpoint["events"]), endpoint["events"]


def test_autoscale_follows_concurrency_up_and_back_down(stack: Stack) -> None:
    """32 concurrent clients on min 1 / max 3 reach 3 ready replicas; idle, it returns to 1."""
    slug, token = deploy(
        stack, TOOLBOX, "scale-me", "--function", "slow", "--min", "1", "--max", "3",
        "--target", "4",
    )  # fmt: skip
    client = stack.client()
    with Load(stack, slug, token, clients=32, seconds="0.1") as load:
        wait_for(lambda: client.endpoints.get(slug)["replicas"]["ready"] == 3, 90, "3 replicas")
    assert load.outcomes[200] > 0
    failed = sum(n for status, n in load.outcomes.items() if status != 200)
    assert failed == 0, load.outcomes
    wait_for(lambda: client.endpoints.get(slug)["replicas"]["ready"] == 1, 90, "back to 1")
