"""Every prediction recorded, end to end through the gateway of a stack of this module's own:
20,000 predictions under concurrent load become exactly 20,000 rows while predictlog is
SIGKILLed and nats-server is SIGKILLed mid-load (the supervisor restarts both); the charts
agree with the rows, and the CLI's CSV export re-imports with every row, formulas escaped."""

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
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC
from typing import Any

import asyncpg
import httpx
import nats
import pytest

from cormorant.common.bus import PREDICTIONS_STREAM
from cormorant.devstack.testing.waits import eventually
from cormorant.sdk import Endpoint
from tests.conftest import ROOT, Stack, running_stack

N = 20_000
CONCURRENCY = 32
FORMULA = "=1+1"
ECHO = ROOT / "tests" / "models" / "echo"
# A spreadsheet runs a cell starting with one of these (OWASP CSV injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\x00")


def deploy_echo(stack: Stack) -> Endpoint:
    """The echo model, deployed with the CLI (one gunicorn worker)."""
    result = stack.cli("deploy", str(ECHO), "--name", "echo", "--server", "workers=1")
    assert result.returncode == 0, result.stdout + result.stderr
    slug = result.stdout.split("Endpoint ", 1)[1].split(" created", 1)[0]
    token = result.stdout.split("(shown once):", 1)[1].split()[0]
    return Endpoint(slug, token=token, url=stack.url, api_key=stack.admin_key)


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of this module's own: its services get killed, which no other test should see."""
    with running_stack(tmp_path_factory.mktemp("logstack") / "data", cwd=ROOT) as stack:
        yield stack


@pytest.fixture(scope="module")
def echo(own_stack: Stack) -> Endpoint:
    """The echo model, deployed with the CLI."""
    return deploy_echo(own_stack)


def _restarted(stack: Stack, kind: str, name: str, old_pid: int) -> Callable[[], Awaitable[bool]]:
    """True once the supervisor has started ``name`` again under a new pid."""

    async def check() -> bool:
        try:
            pid = stack.described()[kind][name]["pid"]
        except (json.JSONDecodeError, KeyError):  # the file is being rewritten
            return False
        if pid == old_pid or pid is None:
            return False
        if kind == "servers":
            return True
        url = stack.described()["services"][name]["url"]
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(url + "/healthz", timeout=1.0)).status_code == 200
        except httpx.HTTPError:
            return False

    return check


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, value: Any
) -> tuple[int, dict[str, Any]]:
    """One keep-alive HTTP/1.1 request; httpx's CPU per request would make the test the load."""
    body = json.dumps({"input_params": value}).encode()
    writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    header = await reader.readuntil(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    length = int(header.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    return status, json.loads(await reader.readexactly(length))


async def _load(
    stack: Stack, echo: Endpoint, disrupt: dict[int, Callable[[], None]], n: int
) -> list[str]:
    """``n`` predictions from CONCURRENCY connections; ``disrupt[k]`` runs once k are answered."""
    request_ids: list[str] = []
    statuses: Counter[int] = Counter()
    next_input = iter(range(n - 1))  # and the formula first: n in all
    url = httpx.URL(stack.url)
    head = (
        f"POST /api/v1/endpoints/{echo.slug}/predict HTTP/1.1\r\nHost: {url.host}\r\n"
        f"Authorization: Bearer {echo.token}\r\nContent-Type: application/json\r\n"
    ).encode()

    async def client(first: Any = None) -> None:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            inputs = [first] if first is not None else next_input
            for value in inputs:
                status, answer = await _post(reader, writer, head, value)
                statuses[status] += 1
                if status == 200:
                    assert answer["prediction"] == value
                request_ids.append(answer.get("request_id", ""))
                action = disrupt.pop(len(request_ids), None)
                if action is not None:
                    action()
        finally:
            writer.close()

    await client(FORMULA)
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    assert statuses == {200: n}, statuses
    return request_ids


def _logged_at_least(
    db: asyncpg.Connection, endpoint_id: object, n: int
) -> Callable[[], Awaitable[bool]]:
    """A check: the predictions table holds at least ``n`` rows of the endpoint."""

    async def check() -> bool:
        count = await db.fetchval(
            "SELECT count(*) FROM predictions WHERE endpoint_id = $1", endpoint_id
        )
        return bool(count >= n)

    return check


async def _drained(stack: Stack) -> Callable[[], Awaitable[bool]]:
    """True once predictlog's durable consumer has nothing pending or unacknowledged."""
    nats_url = stack.described()["nats_url"]

    async def check() -> bool:
        try:
            nc = await nats.connect(nats_url, allow_reconnect=False, connect_timeout=1)
        except Exception:  # nats-server restarting: not ready yet
            return False
        try:
            js = nc.jetstream()
            for info in await js.consumers_info(PREDICTIONS_STREAM):
                if info.num_pending or info.num_ack_pending:
                    return False
            return True
        finally:
            await nc.close()

    return check


Counted = tuple[list[str], list[asyncpg.Record], int, int]


def predict_across_kills(stack: Stack, echo: Endpoint, n: int) -> Counted:
    """Send ``n`` predictions, SIGKILL predictlog at a third and nats-server at two thirds,
    wait for both to come back and the ingest to drain; the answered request ids, the rows per
    minute, the row count and the distinct request ids in PostgreSQL."""

    def kill(kind: str, name: str) -> Callable[[], None]:
        def action() -> None:
            pid = stack.described()[kind][name]["pid"]
            killed[name] = pid
            os.kill(pid, signal.SIGKILL)

        return action

    killed: dict[str, int] = {}

    async def scenario() -> Counted:
        ids = await _load(
            stack,
            echo,
            {n // 3: kill("services", "predictlog"), 2 * n // 3: kill("servers", "nats")},
            n,
        )
        assert set(killed) == {"predictlog", "nats"}
        # Both come back by themselves: the supervisor restarts what exits.
        await eventually(
            _restarted(stack, "services", "predictlog", killed["predictlog"]),
            within=60, what="predictlog restarted",
        )  # fmt: skip
        await eventually(
            _restarted(stack, "servers", "nats", killed["nats"]), within=60, what="nats restarted"
        )
        db = await asyncpg.connect(stack.database_url.replace("+asyncpg", ""))
        try:
            endpoint_id = await db.fetchval("SELECT id FROM endpoints WHERE slug = $1", echo.slug)
            all_rows = _logged_at_least(db, endpoint_id, n)
            await eventually(all_rows, within=60 + n / 1000, what=f"{n} rows")
            await eventually(await _drained(stack), within=30, what="the ingest to drain")
            rows = await db.fetchval(
                "SELECT count(*) FROM predictions WHERE endpoint_id = $1", endpoint_id
            )
            per_minute = await db.fetch(
                "SELECT date_trunc('minute', received_at) AS t, count(*) AS n FROM predictions"
                " WHERE endpoint_id = $1 GROUP BY 1",
                endpoint_id,
            )
            distinct = await db.fetchval(
                "SELECT count(DISTINCT request_id) FROM predictions WHERE endpoint_id = $1",
                endpoint_id,
            )
        finally:
            await db.close()
        return ids, per_minute, rows, distinct

    return asyncio.run(scenario())


def test_20000_predictions_become_20000_rows_across_kills(own_stack: Stack, echo: Endpoint) -> None:
    """Exactly one row per answered prediction while predictlog and nats-server are killed
    mid-load; the charts count the same rows per minute; the CSV export re-imports whole."""
    stack = own_stack
    ids, per_minute, row_count, distinct = predict_across_kills(stack, echo, N)
    assert len(ids) == len(set(ids)) == N
    assert row_count == N
    assert distinct == N

    # Charts agree with the log, minute by minute.
    points = echo.charts("requests_per_minute", window="1h")["points"]
    charted = {p["t"]: p["value"] for p in points if p["value"]}
    counted = {
        row["t"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:00Z"): row["n"] for row in per_minute
    }
    assert sum(charted.values()) == N
    assert charted == counted, (charted, counted)

    # The CLI's export: every row, re-importable, the formula-looking input escaped.
    out = stack.data_dir.parent / "echo.csv"
    assert echo.slug is not None
    exported = stack.cli("export", echo.slug, str(out))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    with open(out, newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    assert len(records) == N
    assert {r["request_id"] for r in records} == set(ids)
    formula_rows = [r for r in records if FORMULA in r["input"]]
    assert len(formula_rows) == 1
    for record in records:
        for cell in record.values():
            assert not cell.startswith(FORMULA_TRIGGERS), record


def test_logs_follow_prints_a_new_prediction_with_its_trace(
    own_stack: Stack, echo: Endpoint
) -> None:
    """`cormorant logs SLUG --follow` prints a prediction made after it started; the log
    keeps the trace id the client sent in its W3C ``traceparent``."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    # The follower first prints the newest prediction already logged: make sure there is one,
    # whatever ran before this test.
    echo.predict("before")
    asyncio.run(
        eventually(lambda: echo.logs(limit=1, q="before"), within=60, what="a logged prediction")
    )
    follow = subprocess.Popen(
        [sys.executable, "-m", "cormorant.sdk.cli", "logs", str(echo.slug), "--follow",
         "--limit", "1"],
        env={**own_stack.env, "COLUMNS": "200"}, cwd=ROOT, stdout=subprocess.PIPE,
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
            f"{own_stack.url}/api/v1/endpoints/{echo.slug}/predict",
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
