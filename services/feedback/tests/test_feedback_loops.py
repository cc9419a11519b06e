"""Feedback loops end to end in-process: real PostgreSQL, dataset files in a local directory,
the app's lifespan (and scheduler) running, time from a clock the test sets."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pyarrow.parquet as pq
import pytest
from asgi_lifespan import LifespanManager

from cormorant.common.db import PredictionRow, asyncpg_dsn, insert_predictions, upgrade
from cormorant.common.events import FeedbackRunFinished, decode
from cormorant.common.internal import InternalAuth, generate_internal_secret
from cormorant.feedback.app import create_app
from cormorant.feedback.settings import FeedbackSettings
from cormorant.feedback.state import FeedbackState

SLUG = "iris"
LOOPS = f"/api/v1/endpoints/{SLUG}/feedback-loops"
T0 = datetime(2027, 3, 27, 12, 0, tzinfo=UTC)


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Service:
    """A running Feedback app: its HTTP client, state, clock and database."""

    http: httpx.AsyncClient
    state: FeedbackState
    clock: Clock
    dsn: str
    endpoint_id: uuid.UUID
    counter: Iterator[int] = field(default_factory=lambda: iter(range(1_000_000)))

    async def store(self, *request_ids: str, received_at: datetime | None = None) -> None:
        """Log predictions with these ids, committed now."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await insert_predictions(conn, [self.row(r, received_at) for r in request_ids])
        finally:
            await conn.close()

    def row(self, request_id: str, received_at: datetime | None = None) -> PredictionRow:
        """A prediction of the endpoint."""
        n = next(self.counter)
        return PredictionRow(
            request_id=request_id,
            received_at=received_at or datetime.now(UTC),
            endpoint_id=self.endpoint_id,
            status=200,
            latency_ms=1.5,
            version=1 + n % 2,
            input=[n, "text, with a comma"],
            output={"label": n},
        )

    async def dataset_file(self, dataset: str, version: int, path: str) -> bytes:
        """The content of a dataset file."""
        answer = await self.http.get(f"/api/v1/datasets/{dataset}/versions/{version}/files/{path}")
        assert answer.status_code == 200, answer.text
        return answer.content

    async def exported_ids(self, dataset: str, version: int) -> list[str]:
        """The request ids in the CSV of a version."""
        content = await self.dataset_file(dataset, version, f"feedback/{SLUG}/predictions.csv")
        return [row["request_id"] for row in csv.DictReader(io.StringIO(content.decode()))]


async def _service(
    database_url: str, data_dir: Path, clock: Clock, **overrides: Any
) -> AsyncIterator[Service]:
    await upgrade(database_url)
    dsn = asyncpg_dsn(database_url)
    conn = await asyncpg.connect(dsn)
    try:
        endpoint_id = await conn.fetchval("SELECT id FROM endpoints WHERE slug = $1", SLUG)
        if endpoint_id is None:
            endpoint_id = await conn.fetchval(
                "INSERT INTO endpoints (slug, name, kind, spec) VALUES ($1, $2, 'web', '{}')"
                " RETURNING id",
                SLUG,
                SLUG,
            )
    finally:
        await conn.close()
    options: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "log_json": False,
        "min_every_s": 1,
        "poll_interval_s": 0.05,
        "publish_events": False,
        "scheduler": False,
        "internal_secret": generate_internal_secret(),
    }
    settings = FeedbackSettings(**(options | overrides))
    app = create_app(settings, clock=clock)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        auth = InternalAuth(settings.internal_secret)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc", auth=auth) as http:
            # The lifespan's state, as each request sees it (asgi-lifespan keeps it there).
            state = manager._state["feedback"]
            yield Service(http, state, clock, dsn, endpoint_id)


@pytest.fixture
async def svc(database_url: str, tmp_path: Path) -> AsyncIterator[Service]:
    """The service with its scheduler off: runs happen when the test asks."""
    async for service in _service(database_url, tmp_path, Clock()):
        yield service


async def _dataset(svc: Service, name: str = "feedback") -> str:
    created = await svc.http.post("/api/v1/datasets", json={"name": name})
    assert created.status_code == 201, created.text
    return name


async def _create(svc: Service, **body: Any) -> dict[str, Any]:
    answer = await svc.http.post(LOOPS, json=body)
    assert answer.status_code == 201, answer.text
    loop: dict[str, Any] = answer.json()
    return loop


async def _run(svc: Service, loop: dict[str, Any]) -> dict[str, Any]:
    answer = await svc.http.post(f"{LOOPS}/{loop['id']}/run")
    assert answer.status_code == 200, answer.text
    run: dict[str, Any] = answer.json()
    assert run["status"] == "succeeded", run
    return run


def _message(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    message: str = answer.json()["error"]["message"]
    return message


async def test_bad_requests_name_the_field(svc: Service) -> None:
    """Unknown endpoint or dataset, bad schedule, day, time, zone, column, format: a 4xx that
    names what to fix."""
    await _dataset(svc)
    good: dict[str, Any] = {"dataset": "feedback", "schedule": {"every": "1h"}}
    missing = await svc.http.post("/api/v1/endpoints/nope/feedback-loops", json=good)
    assert _message(missing, 404).startswith("endpoint: there is no endpoint 'nope'")
    assert _message(await svc.http.post(LOOPS, json=good | {"dataset": "none"}), 404).startswith(
        "dataset: there is no dataset 'none'"
    )
    cases: dict[str, dict[str, Any]] = {
        "schedule.every": {"schedule": {"every": "5 fortnights"}},
        "schedule:": {"schedule": {"every": "1h", "now": True}},
        "schedule.on.timezone": {
            "schedule": {"on": {"days": ["mon"], "time": "02:30", "timezone": "Mars/Olympus"}}
        },
        "schedule.on.days": {"schedule": {"on": {"days": ["someday"], "time": "02:30"}}},
        "schedule.on.time": {"schedule": {"on": "mon 25:00 UTC"}},
        "include:": {"include": ["input", "password"]},
        "format:": {"format": "xlsx"},
    }
    for field_name, change in cases.items():
        message = _message(await svc.http.post(LOOPS, json=good | change), 400)
        assert message.startswith(field_name.rstrip(":")), (field_name, message)
    too_short = await svc.http.post(LOOPS, json=good | {"schedule": {"every": "0s"}})
    assert "shorter than the shortest interval" in _message(too_short, 400)


async def test_each_run_exports_what_is_new_with_a_manifest(svc: Service) -> None:
    """A ``now`` loop exports every logged prediction into a new version with a manifest;
    later runs export only what arrived since; a run with nothing new makes no version."""
    await _dataset(svc)
    await svc.store("a", "b", "c")
    loop = await _create(svc, dataset="feedback", schedule={"now": True})
    assert (loop["state"], loop["next_run"]) == ("scheduled", "2027-03-27T12:00:00Z")
    first = await svc.state.runner.run_due(uuid.UUID(loop["id"]))
    assert first is not None
    assert (first["rows"], first["dataset_version"]) == (3, 1)
    assert sorted(await svc.exported_ids("feedback", 1)) == ["a", "b", "c"]
    content = (await svc.dataset_file("feedback", 1, f"feedback/{SLUG}/predictions.csv")).decode()
    row = next(csv.DictReader(io.StringIO(content)))
    assert list(row) == [
        "request_id", "received_at", "input", "output", "error", "status", "latency_ms", "version"
    ]  # fmt: skip
    assert json.loads(row["input"])[1] == "text, with a comma"
    manifest = json.loads(await svc.dataset_file("feedback", 1, f"feedback/{SLUG}/manifest.json"))
    assert manifest["rows"] == 3
    assert manifest["endpoint_versions"] == [1, 2]
    assert manifest["columns"] == list(row)
    assert manifest["time_range"]["first_received_at"] <= manifest["time_range"]["last_received_at"]

    shown = (await svc.http.get(f"{LOOPS}/{loop['id']}")).json()
    assert (shown["state"], shown["next_run"]) == ("done", None)
    assert [r["rows"] for r in shown["runs"]] == [3]

    await svc.store("d", "e")
    second = await _run(svc, loop)
    assert (second["rows"], second["dataset_version"]) == (2, 2)
    assert sorted(await svc.exported_ids("feedback", 2)) == ["d", "e"]
    empty = await _run(svc, loop)
    assert (empty["rows"], empty["dataset_version"]) == (0, None)
    listed = (await svc.http.get(LOOPS)).json()["feedback_loops"]
    assert [x["last_run"]["rows"] for x in listed] == [0]

    # Run by hand before the scheduler got to it, a `now` loop is done: no second run.
    another = await _create(svc, dataset="feedback", schedule={"now": True})
    assert (await _run(svc, another))["rows"] == 5
    done = (await svc.http.get(f"{LOOPS}/{another['id']}")).json()
    assert (done["state"], done["next_run"]) == ("done", None)


async def test_a_row_received_before_the_watermark_but_committed_after_it_is_exported(
    svc: Service,
) -> None:
    """An ingest transaction that started first and commits after a run has read: its row
    (received earlier than every exported row) goes out with the next run, once."""
    await _dataset(svc)
    loop = await _create(svc, dataset="feedback", schedule={"every": "1h"})
    early = datetime.now(UTC) - timedelta(minutes=5)
    slow = await asyncpg.connect(svc.dsn)
    try:
        transaction = slow.transaction()
        await transaction.start()
        # The slow batch is stored (and its transaction id taken) before the quick one.
        await insert_predictions(slow, [svc.row("late", early)])
        await svc.store("quick")
        first = await _run(svc, loop)
        assert await svc.exported_ids("feedback", first["dataset_version"]) == ["quick"]
        await transaction.commit()
    finally:
        await slow.close()
    second = await _run(svc, loop)
    assert await svc.exported_ids("feedback", second["dataset_version"]) == ["late"]
    assert second["first_received_at"] == early.isoformat().replace("+00:00", "Z")
    assert (await _run(svc, loop))["rows"] == 0


async def test_parquet_with_custom_metrics(svc: Service) -> None:
    """Parquet output holds the chosen columns typed, metrics as a JSON object per request."""
    await _dataset(svc)
    await svc.store("p1", "p2")
    conn = await asyncpg.connect(svc.dsn)
    try:
        failed = svc.row("p3")
        failed.output, failed.error, failed.status = None, 'boom,\n"line" 2', 500
        failed.shadow = True  # a shadow version's answer to a mirrored request
        await insert_predictions(conn, [failed])
        await conn.execute(
            "INSERT INTO metrics (endpoint_id, key, value, request_id) VALUES"
            " ($1, 'accuracy', 0.5, 'p1'), ($1, 'loss', 2, 'p1')",
            svc.endpoint_id,
        )
    finally:
        await conn.close()
    loop = await _create(
        svc,
        dataset="feedback",
        schedule={"every": "1d"},
        format="parquet",
        include=["output", "latency_ms", "metrics", "error", "shadow"],
    )
    run = await _run(svc, loop)
    content = await svc.dataset_file(
        "feedback", run["dataset_version"], f"feedback/{SLUG}/predictions.parquet"
    )
    table = pq.read_table(io.BytesIO(content))
    assert table.column_names == [
        "request_id", "received_at", "output", "latency_ms", "metrics", "error", "shadow"
    ]  # fmt: skip
    rows = {r["request_id"]: r for r in table.to_pylist()}
    assert json.loads(rows["p1"]["metrics"]) == {"accuracy": 0.5, "loss": 2}
    assert rows["p2"]["metrics"] is None
    assert rows["p2"]["latency_ms"] == 1.5
    assert rows["p1"]["received_at"].tzinfo is not None
    assert (rows["p3"]["error"], rows["p3"]["output"]) == ('boom,\n"line" 2', None)
    assert rows["p2"]["error"] is None
    assert json.loads(rows["p2"]["output"]) == {"label": 1}
    assert [rows[r]["shadow"] for r in ("p1", "p2", "p3")] == [False, False, True]


async def test_two_replicas_make_one_run_per_due_time(
    svc: Service, database_url: str, tmp_path: Path
) -> None:
    """Two replicas asked to run the same due loop at once: one runs, the other skips."""
    await _dataset(svc)
    await svc.store(*(f"r{i}" for i in range(500)))
    loop = await _create(svc, dataset="feedback", schedule={"every": "1h"})
    async for other in _service(database_url, tmp_path, svc.clock):
        loop_id = uuid.UUID(loop["id"])
        runs = await asyncio.gather(
            svc.state.runner.run_due(loop_id), other.state.runner.run_due(loop_id)
        )
        assert sorted(r is None for r in runs) == [False, True]
        assert await other.state.runner.run_due(loop_id) is None
        assert await other.state.runner.due_loops() == []
    shown = (await svc.http.get(f"{LOOPS}/{loop['id']}")).json()
    assert [r["rows"] for r in shown["runs"]] == [500]
    assert shown["next_run"] == (T0 + timedelta(hours=1)).isoformat().replace("+00:00", "Z")


async def test_missed_runs_run_once_and_stop_means_no_more_runs(svc: Service) -> None:
    """Ten missed minutes make one run; after Stop returns no run starts, and run is a 409."""
    await _dataset(svc)
    loop = await _create(svc, dataset="feedback", schedule={"every": "1m"})
    loop_id = uuid.UUID(loop["id"])
    svc.clock.now = T0 + timedelta(minutes=10, seconds=5)
    assert await svc.state.runner.due_loops() == [loop_id]
    assert await svc.state.runner.run_due(loop_id) is not None
    assert await svc.state.runner.due_loops() == []
    shown = (await svc.http.get(f"{LOOPS}/{loop_id}")).json()
    assert shown["next_run"] == "2027-03-27T12:11:00Z"
    assert len(shown["runs"]) == 1

    stopped = await svc.http.delete(f"{LOOPS}/{loop_id}")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["state"] == "stopped"
    svc.clock.now = T0 + timedelta(hours=5)
    assert await svc.state.runner.run_due(loop_id) is None
    assert "is stopped" in _message(await svc.http.post(f"{LOOPS}/{loop_id}/run"), 409)
    assert len((await svc.http.get(f"{LOOPS}/{loop_id}")).json()["runs"]) == 1


async def test_on_schedule_is_right_across_dst_changes(svc: Service) -> None:
    """Sundays 02:30 Berlin with a fixed clock: the skipped 02:30 of the spring change runs at
    03:30 summer time, the repeated 02:30 of the autumn change runs once, the first time."""
    await _dataset(svc)
    loop = await _create(svc, dataset="feedback", schedule={"on": "sun 02:30 Europe/Berlin"})
    assert loop["schedule"] == {
        "on": {"days": ["sun"], "time": "02:30", "timezone": "Europe/Berlin"}
    }
    expected = [
        "2027-03-28T01:30:00Z",  # 02:30 CET does not exist; 03:30 CEST
        "2027-04-04T00:30:00Z",  # 02:30 CEST
    ]
    assert loop["next_run"] == expected[0]
    loop_id = uuid.UUID(loop["id"])
    svc.clock.now = datetime.fromisoformat(expected[0])
    assert await svc.state.runner.run_due(loop_id) is not None
    shown = (await svc.http.get(f"{LOOPS}/{loop_id}")).json()
    assert shown["next_run"] == expected[1]

    svc.clock.now = datetime(2027, 10, 31, 0, 30, tzinfo=UTC)  # 02:30 CEST, first of two
    autumn = await _create(svc, dataset="feedback", schedule={"on": "sun 02:30 Europe/Berlin"})
    assert autumn["next_run"] == "2027-11-07T01:30:00Z"  # not 01:30 UTC (02:30 CET) that day
    svc.clock.now = datetime(2027, 10, 31, 0, 29, tzinfo=UTC)
    early = await _create(svc, dataset="feedback", schedule={"on": "sun 02:30 Europe/Berlin"})
    assert early["next_run"] == "2027-10-31T00:30:00Z"


async def test_the_scheduler_runs_due_loops_and_announces_them(
    database_url: str, tmp_path: Path, nats_url: str
) -> None:
    """With the scheduler on, a new ``now`` loop runs by itself; ``FeedbackRunFinished`` is
    published and the run counters move."""
    nc = await nats.connect(nats_url)
    events: asyncio.Queue[FeedbackRunFinished] = asyncio.Queue()

    async def received(msg: Any) -> None:
        event = decode(msg.data, msg.headers)
        assert isinstance(event, FeedbackRunFinished)
        await events.put(event)

    await nc.subscribe(FeedbackRunFinished.subject_filter(), cb=received)
    await nc.flush()
    try:
        clock = Clock(datetime.now(UTC))
        async for svc in _service(
            database_url, tmp_path, clock, scheduler=True, publish_events=True, nats_url=nats_url
        ):
            await _dataset(svc)
            await svc.store("x", "y")
            loop = await _create(svc, dataset="feedback", schedule={"now": True})
            async with asyncio.timeout(30):
                event = await events.get()
            assert (event.endpoint, event.loop_id, event.status) == (SLUG, loop["id"], "succeeded")
            assert (event.rows, event.dataset_version, event.dataset) == (2, 1, "feedback")
            metrics = (await svc.http.get("/metrics")).text
            assert (
                'cormorant_feedback_runs_total{status="succeeded",trigger="schedule"} 1.0'
                in metrics
            )
            assert "cormorant_feedback_rows_exported_total 2.0" in metrics
    finally:
        await nc.close()
