"""Each ready replica's CPU, memory and open files, read from its own /metrics on request."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from deployer_testkit import DeployerHarness
from sqlalchemy import update

from cormorant.common.db.models.endpoints import Replica
from cormorant.deployer.api.usage import SCRAPE_TIMEOUT_S, parse_usage


async def test_usage_of_a_replica_counts_every_worker_process(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """With two workers, whichever answers lists the master and both workers, summed."""
    await deployer.create(name="usage", source=str(model_dir), server={"workers": 2})
    await deployer.wait_running("usage")
    [ready] = (await deployer.route("usage"))["replicas"]

    seen: list[set[int]] = []
    # Several reads: each may be answered by either worker, and all must agree on the pids.
    for _ in range(4):
        response = await deployer.client.get("/api/v1/endpoints/usage/replicas/usage")
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["slug"] == "usage"
        [replica] = answer["replicas"]
        assert (replica["id"], replica["version"], replica["state"]) == (ready["id"], "1", "ready")
        assert replica["error"] is None
        processes = replica["processes"]
        # The gunicorn master and its two workers (more if predict spawned any).
        assert len(processes) >= 3
        assert all(p["memory_bytes"] > 1_000_000 and p["cpu_seconds"] >= 0 for p in processes)
        assert replica["memory_bytes"] == pytest.approx(sum(p["memory_bytes"] for p in processes))
        assert replica["cpu_seconds"] == pytest.approx(sum(p["cpu_seconds"] for p in processes))
        # Two processes each importing Python and the model hold well over 20 MB together.
        assert replica["memory_bytes"] > 20_000_000
        assert replica["open_fds"] >= 9
        seen.append({p["pid"] for p in processes})
    assert all(pids == seen[0] for pids in seen)

    missing = await deployer.client.get("/api/v1/endpoints/nope/replicas/usage")
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]["message"]


def test_only_per_pid_finite_samples_are_read() -> None:
    """Unlabelled or foreign-labelled look-alikes, garbage and non-finite values are skipped."""
    text = (
        "# HELP cormorant_replica_process_cpu_seconds_total CPU time.\n"
        'cormorant_replica_process_cpu_seconds_total{pid="7"} 1.5\n'
        'cormorant_replica_process_cpu_seconds_total{pid="8"} 0.5\n'
        'cormorant_replica_process_resident_memory_bytes{pid="7"} 2048 1700000000\n'
        'cormorant_replica_process_resident_memory_bytes{fake="1"} 9\n'
        "process_cpu_seconds_total 99\n"
        'cormorant_replica_process_open_fds{pid="7"} NaN\n'
        'cormorant_replica_process_cpu_seconds_total_extra{pid="7"} 7\n'
        "garbage\n"
    )
    by_pid = {p.pid: p for p in parse_usage(text)}
    assert set(by_pid) == {7, 8}
    assert (by_pid[7].cpu_seconds, by_pid[7].memory_bytes, by_pid[7].open_fds) == (1.5, 2048, None)
    assert by_pid[8].cpu_seconds == 0.5


@asynccontextmanager
async def dripping_replica(requests: list[bytes]) -> AsyncIterator[str]:
    """A real HTTP server on 127.0.0.1 that sends its /metrics one byte at a time, forever."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n")
        writer.write(b"Content-Length: 100000000\r\n\r\n")
        try:
            # Each byte comes well within the read timeout, so only a total bound stops it.
            while True:
                writer.write(b"#")
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"
        server.close()


async def test_a_dripping_replica_is_cut_off_at_the_bound(
    deployer: DeployerHarness, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica that never finishes its answer gets an error, not a hung Monitoring tab."""
    await deployer.create(name="drip", source=str(model_dir), server={"workers": 1})
    await deployer.wait_running("drip")
    [ready] = (await deployer.route("drip"))["replicas"]
    # A proxy from the environment would swallow the request: replicas are reached directly.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    requests: list[bytes] = []
    async with dripping_replica(requests) as url:
        # The route reads the stored address: point it at the dripping server.
        store = deployer.state["endpoints"].store
        async with store.sessions() as session, session.begin():
            await session.execute(
                update(Replica).where(Replica.id == uuid.UUID(ready["id"])).values(url=url)
            )
        # The outer bound only keeps a regression from hanging the suite.
        async with asyncio.timeout(SCRAPE_TIMEOUT_S * 10):
            response = await deployer.client.get("/api/v1/endpoints/drip/replicas/usage")
    assert response.status_code == 200, response.text
    [usage] = response.json()["replicas"]
    assert usage["id"] == ready["id"]
    assert usage["error"] == f"its /metrics did not answer in full within {SCRAPE_TIMEOUT_S:g} s"
    assert usage["processes"] == []
    assert usage["cpu_seconds"] is None
    [request] = requests
    assert request.startswith(b"GET /metrics ")
    assert b"accept-encoding: identity" in request.lower()
