"""Stream endpoints through the gateway: Kafka topics in, predictions out, a model swap with no
gap and no duplicate, autoscaling on consumer lag, refusals that name the numbers.

The stack (``cormorant up``) runs on the session's tansu broker through each endpoint's
``kafka.bootstrap_servers``; every test owns its topics. The full 100,000-message swap runs in
``bench/stream_swap.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from cormorant.kafka_bridge.testing import (
    create_topics,
    high_watermarks,
    message,
    produce,
    read_topic,
)
from cormorant.sdk import Client, Endpoint
from cormorant.sdk.client import CormorantAPIError
from cormorant.sdk.streams import Streams
from tests.conftest import Stack

MODEL = Path(__file__).parent / "models" / "stream"
PARTITIONS = 3
SWAP_MESSAGES = 20_000


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    """An admin client of the stack; every endpoint a test made is deleted after it."""
    with stack.client() as admin:
        before = {endpoint["slug"] for endpoint in admin.endpoints.list()}
        yield admin
        for endpoint in admin.endpoints.list():
            if endpoint["slug"] not in before:
                admin.endpoints.delete(endpoint["slug"])


@pytest.fixture
async def topics(kafka_bootstrap: str) -> tuple[str, str]:
    """A fresh 3-partition input topic and its output topic."""
    tag = uuid.uuid4().hex[:8]
    names = (f"in-{tag}", f"out-{tag}")
    await create_topics(kafka_bootstrap, {names[0]: PARTITIONS, names[1]: PARTITIONS})
    return names


def _refusal(call: Any) -> str:
    with pytest.raises(CormorantAPIError) as caught:
        call()
    assert caught.value.status_code == 400, caught.value
    return caught.value.message


async def test_topics_and_replicas_are_checked_against_the_broker(
    client: Client, kafka_bootstrap: str, topics: tuple[str, str]
) -> None:
    """A missing topic and a max above the partitions are refused, naming the topic and the
    numbers; nothing is created."""
    source, output = topics
    streams = Streams(client)
    before = len(client.endpoints.list())

    missing = await asyncio.to_thread(
        _refusal,
        lambda: streams.create(
            "typo",
            MODEL,
            bootstrap_servers=kafka_bootstrap,
            input_topics=[source, "no-such-topic"],
            output_topic=output,
        ),
    )
    assert "no-such-topic" in missing
    assert "do not exist" in missing

    too_many = await asyncio.to_thread(
        _refusal,
        lambda: streams.create(
            "greedy",
            MODEL,
            bootstrap_servers=kafka_bootstrap,
            input_topics=[source],
            output_topic=output,
            max_replicas=4,
        ),
    )
    assert "replicas.max: max (4) is above the 3 partition(s)" in too_many
    assert f"{source}: 3" in too_many
    assert len(client.endpoints.list()) == before


async def test_a_model_swap_mid_stream_has_no_gap_and_no_duplicate(
    stack: Stack, client: Client, kafka_bootstrap: str, topics: tuple[str, str]
) -> None:
    """20,000 ids on 3 partitions, version 2 swapped in while they flow: every id predicted
    exactly once, by version 1 before the swap and version 2 after; predict over HTTP is 409."""
    source, output = topics
    streams = Streams(client)
    created = await asyncio.to_thread(
        streams.create, "orders", MODEL, bootstrap_servers=kafka_bootstrap,
        input_topics=[source], output_topic=output, min_replicas=2, max_replicas=2,
    )  # fmt: skip
    slug = created["slug"]
    assert created["kind"] == "stream"
    assert created["kafka"]["partitions"] == {source: PARTITIONS}
    await _wait(lambda: client.endpoints.get(slug)["replicas"]["ready"] == 2, "2 replicas ready")

    # The gateway does not predict stream endpoints over HTTP.
    async with httpx.AsyncClient(base_url=stack.url) as http:
        answer = await http.post(
            f"/api/v1/endpoints/{slug}/predict",
            json={"input_params": "x"},
            headers={"Authorization": f"Bearer {created['token']}"},
        )
    assert answer.status_code == 409, answer.text
    assert "stream endpoint" in answer.json()["error"]["message"]

    sent = 0

    async def send(until: int) -> None:
        nonlocal sent
        upto = min(sent + 500, until)
        await produce(kafka_bootstrap, source, (message(i) for i in range(sent, upto)))
        sent = upto
        await asyncio.sleep(0.2)

    # A new version is stored and checked but starts nothing: its replicas would join the
    # consumer group before the rollout hands the stream over.
    version = await asyncio.to_thread(client.rollouts.create_version, slug, MODEL)
    assert version["version"] == "2"
    assert {r["version"] for r in streams.status(slug)["replicas"]} == {"1"}
    for bad, expected in (
        (lambda: client.rollouts.rollout(slug, "2", 50), "percent must be 100"),
        (lambda: client.rollouts.rollout(slug, "7", 100), "has no version '7'"),
        (lambda: client.rollouts.promote(slug), "nothing to promote"),
        (
            lambda: client.rollouts.create_version(slug, MODEL, replicas={"min": 1, "max": 1}),
            "a version runs with the endpoint's replicas",
        ),
    ):
        with pytest.raises(CormorantAPIError) as refused:
            await asyncio.to_thread(bad)
        assert refused.value.status_code in (400, 404, 409)
        assert expected in str(refused.value)
    assert client.rollouts.traffic(slug)["weights"] == {"1": 100}

    # A third before the rollout, messages all along it, and the last 4,000 after it.
    while sent < 6_000:
        await send(6_000)
    swapping = asyncio.create_task(asyncio.to_thread(client.rollouts.rollout, slug, "2", 100))
    while not swapping.done() and sent < SWAP_MESSAGES - 4_000:
        await send(SWAP_MESSAGES - 4_000)
    swapped = await swapping
    assert swapped["weights"] == {"2": 100}
    assert swapped["stable"] == "2"
    while sent < SWAP_MESSAGES:
        await send(SWAP_MESSAGES)

    seen = await _ids(kafka_bootstrap, output, SWAP_MESSAGES, within=180)
    missing = set(range(SWAP_MESSAGES)) - set(seen)
    duplicates = {number: count for number, count in seen.items() if count > 1}
    assert not missing, f"{len(missing)} missing"
    assert not duplicates, f"{len(duplicates)} duplicates"
    versions = Counter(
        r.headers["cormorant-version"] for r in await read_topic(kafka_bootstrap, output)
    )
    assert set(versions) == {b"1", b"2"}, versions

    endpoint = client.endpoints.get(slug)
    assert endpoint["version"] == "2"
    status = streams.status(slug)
    assert {replica["version"] for replica in status["replicas"]} == {"2"}
    assert status["group"].startswith(f"cormorant-{slug}-")
    shown = stack.cli("stream", "status", slug)
    assert shown.returncode == 0, shown.stderr
    assert status["group"] in shown.stdout

    # Prometheus scrapes the bridge replicas; their predictions are logged like web ones.
    deployer = json.loads((stack.data_dir / "stack.json").read_text())["services"]["deployer"]
    async with httpx.AsyncClient(auth=stack.internal()) as http:
        groups = (await http.get(deployer["url"] + "/internal/prometheus/targets")).json()
    scraped = [g for g in groups if g["labels"]["endpoint"] == slug]
    assert {g["labels"]["version"] for g in scraped} == {"2"}
    logged = Endpoint(slug, url=stack.url, api_key=stack.admin_key)
    await _wait(lambda: bool(logged.logs(limit=5, version="2")), "v2 predictions logged")

    # A rollback is the same handover, back to version 1 (here from the CLI).
    back = await asyncio.to_thread(stack.cli, "rollback", slug)
    assert back.returncode == 0, back.stdout + back.stderr
    assert client.rollouts.traffic(slug)["weights"] == {"1": 100}
    assert client.endpoints.get(slug)["version"] == "1"
    assert {r["version"] for r in streams.status(slug)["replicas"]} == {"1"}


async def test_lag_scales_replicas_up_to_max_and_back_to_min(
    client: Client, kafka_bootstrap: str, topics: tuple[str, str]
) -> None:
    """A backlog 10x the lag target scales 1 → 3 replicas (the partitions), and back to 1 once
    it is worked off; the 1,000 messages on the topic before the endpoint existed are never
    predicted."""
    source, output = topics
    await produce(kafka_bootstrap, source, (message(i) for i in range(1_000)))
    streams = Streams(client)
    created = await asyncio.to_thread(
        streams.create, "backlog", MODEL, bootstrap_servers=kafka_bootstrap,
        input_topics=[source], output_topic=output, function="slow",
        env={"STREAM_DELAY_MS": "5"}, min_replicas=1, max_replicas=3, lag_target=200,
    )  # fmt: skip
    slug = created["slug"]
    await asyncio.to_thread(client.endpoints.wait_until_running, slug)

    fresh = range(10_000, 14_000)
    await produce(kafka_bootstrap, source, (message(i) for i in fresh))
    await _wait(lambda: client.endpoints.get(slug)["replicas"]["desired"] == 3, "scaled to 3")
    await _wait(lambda: client.endpoints.get(slug)["replicas"]["ready"] == 3, "3 replicas ready")

    seen = await _ids(kafka_bootstrap, output, len(fresh), within=90)
    assert set(seen) == set(fresh), "predicted messages from before the endpoint existed"
    await _wait(lambda: streams.status(slug)["lag_total"] == 0, "lag worked off")
    await _wait(lambda: client.endpoints.get(slug)["replicas"]["desired"] == 1, "back to 1")


async def test_a_killed_replica_is_restarted_and_loses_nothing(
    client: Client, kafka_bootstrap: str, topics: tuple[str, str]
) -> None:
    """SIGKILL the only replica mid-stream: the deployer restarts it, every id is predicted,
    and the ids predicted twice are at most the one uncommitted batch."""
    source, output = topics
    streams = Streams(client)
    created = await asyncio.to_thread(
        streams.create, "crashy", MODEL, bootstrap_servers=kafka_bootstrap,
        input_topics=[source], output_topic=output, function="slow",
        env={"STREAM_DELAY_MS": "1"}, min_replicas=1, max_replicas=1,
    )  # fmt: skip
    slug = created["slug"]
    await asyncio.to_thread(client.endpoints.wait_until_running, slug)
    group = streams.status(slug)["group"]
    total = 6_000
    await produce(kafka_bootstrap, source, (message(i) for i in range(total)))
    await _wait_async(lambda: _output_size(kafka_bootstrap, output, 1_500), "predicting")

    [victim] = [p for p in psutil.process_iter(["cmdline"]) if group in (p.info["cmdline"] or [])]
    victim.kill()

    seen = await _ids(kafka_bootstrap, output, total, within=90)
    assert set(seen) == set(range(total))
    assert sum(count - 1 for count in seen.values()) <= 500  # one batch (max_batch)
    events = client.endpoints.get(slug)["events"]
    assert any(e["state"] == "crashed" and "SIGKILL" in (e["reason"] or "") for e in events)
    assert client.endpoints.get(slug)["restarts"] == 1


async def _wait(check: Any, what: str, *, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(0.3)


async def _wait_async(check: Any, what: str, *, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(0.3)


async def _output_size(bootstrap: str, topic: str, at_least: int) -> bool:
    return sum((await high_watermarks(bootstrap, topic)).values()) >= at_least


async def _ids(bootstrap: str, topic: str, count: int, *, within: float) -> Counter[int]:
    """How often each id is in ``topic`` once ``count`` distinct ids are there."""
    seen: Counter[int] = Counter()

    async def enough() -> bool:
        if not await _output_size(bootstrap, topic, count):
            return False
        seen.clear()
        seen.update(json.loads(r.value or b"{}")["id"] for r in await read_topic(bootstrap, topic))
        return len(seen) >= count

    try:
        await _wait_async(enough, f"{count} ids in {topic}", within=within)
    except AssertionError as exc:
        # Slow (a loaded machine) and lost read differently: say which it was.
        stored = sum((await high_watermarks(bootstrap, topic)).values())
        raise AssertionError(f"{exc}: {len(seen)} distinct of {stored} records") from None
    return seen
