"""A SIGKILLed replica loses no answered prediction: every prediction a client got a 200 for
is in the prediction log exactly once, however often its replica's whole process group is
killed under load (the spool, ``cormorant.common.bus.spool``, replayed by the deployer)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter

import asyncpg
import httpx

from tests.conftest import Stack
from tests.test_prediction_log import ECHO, _drained, _post
from tests.test_replicas import replica_pids
from tests.test_web_endpoints import deploy

KILLS = 3
CLIENTS = 4
BETWEEN_KILLS = 300
"""Predictions answered between two kills (and after the last one)."""


class Load:
    """Keep-alive clients predicting until stopped; the request ids answered with a 200."""

    def __init__(self, stack: Stack, slug: str, token: str) -> None:
        url = httpx.URL(stack.url)
        self.host, self.port = url.host, url.port
        self.head = (
            f"POST /api/v1/endpoints/{slug}/predict HTTP/1.1\r\nHost: {url.host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        ).encode()
        self.answered: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.stop = asyncio.Event()

    async def client(self, number: int) -> None:
        sent = 0
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.statuses[0] += 1
                continue
            try:
                while not self.stop.is_set():
                    sent += 1
                    status, answer = await _post(reader, writer, self.head, [number, sent])
                    self.statuses[status] += 1
                    if status == 200:
                        assert answer["prediction"] == [number, sent]
                        self.answered.append(answer["request_id"])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.statuses[0] += 1  # the gateway closed the connection: open another
            finally:
                writer.close()

    async def until_answered(self, count: int, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while len(self.answered) < count:
            assert time.monotonic() < deadline, f"{len(self.answered)} answers of {count}"
            await asyncio.sleep(0.05)  # polling the load's progress


async def _replica(slug: str, other_than: int | None, within: float = 60) -> int:
    """The pid of the replica serving ``slug`` once it is not ``other_than``."""
    deadline = time.monotonic() + within
    while True:
        pids = await asyncio.to_thread(replica_pids, slug)
        if len(pids) == 1 and pids[0] != other_than:
            return pids[0]
        assert time.monotonic() < deadline, f"replica of {slug}: {pids}"
        await asyncio.sleep(0.1)  # polling for the replacement process


def test_a_sigkilled_replica_loses_no_answered_prediction(stack: Stack) -> None:
    """The echo model under steady load through the gateway; its replica's process group is
    SIGKILLed three times (the deployer restarts it); afterwards each request id answered
    with a 200 is in the log exactly once."""
    slug, token = deploy(stack, ECHO, "spool-kill")

    async def scenario() -> tuple[list[str], dict[str, int]]:
        load = Load(stack, slug, token)
        clients = [asyncio.create_task(load.client(n)) for n in range(CLIENTS)]
        try:
            pid = await _replica(slug, None)
            for kill in range(KILLS):
                await load.until_answered((kill + 1) * BETWEEN_KILLS)
                os.killpg(pid, signal.SIGKILL)
                pid = await _replica(slug, pid)
            await load.until_answered((KILLS + 1) * BETWEEN_KILLS, within=120)
        finally:
            load.stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*clients, return_exceptions=True), 30)
        answered = list(load.answered)
        assert load.statuses[200] == len(answered)
        db = await asyncpg.connect(stack.database_url.replace("+asyncpg", ""))
        try:
            endpoint_id = await db.fetchval("SELECT id FROM endpoints WHERE slug = $1", slug)
            drained = await _drained(stack)
            deadline = time.monotonic() + 60
            while True:
                rows = await db.fetch(
                    "SELECT request_id, count(*) AS n FROM predictions WHERE endpoint_id = $1"
                    " GROUP BY request_id",
                    endpoint_id,
                )
                logged = {row["request_id"]: row["n"] for row in rows}
                if set(answered) <= set(logged) and await drained():
                    return answered, logged
                if time.monotonic() > deadline:
                    return answered, logged
                await asyncio.sleep(0.2)  # polling the ingest
        finally:
            await db.close()

    answered, logged = asyncio.run(scenario())
    assert len(answered) >= (KILLS + 1) * BETWEEN_KILLS
    missing = [request_id for request_id in answered if request_id not in logged]
    twice = {request_id: n for request_id, n in logged.items() if n != 1}
    assert not missing, f"{len(missing)} answered predictions not logged, e.g. {missing[:5]}"
    assert not twice, f"logged more than once: {list(twice.items())[:5]}"
