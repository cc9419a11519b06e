"""Feedback loops end to end through the gateway of a stack of this module's own: 10,000
predictions while a loop runs every 2 s, the feedback service SIGKILLed (and restarted by the
supervisor) twice and a second feedback replica running; the union of the exported dataset
versions holds every answered prediction exactly once."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import httpx
import pytest

from cormorant.common.ports import free_port
from cormorant.devstack.testing.waits import eventually
from cormorant.sdk import Endpoint
from cormorant.sdk.datasets import Datasets
from tests.conftest import ROOT, Stack, running_stack
from tests.test_prediction_log import _load, _logged_at_least, _restarted, deploy_echo

N = 10_000
DATASET = "echo-feedback"


@pytest.fixture(scope="module")
def feedback_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose feedback service allows a 2 s schedule and looks for due loops often."""
    settings = {"CORMORANT_FEEDBACK_MIN_EVERY_S": "1", "CORMORANT_FEEDBACK_POLL_INTERVAL_S": "0.2"}
    data_dir = tmp_path_factory.mktemp("feedbackstack") / "data"
    with running_stack(data_dir, settings, cwd=ROOT) as stack:
        yield stack


def _second_replica(stack: Stack) -> tuple[subprocess.Popen[bytes], str]:
    """Another feedback service on the same database and dataset storage."""
    info = stack.described()
    port = free_port()
    env = {
        **stack.env,
        "CORMORANT_DATABASE_URL": info["database_url"],
        "CORMORANT_NATS_URL": info["nats_url"],
        "CORMORANT_FEEDBACK_PORT": str(port),
        "CORMORANT_LOG_JSON": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cormorant.feedback"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


def _exported_some(stack: Stack, loop_id: uuid.UUID) -> Callable[[], Awaitable[bool]]:
    """A check: a run of the loop has succeeded with rows in it."""

    async def check() -> bool:
        db = await asyncpg.connect(stack.database_url.replace("+asyncpg", ""))
        try:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM feedback_runs WHERE loop_id = $1"
                    " AND status = 'succeeded' AND rows > 0",
                    loop_id,
                )
            )
        finally:
            await db.close()

    return check


def _kill_feedback(stack: Stack, killed: list[int]) -> Callable[[], None]:
    """SIGKILL the supervisor's feedback service, once it runs under a pid not killed yet
    (in a thread: the load goes on meanwhile)."""

    def kill_when_up() -> None:
        while True:
            try:
                pid = stack.described()["services"]["feedback"]["pid"]
            except (json.JSONDecodeError, KeyError):  # the file is being rewritten
                pid = None
            if pid is not None and pid not in killed:
                break
            time.sleep(0.1)  # polling for the restart, not waiting for a guess
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)

    return lambda: threading.Thread(target=kill_when_up, daemon=True).start()


def _exported(stack: Stack, slug: str) -> tuple[Counter[str], int]:
    """Every request id in every version's export (with multiplicity), and the manifests' sum."""
    ids: Counter[str] = Counter()
    manifest_rows = 0
    with stack.client() as client:
        datasets = Datasets(client)
        for version in datasets.versions(DATASET):
            number = version["version"]
            base = f"/api/v1/datasets/{DATASET}/versions/{number}/files/feedback/{slug}"
            with client.stream("GET", f"{base}/predictions.csv") as answer:
                content = answer.read().decode()
            rows = list(csv.DictReader(io.StringIO(content)))
            ids.update(row["request_id"] for row in rows)
            with client.stream("GET", f"{base}/manifest.json") as answer:
                manifest = json.loads(answer.read())
            assert manifest["rows"] == len(rows)
            manifest_rows += manifest["rows"]
    return ids, manifest_rows


def _both_killed(killed: list[int]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(killed) == 2

    return check


def test_every_prediction_exported_exactly_once_across_kills_and_two_replicas(
    feedback_stack: Stack,
) -> None:
    """10,000 predictions, a 2 s loop, two SIGKILLs of feedback and a second replica: each
    answered request id is in exactly one exported version."""
    stack = feedback_stack
    echo: Endpoint = deploy_echo(stack)
    assert echo.slug is not None
    slug = echo.slug
    created = stack.cli("datasets", "create", DATASET)
    assert created.returncode == 0, created.stdout + created.stderr
    loop = stack.cli("feedback", "create", echo.slug, "--dataset", DATASET, "--every", "2s")
    assert loop.returncode == 0, loop.stdout + loop.stderr
    loop_id = uuid.UUID(loop.stdout.split("Feedback loop ", 1)[1].split()[0])
    replica, replica_url = _second_replica(stack)
    killed: list[int] = []

    async def scenario() -> None:
        async def replica_ready() -> bool:
            try:
                async with httpx.AsyncClient() as http:
                    return (await http.get(replica_url + "/healthz", timeout=1)).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(replica_ready, within=60, what="the second feedback replica")
        # Half the load, then a run that exported some of it, then the other half: the rows
        # then span at least two runs whatever the machine's pace.
        half = N // 2
        ids = await _load(stack, echo, {N // 3: _kill_feedback(stack, killed)}, half)
        await eventually(_exported_some(stack, loop_id), within=90, what="a run that exported rows")
        ids += await _load(
            stack, echo, {2 * N // 3 - half: _kill_feedback(stack, killed)}, N - half
        )
        await eventually(_both_killed(killed), within=60, what="two kills")
        await eventually(
            _restarted(stack, "services", "feedback", killed[-1]),
            within=60, what="feedback restarted",
        )  # fmt: skip
        db = await asyncpg.connect(stack.database_url.replace("+asyncpg", ""))
        try:
            endpoint_id = await db.fetchval("SELECT id FROM endpoints WHERE slug = $1", echo.slug)
            all_logged = _logged_at_least(db, endpoint_id, N)
            await eventually(all_logged, within=60 + N / 1000, what=f"{N} rows logged")
            # Then every row has been exported once a run has started after the last commit.
            logged_by = await db.fetchval("SELECT now()")

            async def exported_after_last_row() -> bool:
                return bool(
                    await db.fetchval(
                        "SELECT count(*) FROM feedback_runs WHERE loop_id = $1"
                        " AND status = 'succeeded' AND started_at > $2",
                        loop_id,
                        logged_by,
                    )
                )

            await eventually(exported_after_last_row, within=60, what="a run after the last row")
            runs = await db.fetch(
                "SELECT status, rows FROM feedback_runs WHERE loop_id = $1", loop_id
            )
        finally:
            await db.close()
        exported, manifest_rows = _exported(stack, slug)
        answered = set(ids)
        assert len(answered) == N
        assert set(exported) == answered
        assert max(exported.values()) == 1, exported.most_common(3)
        assert manifest_rows == N
        assert sum(r["rows"] for r in runs) == N
        # The rows came in more than one run (the first half's export, then the rest).
        assert len([r for r in runs if r["rows"]]) >= 2

    try:
        asyncio.run(scenario())
    finally:
        replica.terminate()
        replica.wait(timeout=30)

    shown = stack.cli("feedback", "show", slug, str(loop_id))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    stopped = stack.cli("feedback", "stop", slug, str(loop_id))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    listed = stack.cli("feedback", "list", slug)
    assert "stopped" in listed.stdout

    unknown = stack.cli("feedback", "create", slug, "--dataset", "nope", "--every", "1h")
    assert unknown.returncode == 1
    assert "dataset: there is no dataset 'nope'" in unknown.stderr
    endpoint = Endpoint(slug, url=stack.url, api_key=stack.admin_key)
    weekly = endpoint.feedback_loop(DATASET, on="mon,thu 02:30 Europe/Berlin", format="parquet")
    assert weekly["schedule"] == {
        "on": {"days": ["mon", "thu"], "time": "02:30", "timezone": "Europe/Berlin"}
    }
    assert (weekly["state"], weekly["format"]) == ("scheduled", "parquet")
    with stack.client() as client:
        assert weekly["id"] in [loop["id"] for loop in client.feedback.list(slug)]
        assert client.feedback.stop(slug, weekly["id"])["state"] == "stopped"
