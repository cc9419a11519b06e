"""The prediction log end to end: predictions through the gateway become exactly one row each.

A stack of its own (`cormorant up`), since predictlog and nats-server are killed mid-load: the
supervisor restarts them as it would on a laptop. Predictions are sent like a client would,
over keep-alive connections to the gateway; the request ids the gateway answers with are
counted in PostgreSQL, and the log is read back through the SDK and the CLI.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import psutil
import pytest

from cormorant.common.db import asyncpg_dsn
from cormorant.sdk import Endpoint
from tests.conftest import ROOT, Stack, stack_environment

N = 20_000
CONNECTIONS = 16
ECHO = ROOT / "tests" / "models" / "echo"
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\x00")


@pytest.fixture(scope="module")
def log_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of this module's own; unacked events come back after 3 s instead of 10."""
    data_dir = tmp_path_factory.mktemp("log-stack") / "data"
    env = stack_environment(data_dir)
    env["CORMORANT_PREDICTLOG_ACK_WAIT_S"] = "3"
    up = subprocess.run(
        [sys.executable, "-m", "cormorant.sdk.cli", "up", "--no-example"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        info = read_stack(data_dir)
        env["CORMORANT_URL"] = info["services"]["gateway"]["url"]
        env["CORMORANT_API_KEY"] = info["admin_key"]
        yield Stack(env["CORMORANT_URL"], info["admin_key"], env, data_dir, info["database_url"])
    finally:
        subprocess.run(
            [sys.executable, "-m", "cormorant.sdk.cli", "down"],
            env=env, cwd=ROOT, capture_output=True, timeout=240,
        )  # fmt: skip


@pytest.fixture(scope="module")
def echo(log_stack: Stack) -> Endpoint:
    """The echo model, deployed with the CLI (one replica, one worker process)."""
    result = log_stack.cli("deploy", str(ECHO), "--name", "echo", "--server", "workers=1")
    assert result.returncode == 0, result.stdout + result.stderr
    slug = result.stdout.split("Endpoint ", 1)[1].split(" created", 1)[0]
    token = result.stdout.split("(shown once):", 1)[1].split()[0]
    return Endpoint(slug, token=token, url=log_stack.url, api_key=log_stack.admin_key)


def read_stack(data_dir: Path) -> dict[str, Any]:
    """The supervisor's stack file."""
    info: dict[str, Any] = json.loads((data_dir / "stack.json").read_text())
    return info


def pid_of(stack: Stack, kind: str, name: str) -> int:
    """PID of a service (``kind="services"``) or server (``"servers"``) of the stack."""
    info = read_stack(stack.data_dir)
    return int(info[kind][name]["pid"])


def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    """Poll until ``check()`` holds; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what}")
        time.sleep(0.1)  # polling interval of a deadline wait


# ---------------------------------------------------------------------- load


class Load:
    """Predictions sent over keep-alive connections to the gateway, like a client's."""

    def __init__(self, url: str, slug: str, token: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = f"/api/v1/endpoints/{slug}/predict"
        self.token = token
        self.request_ids: list[str] = []
        self.statuses: dict[int, int] = {}
        self.quarter = asyncio.Event()
        """Set once a quarter of the predictions are answered."""

    def request(self, value: object) -> bytes:
        """One HTTP/1.1 predict request for ``value``."""
        body = json.dumps({"input_params": value}).encode()
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def send(self, count: int, connections: int = CONNECTIONS) -> None:
        """Send ``count`` predictions, ``connections`` at a time; keep their request ids."""
        remaining = iter(range(count))

        async def connection() -> None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                for i in remaining:
                    writer.write(self.request(i))
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                    status = int(head.split(" ", 2)[1])
                    fields = dict(
                        line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line
                    )
                    await reader.readexactly(int(fields["content-length"]))
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    self.request_ids.append(fields["x-request-id"])
                    if len(self.request_ids) == count // 4:
                        self.quarter.set()
            finally:
                writer.close()

        await asyncio.gather(*(connection() for _ in range(connections)))


def run_load(stack: Stack, echo: Endpoint, fault: Callable[[], None] | None) -> Load:
    """20,000 predictions through the gateway; ``fault`` runs once a quarter are answered."""
    assert echo.slug is not None
    assert echo.token is not None
    load = Load(stack.url, echo.slug, echo.token)

    async def main() -> None:
        sending = asyncio.create_task(load.send(N))
        if fault is not None:
            await load.quarter.wait()
            await asyncio.to_thread(fault)
            assert not sending.done(), "the load ended before the fault"
        await sending

    asyncio.run(main())
    assert load.statuses == {200: N}, load.statuses
    assert len(set(load.request_ids)) == N
    return load


# ---------------------------------------------------------------------- the log


async def _counts(database_url: str, request_ids: list[str]) -> tuple[int, int]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        row = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT request_id) FROM predictions"
            " WHERE request_id = ANY($1::text[])",
            request_ids,
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row[0]), int(row[1])


def stored(stack: Stack, request_ids: list[str]) -> tuple[int, int]:
    """Rows of these requests in the log, and their distinct request ids."""
    return asyncio.run(_counts(stack.database_url, request_ids))


def assert_logged_once(stack: Stack, load: Load) -> None:
    """Every answered request is one row: no loss, no duplicate."""
    wait_for(lambda: stored(stack, load.request_ids)[0] >= N, 90, f"{N} rows")
    assert stored(stack, load.request_ids) == (N, N)


def test_20000_predictions_become_20000_rows(log_stack: Stack, echo: Endpoint) -> None:
    """The plain case, under load through the gateway."""
    assert_logged_once(log_stack, run_load(log_stack, echo, fault=None))


def test_20000_rows_when_predictlog_is_killed_mid_load(log_stack: Stack, echo: Endpoint) -> None:
    """predictlog SIGKILLed with a quarter answered; the supervisor starts it again."""
    victim = pid_of(log_stack, "services", "predictlog")

    def kill() -> None:
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not psutil.pid_exists(victim) or _zombie(victim), 10, "it to die")

    load = run_load(log_stack, echo, fault=kill)
    wait_for(lambda: pid_of(log_stack, "services", "predictlog") != victim, 30, "a new predictlog")
    assert_logged_once(log_stack, load)


def test_20000_rows_when_nats_is_killed_mid_load(log_stack: Stack, echo: Endpoint) -> None:
    """nats-server SIGKILLed with a quarter answered; the supervisor restarts it on its store."""
    victim = pid_of(log_stack, "servers", "nats")

    def kill() -> None:
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: pid_of(log_stack, "servers", "nats") != victim, 30, "a new nats-server")

    assert_logged_once(log_stack, run_load(log_stack, echo, fault=kill))


def _zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


# ---------------------------------------------------------------------- reading it back


async def _per_minute(stack: Stack, slug: str | None, since: datetime) -> dict[datetime, int]:
    conn = await asyncpg.connect(asyncpg_dsn(stack.database_url))
    try:
        rows = await conn.fetch(
            "SELECT date_trunc('minute', p.received_at) AS t, count(*) AS n FROM predictions p"
            " JOIN endpoints e ON e.id = p.endpoint_id WHERE e.slug = $1 AND p.received_at >= $2"
            " GROUP BY 1",
            slug,
            since,
        )
    finally:
        await conn.close()
    return {row["t"]: int(row["n"]) for row in rows}


def test_charts_agree_with_the_log(log_stack: Stack, echo: Endpoint) -> None:
    """requests_per_minute through the SDK is the rows counted per minute, minute by minute."""
    chart = echo.charts("requests_per_minute", window="1h")
    points = chart["points"]
    starts = [datetime.fromisoformat(point["t"]) for point in points]
    counted = asyncio.run(_per_minute(log_stack, echo.slug, starts[0]))
    assert [point["value"] for point in points] == [counted.get(t, 0) for t in starts]
    assert sum(point["value"] for point in points) >= 3 * N


def test_csv_export_round_trip_escapes_formulas(
    log_stack: Stack, echo: Endpoint, tmp_path: Path
) -> None:
    """`cormorant export` writes every row once; a formula-looking cell comes out escaped."""
    formula = '=HYPERLINK("http://example.invalid")'
    echo.predict(-1)  # the JSON input `-1` would start a formula in a spreadsheet
    echo.predict(formula)
    wait_for(
        lambda: [item["input"] for item in echo.logs(limit=2)] == [formula, -1], 30, "both logged"
    )

    out = tmp_path / "echo.csv"
    result = log_stack.cli("export", str(echo.slug), str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    total = sum(
        asyncio.run(_per_minute(log_stack, echo.slug, datetime(2000, 1, 1, tzinfo=UTC))).values()
    )
    assert len(rows) == total >= 2
    assert len({row["request_id"] for row in rows}) == len(rows)
    assert not [cell for row in rows for cell in row.values() if cell.startswith(FORMULA_TRIGGERS)]
    inputs = [row["input"] for row in rows[-2:]]
    assert inputs == ["'-1", '"=HYPERLINK(\\"http://example.invalid\\")"']


def test_logs_follow_prints_a_new_prediction_with_its_trace(
    log_stack: Stack, echo: Endpoint
) -> None:
    """`cormorant logs SLUG --follow` prints a prediction made after it started; the log
    keeps the trace id the client sent in its W3C ``traceparent``."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    follow = subprocess.Popen(
        [sys.executable, "-m", "cormorant.sdk.cli", "logs", str(echo.slug), "--follow",
         "--limit", "1"],
        env={**log_stack.env, "COLUMNS": "200"}, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert follow.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in follow.stdout or ()])
    reader.start()
    try:
        first = lines.get(timeout=30)  # the newest prediction already logged
        assert " 200 " in first, first
        answer = httpx.post(
            f"{log_stack.url}/api/v1/endpoints/{echo.slug}/predict",
            json={"input_params": "followed"},
            headers={
                "Authorization": f"Bearer {echo.token}",
                "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
            },
        )
        assert answer.status_code == 200, answer.text
        line = lines.get(timeout=30)
        assert '"followed" -> "followed"' in line, line
    finally:
        follow.terminate()
        follow.wait(10)
        reader.join(10)
    [logged] = echo.logs(limit=1, q="followed")
    assert (logged["request_id"], logged["trace_id"]) == (answer.json()["request_id"], trace_id)
