"""Batch jobs: replicas asked of a real deployer, rows predicted by them in order, the output
synced into a dataset; a cancelled job or a restart mid-job writes nothing, visibly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from cormorant.batch.testing import BatchHarness
from cormorant.common.bus import close, connect
from cormorant.common.datasets import DatasetStore
from cormorant.common.events import BatchJobChanged, decode
from cormorant.devstack.testing.waits import eventually

SLOW_MODEL = """\
import time


def predict(x):
    time.sleep(0.005)
    return x * 2
"""

DESCRIBE_MODEL = """\
def predict(*row):
    return " ".join(f"{type(value).__name__}:{value}" for value in row)
"""


def model(tmp_path: Path, name: str, code: str) -> str:
    """A model directory holding ``code`` as predict.py."""
    directory = tmp_path / name
    directory.mkdir()
    (directory / "predict.py").write_text(code)
    return str(directory)


async def start_slow_job(
    batch: BatchHarness, datasets: DatasetStore, tmp_path: Path
) -> tuple[str, str]:
    """A batch endpoint on a slow model and a running job over 4,000 rows."""
    slug = await batch.create_endpoint(
        name="slow batch", kind="batch", source=model(tmp_path, "slow", SLOW_MODEL),
        server={"workers": 1}, replicas={"min": 0, "max": 1},
    )  # fmt: skip
    await datasets.create_dataset("numbers")
    rows = "x\n" + "".join(f"{i}\n" for i in range(4_000))
    await datasets.add_files("numbers", {"in.csv": rows.encode()})
    job_id = await batch.start_job(
        slug, input_file="numbers/in.csv", output_file="out.csv", dataset="numbers"
    )

    async def progressing() -> bool:
        job = await batch.job(slug, job_id)
        return bool(job["status"] == "running" and job["rows_done"] > 0)

    await eventually(progressing, within=60, what="the job progressing")
    return slug, job_id


async def test_a_cancelled_job_stops_and_writes_nothing(
    batch: BatchHarness, datasets: DatasetStore, tmp_path: Path
) -> None:
    """DELETE on a running job: ``cancelled``, and the dataset keeps only its input version."""
    slug, job_id = await start_slow_job(batch, datasets, tmp_path)
    response = await batch.client.delete(f"/api/v1/endpoints/{slug}/batch-jobs/{job_id}")
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "cancelled"
    assert 0 < job["rows_done"] < 4_000
    assert [v.version for v in await datasets.list_versions("numbers")] == [1]


async def test_a_restart_mid_job_fails_the_job_visibly_and_writes_nothing(
    batch: BatchHarness, datasets: DatasetStore, tmp_path: Path
) -> None:
    """The batch service restarts while a job runs: the job is ``failed`` saying so, no
    output; the deployer scales the endpoint back to 0 once the demand lapses."""
    slug, job_id = await start_slow_job(batch, datasets, tmp_path)
    await batch.restart()
    job = await batch.job(slug, job_id)
    assert job["status"] == "failed"
    assert "nothing was written" in job["error"]
    assert job["finished_at"] is not None
    assert [v.version for v in await datasets.list_versions("numbers")] == [1]


async def test_plain_and_dated_columns_reach_predict_as_json_values_in_order(
    batch: BatchHarness, datasets: DatasetStore, tmp_path: Path
) -> None:
    """Numbers and strings (sent as Arrow) and a date column (sent as JSON rows) arrive as
    JSON would decode them, and the output keeps the input order across chunks. Each job is
    announced as ``BatchJobChanged`` from queued to succeeded, and after the last one the
    endpoint goes back to 0 replicas."""
    slug = await batch.create_endpoint(
        name="describe batch", kind="batch", source=model(tmp_path, "describe", DESCRIBE_MODEL),
        server={"workers": 1}, replicas={"min": 0, "max": 2},
    )  # fmt: skip
    await datasets.create_dataset("described")
    plain = "n,x,s\n" + "".join(f"{i},{i}.5,s{i}\n" for i in range(1_000))
    dated = "when,n\n" + "".join(f"2026-12-{i % 28 + 1:02d},{i}\n" for i in range(1_000))
    await datasets.add_files(
        "described", {"plain.csv": plain.encode(), "dated.csv": dated.encode()}
    )
    events: list[BatchJobChanged] = []

    async def on_event(msg: Msg) -> None:
        event = decode(msg.data, msg.headers)
        assert isinstance(event, BatchJobChanged)
        events.append(event)

    nc = await connect(batch.settings.nats_url, name="test-events")
    await nc.subscribe(BatchJobChanged.subject_filter(), cb=on_event)

    async def run(name: str) -> tuple[str, list[str]]:
        job_id = await batch.start_job(
            slug, input_file=f"described/{name}.csv", output_file=f"out/{name}.csv",
            dataset="described",
        )  # fmt: skip
        job = await batch.finished(slug, job_id)
        assert job["status"] == "succeeded", job
        assert (job["rows_done"], job["failures"]) == (1_000, 0)
        output = await datasets.read_file(job["output_reference"])
        return job_id, output.decode().splitlines()

    try:
        first, lines = await run("plain")
        assert lines == ['"n","x","s","prediction","error"'] + [
            f'{i},{i}.5,"s{i}","int:{i} float:{i}.5 str:s{i}",' for i in range(1_000)
        ]
        _, lines = await run("dated")
        assert lines == ['"when","n","prediction","error"'] + [
            f'2026-12-{i % 28 + 1:02d},{i},"str:2026-12-{i % 28 + 1:02d} int:{i}",'
            for i in range(1_000)
        ]

        async def announced() -> list[str]:
            return [e.status for e in events if e.job_id == first]

        statuses = await eventually(
            lambda: _ends_with(announced, "succeeded"), what="the job's events"
        )
    finally:
        await close(nc)
    assert statuses[0] == "queued"
    assert "running" in statuses
    assert [e.rows_done for e in events if e.job_id == first][-1] == 1_000

    async def idle() -> dict[str, Any] | None:
        endpoint = await batch.endpoint(slug)
        counts = endpoint["replicas"]
        return endpoint if (counts["desired"], counts["ready"]) == (0, 0) else None

    await eventually(idle, within=30, what="the endpoint back at 0 replicas")


async def test_a_job_on_an_unknown_or_web_endpoint_is_refused(
    batch: BatchHarness, tmp_path: Path
) -> None:
    """404 naming the unknown endpoint; 409 saying batch jobs need a batch endpoint."""
    body = {"input_file": "d/in.csv", "output_file": "out.csv", "dataset": "d"}
    missing = await batch.client.post("/api/v1/endpoints/nope/batch-jobs", json=body)
    assert missing.status_code == 404
    assert "'nope' not found" in missing.json()["error"]["message"]
    web = await batch.create_endpoint(
        name="web one", source=model(tmp_path, "web", SLOW_MODEL), server={"workers": 1}
    )
    refused = await batch.client.post(f"/api/v1/endpoints/{web}/batch-jobs", json=body)
    assert refused.status_code == 409
    assert "kind 'batch'" in refused.json()["error"]["message"]


async def _ends_with(statuses: Any, last: str) -> list[str] | None:
    found: list[str] = await statuses()
    return found if found and found[-1] == last else None
