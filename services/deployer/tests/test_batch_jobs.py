"""Batch jobs in the deployer: a cancelled job or a restart mid-job writes nothing, visibly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cormorant.common.datasets import BlobStore, DatasetStore
from cormorant.common.db import create_engine, session_factory
from cormorant.common.testing.waits import eventually
from cormorant.deployer.settings import DeployerSettings
from cormorant.deployer.testing import DeployerHarness

SLOW_MODEL = """\
import time


def predict(x):
    time.sleep(0.005)
    return x * 2
"""


@pytest.fixture
def deployer_settings(deployer_settings: DeployerSettings) -> DeployerSettings:
    """Small chunks, so a job is seen part-way through."""
    return deployer_settings.model_copy(update={"batch_chunk_rows": 200})


@pytest.fixture
async def datasets(deployer: DeployerHarness) -> AsyncIterator[DatasetStore]:
    """The datasets the deployer's jobs read and write (its database and blob store)."""
    settings = deployer.settings
    engine = create_engine(settings.database_url)
    store = DatasetStore(session_factory(engine), BlobStore(settings.resolved_datasets_url()))
    await store.blobs.prepare()
    yield store
    await engine.dispose()


async def start_slow_job(
    deployer: DeployerHarness, datasets: DatasetStore, tmp_path: Path
) -> tuple[str, str]:
    """A batch endpoint on a slow model and a running job over 4,000 rows."""
    model = tmp_path / "slow"
    model.mkdir()
    (model / "predict.py").write_text(SLOW_MODEL)
    created = await deployer.create(
        name="slow batch", kind="batch", source=str(model), server={"workers": 1},
        replicas={"min": 0, "max": 1},
    )  # fmt: skip
    await datasets.create_dataset("numbers")
    rows = "x\n" + "".join(f"{i}\n" for i in range(4_000))
    await datasets.add_files("numbers", {"in.csv": rows.encode()})
    slug = created["slug"]
    body = {"input_file": "numbers/in.csv", "output_file": "out.csv", "dataset": "numbers"}
    response = await deployer.client.post(f"/api/v1/endpoints/{slug}/batch-jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]

    async def progressing() -> bool:
        job = await get_job(deployer, slug, job_id)
        return job["status"] == "running" and job["rows_done"] > 0

    await eventually(progressing, within=60)
    return slug, job_id


async def get_job(deployer: DeployerHarness, slug: str, job_id: str) -> dict[str, Any]:
    response = await deployer.client.get(f"/api/v1/endpoints/{slug}/batch-jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


async def test_a_cancelled_job_stops_and_writes_nothing(
    deployer: DeployerHarness, datasets: DatasetStore, tmp_path: Path
) -> None:
    """DELETE on a running job: ``cancelled``, and the dataset keeps only its input version."""
    slug, job_id = await start_slow_job(deployer, datasets, tmp_path)
    response = await deployer.client.delete(f"/api/v1/endpoints/{slug}/batch-jobs/{job_id}")
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "cancelled"
    assert 0 < job["rows_done"] < 4_000
    assert [v.version for v in await datasets.list_versions("numbers")] == [1]


async def test_a_restart_mid_job_fails_the_job_visibly_and_writes_nothing(
    deployer: DeployerHarness, datasets: DatasetStore, tmp_path: Path
) -> None:
    """The deployer restarts while a job runs: the job is ``failed`` saying so, no output."""
    slug, job_id = await start_slow_job(deployer, datasets, tmp_path)
    await deployer.restart()
    job = await get_job(deployer, slug, job_id)
    assert job["status"] == "failed"
    assert "nothing was written" in job["error"]
    assert job["finished_at"] is not None
    assert [v.version for v in await datasets.list_versions("numbers")] == [1]


BATCH_FLOW = """\
name: nightly-scores
tasks:
  - name: score
    type: batch-predict
    endpoint_id: {slug}
    input_file: numbers/in.csv
    output_file: scored.csv
    dataset: numbers
"""


async def test_a_batch_predict_flow_task_runs_a_job_to_its_end(
    deployer: DeployerHarness, datasets: DatasetStore, tmp_path: Path
) -> None:
    """The ``batch-predict`` task runs a job and reports its rows and output reference."""
    model = tmp_path / "double"
    model.mkdir()
    (model / "predict.py").write_text("def predict(x):\n    return x * 2\n")
    slug = (
        await deployer.create(
            name="flow batch", kind="batch", source=str(model), server={"workers": 1}
        )
    )["slug"]
    await datasets.create_dataset("numbers")
    await datasets.add_files("numbers", {"in.csv": b"x\n1\n2\n3\n"})
    saved = await deployer.client.post(
        "/api/v1/flows", json={"yaml": BATCH_FLOW.format(slug=slug), "directory": str(tmp_path)}
    )
    assert saved.status_code == 201, saved.text
    started = await deployer.client.post("/api/v1/flows/nightly-scores/runs")
    run_id = started.json()["id"]

    async def finished() -> dict[str, Any] | None:
        response = await deployer.client.get(f"/api/v1/flows/nightly-scores/runs/{run_id}")
        run: dict[str, Any] = response.json()
        return run if run["status"] in ("succeeded", "failed") else None

    run = await eventually(finished, within=90, what="the flow finished")
    assert run["status"] == "succeeded", run
    assert "3 rows (0 failed) → numbers@2/scored.csv" in run["tasks"][0]["output"]
    output = await datasets.read_file("numbers@2/scored.csv")
    # Predictions are text cells (JSON for non-strings), so they are quoted.
    assert output.decode().splitlines() == [
        '"x","prediction","error"', '1,"2",', '2,"4",', '3,"6",'
    ]  # fmt: skip


DESCRIBE_MODEL = """\
def predict(*row):
    return " ".join(f"{type(value).__name__}:{value}" for value in row)
"""


async def test_plain_and_dated_columns_reach_predict_as_json_values_in_order(
    deployer: DeployerHarness, datasets: DatasetStore, tmp_path: Path
) -> None:
    """Numbers and strings (sent as Arrow) and a date column (sent as JSON rows) arrive as
    JSON would decode them, and the output keeps the input order across chunks."""
    model = tmp_path / "describe"
    model.mkdir()
    (model / "predict.py").write_text(DESCRIBE_MODEL)
    slug = (
        await deployer.create(
            name="describe batch", kind="batch", source=str(model), server={"workers": 1},
            replicas={"min": 0, "max": 2},
        )
    )["slug"]  # fmt: skip
    await datasets.create_dataset("described")
    plain = "n,x,s\n" + "".join(f"{i},{i}.5,s{i}\n" for i in range(1_000))
    dated = "when,n\n" + "".join(f"2026-12-{i % 28 + 1:02d},{i}\n" for i in range(1_000))
    await datasets.add_files(
        "described", {"plain.csv": plain.encode(), "dated.csv": dated.encode()}
    )

    async def run(name: str) -> list[str]:
        body = {"input_file": f"described/{name}.csv", "output_file": f"out/{name}.csv",
                "dataset": "described"}  # fmt: skip
        response = await deployer.client.post(f"/api/v1/endpoints/{slug}/batch-jobs", json=body)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        async def ended() -> dict[str, Any] | None:
            job = await get_job(deployer, slug, job_id)
            return job if job["status"] in ("succeeded", "failed") else None

        job = await eventually(ended, within=120, what="the job ended")
        assert job["status"] == "succeeded", job
        assert (job["rows_done"], job["failures"]) == (1_000, 0)
        output = await datasets.read_file(job["output_reference"])
        return output.decode().splitlines()

    assert await run("plain") == ['"n","x","s","prediction","error"'] + [
        f'{i},{i}.5,"s{i}","int:{i} float:{i}.5 str:s{i}",' for i in range(1_000)
    ]
    assert await run("dated") == ['"when","n","prediction","error"'] + [
        f'2026-12-{i % 28 + 1:02d},{i},"str:2026-12-{i % 28 + 1:02d} int:{i}",'
        for i in range(1_000)
    ]
