"""The routing table follows the deployer's events on real NATS, in front of real workers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gateway_testkit import Gateway, Worker, demo_route, eventually

from cormorant.common.events import EndpointChanged, ReplicaChanged, TrafficChanged
from cormorant.gateway.routing import RouteInfo, RoutingSnapshot, RoutingTable
from cormorant.gateway.upstream import Pool


@pytest.fixture
async def gateway(workers: dict[str, Worker], start_gateway: Any) -> AsyncIterator[Gateway]:
    """A gateway routing ``demo`` (weights v1: 100) to r1, r2 (v1) and r3 (v2)."""
    async with start_gateway([demo_route(workers, "r1", "r2", "r3")]) as gw:
        yield gw


async def served_by(gateway: Gateway, count: int) -> Counter[str]:
    """Which replica answered each of ``count`` predictions (eight at a time)."""
    limit = asyncio.Semaphore(8)

    async def one() -> str:
        async with limit:
            response = await gateway.predict(["whoami"])
            assert response.status_code == 200, response.text
            return str(response.json()["prediction"])

    return Counter(await asyncio.gather(*(one() for _ in range(count))))


async def test_draining_replica_stops_receiving_requests(
    gateway: Gateway, workers: dict[str, Worker]
) -> None:
    """A ReplicaChanged(draining) takes the replica out of routing at once."""
    assert set(await served_by(gateway, 40)) == {"r1", "r2"}
    await gateway.publish(
        ReplicaChanged(endpoint="demo", version="v1", replica_id="r2", state="draining")
    )
    route = gateway.app.state.routing.routes["demo"]
    await eventually(lambda: "r2" not in route.replicas, what="r2 removed")
    assert set(await served_by(gateway, 40)) == {"r1"}
    await gateway.publish(
        ReplicaChanged(
            endpoint="demo", version="v1", replica_id="r2", state="ready", url=workers["r2"].url
        )
    )
    await eventually(lambda: "r2" in route.replicas, what="r2 back")
    assert set(await served_by(gateway, 40)) == {"r1", "r2"}


async def test_weights_90_10_are_honoured(gateway: Gateway) -> None:
    """TrafficChanged {v1: 90, v2: 10}: about a tenth of the requests reach v2."""
    route = gateway.app.state.routing.routes["demo"]
    assert set(await served_by(gateway, 20)) <= {"r1", "r2"}
    await gateway.publish(
        TrafficChanged(endpoint="demo", generation=2, weights={"v1": 90, "v2": 10})
    )
    await eventually(lambda: route.generation == 2, what="generation 2 applied")
    counts = await served_by(gateway, 600)
    share = counts["r3"] / 600
    # Binomial(600, 0.1): mean 60, sd 7.3; these bounds are more than 4 sd away.
    assert 0.05 < share < 0.16, counts
    # An older generation arriving late changes nothing.
    await gateway.publish(TrafficChanged(endpoint="demo", generation=1, weights={"v2": 100}))
    await gateway.publish(TrafficChanged(endpoint="demo", generation=3, weights={"v2": 100}))
    await eventually(lambda: route.generation == 3, what="generation 3 applied")
    assert route.weights == {"v2": 100}
    assert set(await served_by(gateway, 20)) == {"r3"}


async def test_endpoint_events_reload_its_route(
    gateway: Gateway, workers: dict[str, Worker]
) -> None:
    """EndpointChanged makes the gateway fetch that route; deleted removes it at once."""
    gateway.deployer.routes["fresh"] = {
        "slug": "fresh",
        "replicas": [workers["r3"].replica()],
        "weights": {"v2": 100},
    }
    await gateway.publish(EndpointChanged(endpoint="fresh", change="created"))
    routes = gateway.app.state.routing.routes
    await eventually(lambda: "fresh" in routes, what="fresh routed")
    assert set(routes["fresh"].replicas) == {"r3"}
    # An event about a replica of an endpoint the table does not know also fetches it.
    gateway.deployer.routes["later"] = {"slug": "later", "replicas": [workers["r1"].replica()]}
    await gateway.publish(
        ReplicaChanged(
            endpoint="later", version="v1", replica_id="r1", state="ready", url=workers["r1"].url
        )
    )
    await eventually(lambda: "later" in routes, what="later routed")
    del gateway.deployer.routes["fresh"]
    await gateway.publish(EndpointChanged(endpoint="fresh", change="deleted"))
    await eventually(lambda: "fresh" not in routes, what="fresh removed")


async def test_reconnect_reloads_the_table(
    workers: dict[str, Worker], start_gateway: Any, nats_server: Any
) -> None:
    """After NATS comes back, the gateway reloads the whole table (events may be lost)."""
    async with start_gateway([demo_route(workers)], nats_url=nats_server.url) as gateway:
        loads = gateway.app.state.metrics.routing_loads.labels("all", "ok")
        before = loads._value.get()
        gateway.deployer.routes["demo"] = demo_route(workers, "r3", weights={"v2": 100})
        nats_server.stop()
        nats_server.start()
        await eventually(lambda: loads._value.get() > before, within=20, what="reload")
        route = gateway.app.state.routing.routes["demo"]
        await eventually(lambda: set(route.replicas) == {"r3"}, what="new replicas")


def _table() -> RoutingTable:
    def pool(host: str, port: int, tls: bool) -> Pool:
        return Pool(host, port, tls=tls)

    return RoutingTable(pool)


def _info(*replicas: str, generation: int = 1) -> RouteInfo:
    return RouteInfo(
        slug="demo",
        generation=generation,
        weights={"1": 100},
        replicas=[{"id": r, "version": 1, "url": f"http://127.0.0.1:9/{r}"} for r in replicas],
    )


async def test_a_stale_snapshot_does_not_undo_newer_events() -> None:
    """A snapshot fetched before an event keeps the event's effect, for removals and additions."""
    table = _table()
    table.apply_snapshot(RoutingSnapshot(endpoints=[_info("a", "b")]), time.monotonic())
    fetched_at = time.monotonic()
    table.apply_replica(
        ReplicaChanged(endpoint="demo", version="1", replica_id="a", state="crashed")
    )
    table.apply_replica(
        ReplicaChanged(
            endpoint="demo", version="1", replica_id="c", state="ready", url="http://127.0.0.1:9"
        )
    )
    table.apply_snapshot(RoutingSnapshot(endpoints=[_info("a", "b")]), fetched_at)
    assert set(table.routes["demo"].replicas) == {"b", "c"}
    # A snapshot fetched after the events is the truth.
    table.apply_snapshot(RoutingSnapshot(endpoints=[_info("a", "b")]), time.monotonic())
    assert set(table.routes["demo"].replicas) == {"a", "b"}
    table.remove_route("demo")
    table.apply_route(_info("a"), fetched_at)
    assert "demo" not in table.routes
    table.close()


async def test_pick_prefers_the_least_loaded_replica() -> None:
    """Least in-flight wins; ties are broken at random; versions without replicas give way."""
    table = _table()
    table.apply_snapshot(RoutingSnapshot(endpoints=[_info("a", "b")]), time.monotonic())
    route = table.routes["demo"]
    a, b = route.replicas["a"], route.replicas["b"]
    now = time.monotonic()
    a.begin(now)
    assert {route.pick(now) for _ in range(20)} == {b}
    a.end(now)
    assert {route.pick(now) for _ in range(100)} == {a, b}
    route.weights = {"1": 50, "2": 50}
    route.rebuild()
    assert {route.pick(now) for _ in range(50)} <= {a, b}
    table.close()
