"""Batch jobs through the gateway: a CSV in a dataset, every row predicted, a new version out."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cormorant.sdk import Client, CormorantAPIError, Endpoint
from tests.conftest import ROOT, Stack

MULTI_ARGS = ROOT / "examples" / "multi_args"
FLAKY = ROOT / "tests" / "models" / "batch_flaky"


def load_predict(source: Path) -> Callable[..., Any]:
    spec = importlib.util.spec_from_file_location(f"direct_{source.name}", source / "predict.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    predict: Callable[..., Any] = module.predict
    return predict


def create_batch_endpoint(client: Client, name: str, source: Path, high: int) -> str:
    created = client.endpoints.create(
        name, source, kind="batch", replicas={"min": 0, "max": high}, server={"workers": 1}
    )
    slug: str = created["slug"]
    return slug


def replicas(client: Client, slug: str) -> dict[str, int]:
    counts: dict[str, int] = client.endpoints.get(slug)["replicas"]
    return counts


def versions(client: Client, dataset: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.request("GET", f"/api/v1/datasets/{dataset}/versions")[
        "versions"
    ]
    return found


def download(client: Client, reference: str) -> str:
    dataset, rest = reference.split("@", 1)
    version, path = rest.split("/", 1)
    response = client._http.get(f"/api/v1/datasets/{dataset}/versions/{version}/files/{path}")
    response.raise_for_status()
    return response.text


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s")
        time.sleep(0.1)


def test_a_job_predicts_every_row_in_order_into_a_new_dataset_version(
    stack: Stack, tmp_path: Path
) -> None:
    """20,000 rows from 0 replicas: all predicted in order, as the model would; back to 0."""
    client = stack.client()
    slug = create_batch_endpoint(client, "iris batch", MULTI_ARGS, 2)
    assert replicas(client, slug)["ready"] == 0
    assert replicas(client, slug)["desired"] == 0
    generator = random.Random(6)
    rows = [
        (round(generator.uniform(4, 8), 1), round(generator.uniform(1, 7), 1),
         round(generator.uniform(0.1, 2.5), 1))
        for _ in range(20_000)
    ]  # fmt: skip
    source = tmp_path / "flowers.csv"
    source.write_text(
        "sepal_length,petal_length,petal_width\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows)
    )

    endpoint = Endpoint(slug, url=stack.url, api_key=stack.admin_key)
    job = endpoint.batch_predict(source, "out/predictions.csv", "iris-scores", wait=False)
    seen_ready = 0

    def finished() -> bool:
        nonlocal seen_ready
        seen_ready = max(seen_ready, replicas(client, slug)["ready"])
        return job.refresh()["status"] in ("succeeded", "failed", "cancelled")

    wait_for(finished, 80, "the job did not finish")
    final = job.job
    assert final["status"] == "succeeded", final
    assert (final["rows_total"], final["rows_done"], final["failures"]) == (20_000, 20_000, 0)
    assert seen_ready > 0
    assert final["replicas"] >= 1
    assert final["rows_per_s"] > 0
    assert final["duration_s"] > 0

    # The upload made version 1, the job's output version 2 (which keeps the input).
    assert [v["version"] for v in versions(client, "iris-scores")] == [1, 2]
    assert final["output_reference"] == "iris-scores@2/out/predictions.csv"
    written = list(csv.DictReader(io.StringIO(download(client, final["output_reference"]))))
    assert len(written) == len(rows)
    predict = load_predict(MULTI_ARGS)
    for row, (a, b, c) in zip(written, rows, strict=True):
        assert (float(row["sepal_length"]), float(row["petal_length"])) == (a, b)
        assert json.loads(row["prediction"]) == predict(a, b, c)
        assert row["error"] == ""

    listed = client.request("GET", f"/api/v1/endpoints/{slug}/batch-jobs")["jobs"]
    assert [j["id"] for j in listed] == [job.id]
    # Not asked to, a job leaves the prediction log alone.
    assert final["log_predictions"] is False
    assert endpoint.logs(limit=10) == []
    wait_for(lambda: replicas(client, slug)["ready"] == 0, 30, "the endpoint kept its replicas")
    assert replicas(client, slug)["desired"] == 0


def test_rows_whose_predict_raises_carry_the_error_and_the_job_succeeds(
    stack: Stack, tmp_path: Path
) -> None:
    """1% of rows raise: the job succeeds, those rows have an error and no prediction (CLI);
    asked to, the job records each row in the prediction log."""
    client = stack.client()
    slug = create_batch_endpoint(client, "flaky batch", FLAKY, 1)
    source = tmp_path / "numbers.csv"
    source.write_text("x,y\n" + "".join(f"{x},{x % 7}\n" for x in range(3_000)))

    result = stack.cli(
        "batch", slug, str(source), "flaky/out.csv", "--dataset", "flaky", "--log-predictions",
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    final = json.loads(result.stdout)
    assert final["status"] == "succeeded"
    assert (final["rows_done"], final["failures"]) == (3_000, 30)
    assert final["log_predictions"] is True

    endpoint = Endpoint(slug, url=stack.url, api_key=stack.admin_key)
    wait_for(lambda: len(endpoint.logs(limit=5_000)) >= 3_000, 30, "the rows did not reach the log")
    logged_rows = {item["request_id"]: item for item in endpoint.logs(limit=5_000)}
    assert set(logged_rows) == {f"{final['id']}-{row}" for row in range(1, 3_001)}
    eighth = logged_rows[f"{final['id']}-8"]  # x = 7: raised
    assert (eighth["status"], eighth["error"]) == (500, "ValueError: row 7 is unlucky")
    assert eighth["input"] == [7, 0]
    tenth = logged_rows[f"{final['id']}-10"]  # x = 9, y = 2
    assert (tenth["status"], tenth["output"], tenth["input"]) == (
        200, 18, [9, 2],
    )  # fmt: skip
    failed = endpoint.logs(limit=5_000, status="5xx")
    assert len(failed) == 30

    written = list(csv.DictReader(io.StringIO(download(client, final["output_reference"]))))
    errors = [row for row in written if row["error"]]
    assert [int(row["x"]) for row in errors] == [x for x in range(3_000) if x % 100 == 7]
    assert all(row["error"] == f"ValueError: row {row['x']} is unlucky" for row in errors)
    assert all(row["prediction"] == "" for row in errors)
    fine = [row for row in written if not row["error"]]
    assert all(int(r["prediction"]) == int(r["x"]) * int(r["y"]) for r in fine)

    compare = f"/api/v1/endpoints/{slug}/batch-jobs/compare"
    params = {"ids": final["id"], "metrics": "row_x"}
    compared = client.request("GET", compare, params=params)
    assert compared["metrics"]["failures"] == {final["id"]: 30}
    logged = [x for x in range(3_000) if x % 100 != 7]

    def all_metrics_logged() -> bool:
        found = client.request("GET", compare, params=params)["custom"]["row_x"][final["id"]]
        return bool(found["count"] == len(logged))

    wait_for(all_metrics_logged, 30, "the metrics predict logged did not all arrive")
    found = client.request("GET", compare, params=params)["custom"]["row_x"][final["id"]]
    assert found["avg"] == pytest.approx(sum(logged) / len(logged))
    assert (found["min"], found["max"]) == (0, 2_999)


@pytest.fixture(scope="module")
def refusing(stack: Stack) -> str:
    """A batch endpoint, and dataset ``bad-inputs`` holding a malformed and a good CSV."""
    client = stack.client()
    slug = create_batch_endpoint(client, "refusing batch", FLAKY, 1)
    client.request("POST", "/api/v1/datasets", json={"name": "bad-inputs"})
    for name, content in (("broken.csv", b"x,y\n1,2\n3,4,5\n"), ("good.csv", b"x,y\n1,2\n")):
        client.request(
            "POST",
            "/api/v1/datasets/bad-inputs/files",
            data={"path": name},
            files={"file": (name, content, "text/csv")},
        )
    return slug


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"output_file": "/etc/out.csv"}, 400, "relative"),
        ({"output_file": "out/../../escape.csv"}, 400, ".."),
        ({"dataset": "no-such-dataset"}, 404, "no-such-dataset"),
        ({"input_file": "bad-inputs/broken.csv"}, 400, "not a valid CSV"),
    ],
)
def test_bad_job_requests_are_refused_and_write_nothing(
    stack: Stack, refusing: str, change: dict[str, str], status: int, words: str
) -> None:
    """Absolute or '..' output, unknown dataset, malformed CSV: 4xx saying why, no version."""
    client = stack.client()
    before = versions(client, "bad-inputs")
    body = {"input_file": "bad-inputs/good.csv", "output_file": "out.csv", "dataset": "bad-inputs"}
    with pytest.raises(CormorantAPIError) as refused:
        client.request("POST", f"/api/v1/endpoints/{refusing}/batch-jobs", json={**body, **change})
    assert refused.value.status_code == status
    assert words in refused.value.message
    assert versions(client, "bad-inputs") == before
    assert client.request("GET", f"/api/v1/endpoints/{refusing}/batch-jobs")["jobs"] == []


def test_deploying_a_batch_endpoint_tells_how_to_run_a_job(stack: Stack) -> None:
    """`cormorant deploy --kind batch` ends with the batch command to run, not a predict call
    its endpoint would refuse with 409."""
    result = stack.cli(
        "deploy", str(MULTI_ARGS), "--name", "nightly", "--kind", "batch", "--max", "1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cormorant batch nightly input.csv out/predictions.csv --dataset NAME" in result.stdout
    assert "curl" not in result.stdout
    assert "cormorant predict" not in result.stdout
