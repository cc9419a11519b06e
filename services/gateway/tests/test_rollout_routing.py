"""Canary routing in the gateway: the weighted split, pinned versions, the generation report."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from gateway_testkit import demo_route, eventually

from cormorant.common.events import ShadowTarget, TrafficChanged
from cormorant.common.handshake import GENERATION_SUBJECT, GenerationQuery, GenerationReport
from cormorant.gateway.load import LoadReporter
from cormorant.gateway.routing import RouteInfo, RoutingSnapshot, RoutingTable
from cormorant.gateway.upstream import Pool


def _table(weights: dict[str, int]) -> RoutingTable:
    def pool(host: str, port: int, tls: bool) -> Pool:
        return Pool(host, port, tls=tls)

    table = RoutingTable(pool)
    replicas = [
        {"id": f"{version}-{n}", "version": version, "url": f"http://127.0.0.1:9/{version}{n}"}
        for version, count in (("1", 3), ("2", 1))
        for n in range(count)
    ]
    info = RouteInfo(slug="demo", generation=4, weights=weights, replicas=replicas)
    table.apply_snapshot(RoutingSnapshot(endpoints=[info]), time.monotonic())
    return table


async def test_ten_percent_canary_serves_ten_percent_of_ten_thousand_requests() -> None:
    """The issue's figure: at 10 % over 10,000 requests the canary serves 10 % ± 1.5 %."""
    table = _table({"1": 90, "2": 10})
    route = table.routes["demo"]
    now = time.monotonic()
    counts = Counter(route.pick(now).version for _ in range(10_000))  # type: ignore[union-attr]
    assert abs(counts["2"] / 10_000 - 0.10) <= 0.015, counts
    table.close()


async def test_pinned_version_is_served_whatever_its_weight() -> None:
    """X-Cormorant-Version pins a version, even one without traffic (a canary under test);
    a version without ready replicas picks nothing."""
    table = _table({"1": 100})
    route = table.routes["demo"]
    now = time.monotonic()
    assert {route.pick(now).version for _ in range(200)} == {"1"}  # type: ignore[union-attr]
    assert {route.pick(now, version="2").version for _ in range(50)} == {"2"}  # type: ignore[union-attr]
    assert route.pick(now, version="7") is None
    table.close()


async def test_report_names_the_generation_and_requests_in_flight_per_version() -> None:
    """The handshake's answer: the applied generation and in-flight requests per version."""
    table = _table({"1": 90, "2": 10})
    canary = table.routes["demo"].replicas["2-0"]
    canary.begin(time.monotonic())
    report = table.report("demo", "gw")
    assert (report.generation, report.in_flight) == (4, {"2": 1})
    assert table.report("unknown", "gw").generation == -1
    table.close()


async def test_pinned_requests_and_version_header_through_the_gateway(
    workers: Any, start_gateway: Any
) -> None:
    """A client pins v2 with the header and every answer says v2 served it; an unknown version
    is a 503 that says which versions are routed."""
    async with start_gateway([demo_route(workers, "r1", "r3")]) as gateway:
        for _ in range(5):
            response = await gateway.predict(["whoami"], headers={"X-Cormorant-Version": "v2"})
            assert response.status_code == 200, response.text
            assert response.headers["x-cormorant-version"] == "v2"
            assert response.json()["prediction"] == "r3"
        plain = await gateway.predict(["whoami"])
        assert plain.headers["x-cormorant-version"] == "v1"
        missing = await gateway.predict(["whoami"], headers={"X-Cormorant-Version": "v9"})
        assert missing.status_code == 503
        assert "v1, v2" in missing.json()["error"]["message"]


async def test_gateway_answers_the_generation_handshake(workers: Any, start_gateway: Any) -> None:
    """Asked over NATS, the gateway reports the traffic generation it applied."""
    async with start_gateway([demo_route(workers, "r1", "r3")]) as gateway:
        await gateway.publish(
            TrafficChanged(endpoint="demo", generation=5, weights={"v1": 50, "v2": 50})
        )
        route = gateway.app.state.routing.routes["demo"]
        await eventually(lambda: route.generation == 5, what="generation 5 applied")
        query = GenerationQuery(endpoint="demo").model_dump_json().encode()
        reply = await gateway.nc.request(GENERATION_SUBJECT, query, timeout=5)
        report = GenerationReport.model_validate_json(reply.data)
        assert report.generation == 5
        assert report.gateway.endswith("gw-test")


async def test_a_user_stays_on_one_version_and_users_split_by_the_weights() -> None:
    """Sticky A/B: the same ``X-Cormorant-User`` always picks the same version, on a table
    whose weights came in another order too (another gateway); 2,000 users split 90/10
    within 2.5 points; as the canary grows no user leaves it."""
    table = _table({"1": 90, "2": 10})
    other = _table({"2": 10, "1": 90})
    route, other_route = table.routes["demo"], other.routes["demo"]
    now = time.monotonic()
    users = [f"user-{n}".encode() for n in range(2000)]
    first = {u: route.pick(now, user=u).version for u in users}  # type: ignore[union-attr]
    for user in users[:200]:
        assert {route.pick(now, user=user).version for _ in range(5)} == {first[user]}  # type: ignore[union-attr]
        assert other_route.pick(now, user=user).version == first[user]  # type: ignore[union-attr]
    share = sum(1 for v in first.values() if v == "2") / len(users)
    assert abs(share - 0.10) <= 0.025, share
    route.weights = {"1": 50, "2": 50}
    route.rebuild()
    grown = {u: route.pick(now, user=u).version for u in users}  # type: ignore[union-attr]
    assert all(grown[u] == "2" for u, v in first.items() if v == "2")
    assert abs(sum(1 for v in grown.values() if v == "2") / len(users) - 0.5) <= 0.05
    table.close()
    other.close()


async def test_sticky_user_header_through_the_gateway(workers: Any, start_gateway: Any) -> None:
    """Through the gateway on REST predict and V2 infer: each user's requests all reach one
    version, and at 50/50 both versions serve some of the users."""
    route = demo_route(workers, "r1", "r3", weights={"v1": 50, "v2": 50})
    async with start_gateway([route]) as gateway:
        seen: dict[str, set[str]] = {}
        for n in range(12):
            user = f"someone-{n}"
            for _ in range(4):
                response = await gateway.predict(["whoami"], headers={"X-Cormorant-User": user})
                assert response.status_code == 200, response.text
                seen.setdefault(user, set()).add(response.headers["x-cormorant-version"])
            tensor = {"name": "x", "shape": [1], "datatype": "BYTES", "data": ["whoami"]}
            v2 = await gateway.http.post(
                "/v2/models/demo/infer",
                json={"inputs": [tensor]},
                headers={**gateway.auth("demo"), "X-Cormorant-User": user},
            )
            assert v2.status_code == 200, v2.text
            seen[user].add(v2.headers["x-cormorant-version"])
        assert all(len(versions) == 1 for versions in seen.values()), seen
        assert set().union(*seen.values()) == {"v1", "v2"}, seen


async def test_a_shadow_version_is_never_picked_for_a_live_request() -> None:
    """The shadow version's replicas are in the route but out of the pick, with weights and
    without any (a first version); a TrafficChanged without shadow ends the mirroring."""
    table = _table({"1": 100})
    shadow = {"version": "2", "percent": 25}
    info = RouteInfo(
        slug="demo",
        generation=5,
        weights={},
        shadow=shadow,
        replicas=[
            {"id": "1-0", "version": "1", "url": "http://127.0.0.1:9/a"},
            {"id": "2-0", "version": "2", "url": "http://127.0.0.1:9/b"},
        ],
    )
    table.apply_snapshot(RoutingSnapshot(endpoints=[info]), time.monotonic())
    route = table.routes["demo"]
    now = time.monotonic()
    assert (route.shadow_version, route.shadow_share) == ("2", 0.25)
    assert {route.pick(now).version for _ in range(200)} == {"1"}  # type: ignore[union-attr]
    assert route.pick(now, version="2").version == "2"  # type: ignore[union-attr]
    table.apply_traffic(TrafficChanged(endpoint="demo", generation=6, weights={"1": 100}))
    assert (route.shadow_version, route.shadow_share) == (None, 0.0)
    table.close()


async def test_mirrored_requests_are_no_load_of_the_endpoint() -> None:
    """Load reports give the shadow version's replicas no concurrency and count no request
    for them: mirrored traffic never scales the endpoint."""
    table = _table({"1": 100})
    route = table.routes["demo"]
    route.set_shadow(ShadowTarget(version="2", percent=100))
    start = time.monotonic()
    table.routes["demo"].replicas["1-0"].begin(start)
    table.routes["demo"].replicas["2-0"].begin(start)
    route.requests = 1
    [report] = LoadReporter(table, lambda: None, gateway_id="gw").collect(start + 1.0, 1.0)
    assert report.concurrency["2-0"] == 0.0
    assert report.concurrency["1-0"] == pytest.approx(1.0)
    assert report.requests == 1
    table.close()
