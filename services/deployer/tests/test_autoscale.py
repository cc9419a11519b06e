"""Autoscaling: the decision as a pure function, and an endpoint scaled by load reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from deployer_testkit import DeployerHarness, worker_processes

from cormorant.common.events import LoadReported
from cormorant.fleet.autoscale import (
    LoadTracker,
    Recommendation,
    decide,
    observed_concurrency,
    recommend,
)


@pytest.mark.parametrize(
    ("concurrency", "expected"),
    [(0.0, 1), (0.5, 1), (4.0, 1), (4.01, 2), (8.0, 2), (9.0, 3), (100.0, 3)],
)
def test_recommendation_is_concurrency_over_target_clamped(
    concurrency: float, expected: int
) -> None:
    """ceil(concurrency / target), never below min nor above max."""
    assert recommend(concurrency, target=4.0, min_replicas=1, max_replicas=3) == expected


def test_recommendation_allows_zero_only_when_min_is_zero() -> None:
    """A batch-like endpoint with min 0 goes to zero without load; a web one keeps 1."""
    assert recommend(0.0, target=1.0, min_replicas=0, max_replicas=2) == 0
    assert recommend(0.0, target=1.0, min_replicas=1, max_replicas=2) == 1


def test_scale_up_is_immediate_and_scale_down_waits_for_the_delay() -> None:
    """A rise applies at once; a fall applies only once it has lasted scale_down_delay."""
    history: tuple[Recommendation, ...] = (Recommendation(0.0, 1),)
    desired, history = decide(history, 3, now=1.0, scale_down_delay=30.0)
    assert desired == 3
    for t in (2.0, 10.0, 30.0):
        desired, history = decide(history, 1, now=t, scale_down_delay=30.0)
        assert desired == 3, t
    desired, history = decide(history, 1, now=31.0, scale_down_delay=30.0)
    assert desired == 1
    assert all(31.0 - r.at < 30.0 for r in history)


def test_a_brief_dip_does_not_scale_down() -> None:
    """Load that drops for less than the delay and comes back keeps the replicas."""
    history: tuple[Recommendation, ...] = ()
    desired, history = decide(history, 3, now=0.0, scale_down_delay=10.0)
    desired, history = decide(history, 1, now=5.0, scale_down_delay=10.0)
    assert desired == 3
    desired, history = decide(history, 3, now=9.0, scale_down_delay=10.0)
    desired, history = decide(history, 1, now=15.0, scale_down_delay=10.0)
    assert desired == 3
    desired, history = decide(history, 1, now=19.5, scale_down_delay=10.0)
    assert desired == 1


def test_observed_concurrency_sums_gateways_of_their_window_average() -> None:
    """Two gateways' averages add up; reports older than the window are ignored."""
    reports = {
        "gw-a": [(0.0, 100.0), (8.0, 2.0), (9.0, 4.0)],
        "gw-b": [(9.5, 1.0)],
        "gw-c": [(1.0, 50.0)],
    }
    assert observed_concurrency(reports, now=10.0, window=3.0) == pytest.approx(3.0 + 1.0)


def test_load_tracker_sums_replicas_and_forgets_quiet_gateways() -> None:
    """A report's total is the sum over its replicas; a gateway gone quiet stops counting."""
    tracker = LoadTracker(window=2.0)
    report = LoadReported(
        endpoint="ep", gateway="gw", interval_s=1.0, concurrency={"r1": 1.5, "r2": 2.5}
    )
    tracker.record(report, now=0.0)
    assert tracker.observed("ep", now=1.0) == pytest.approx(4.0)
    assert tracker.observed("ep", now=5.0) == 0.0
    assert tracker.reports == {}


async def test_load_reports_scale_an_endpoint_up_to_max_and_back_to_min(
    deployer: DeployerHarness, model_dir: Path, nats_url: str
) -> None:
    """Heavy load reported by the gateways brings the endpoint from 1 to 3 ready replicas;
    once the load stops it returns to 1 after the scale-down delay, draining the extras."""
    await deployer.create(
        name="elastic",
        source=str(model_dir),
        server={"workers": 1},
        replicas={"min": 1, "max": 3, "target": 2},
    )
    await deployer.wait_running("elastic")
    nc = await nats.connect(nats_url)
    stop = asyncio.Event()

    async def report(concurrency: float) -> None:
        # Two gateways, as in production: their loads add up (3 + 3 → ceil(6 / 2) = 3).
        while not stop.is_set():
            for gateway in ("gw-1", "gw-2"):
                event = LoadReported(
                    endpoint="elastic",
                    gateway=gateway,
                    interval_s=0.2,
                    concurrency={"r": concurrency},
                    requests=10,
                )
                await nc.publish(event.subject, event.encode(), headers=event.headers())
            await asyncio.sleep(0.2)

    reporter = asyncio.create_task(report(3.0))
    try:
        scaled = await deployer.wait_running("elastic", ready=3, timeout=90)
        assert scaled["replicas"]["desired"] == 3
        assert len(worker_processes(str(deployer.settings.data_dir))) == 3
        route = await deployer.route("elastic")
        assert len(route["replicas"]) == 3
    finally:
        stop.set()
        await reporter
    try:
        # Idle gateways keep reporting zero in-flight requests.
        stop.clear()
        reporter = asyncio.create_task(report(0.0))
        back = await deployer.wait_for(
            "elastic",
            lambda e: (
                e["replicas"]["desired"] == 1
                and [v["state"] for v in e["events"]].count("stopped") == 2
            ),
            timeout=30,
            what="scaled back to 1",
        )
        states = [e["state"] for e in back["events"]]
        assert states.count("draining") == 2
        assert back["replicas"]["ready"] == 1
        assert back["status"] == "running"
        assert len(worker_processes(str(deployer.settings.data_dir))) == 1
    finally:
        stop.set()
        await reporter
        await nc.close()
