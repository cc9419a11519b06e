"""Batch jobs: throughput against an in-process loop, batch-capable throughput, cold start.

One run starts a local stack (``cormorant up`` on free ports) and prints four figures:

1. A job on the no-op model (``bench/noop``, one predict call per row) over a 100,000-row CSV,
   warm replicas, against a hand-written in-process loop: pyarrow chunked read → the same
   predict per row → pyarrow CSV write; each the best of 2 runs. Target: ratio ≥ 0.5.
2. The same CSV on a batch-capable predict (``CORMORANT_PREDICT_BATCH=true``: one call per
   chunk). Target: ≥ 100,000 rows/s.
3. The no-op job again with ``log_predictions``: its rows/s against the best unlogged job,
   and how long after it ended every row is in the prediction log (no target: the figure
   says what recording a job's rows costs).
4. Cold start: a scikit-learn endpoint (``examples/regression``) at 0 replicas, from the job's
   POST to its first predicted row, with when each step was reached (from the job's and the
   replica's timestamps) and whether the replica forked from the deployer's warm template
   (``CORMORANT_FLEET_PRELOAD_MODULES=`` measures fresh processes). Target: ≤ 2 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from cormorant.devstack.testing.running import running_stack
from cormorant.sdk import Client, Endpoint
from cormorant.sdk.batch import start_job

ROOT = Path(__file__).resolve().parent.parent
BATCH_MODEL = "def predict(rows):\n    return [row[0] for row in rows]\n"


def load(path: Path) -> Callable[..., Any]:
    """The predict function of ``path``, imported in this process."""
    spec = importlib.util.spec_from_file_location("bench_predict", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function: Callable[..., Any] = module.predict
    return function


def in_process(source: Path, target: Path, predict: Callable[..., Any], chunk: int) -> float:
    """Rows/s of a pyarrow chunked read → predict per row → CSV write loop."""
    started = time.perf_counter()
    rows = 0
    writer: pacsv.CSVWriter | None = None
    reader = pacsv.open_csv(source, read_options=pacsv.ReadOptions(block_size=1 << 20))
    for block in reader:
        for start in range(0, block.num_rows, chunk):
            batch = block.slice(start, chunk)
            columns = [column.to_pylist() for column in batch.columns]
            predictions = [str(predict(*row)) for row in zip(*columns, strict=True)]
            out = pa.RecordBatch.from_arrays(
                [*batch.columns, pa.array(predictions, pa.string())],
                names=[*batch.schema.names, "prediction"],
            )
            if writer is None:
                writer = pacsv.CSVWriter(str(target), out.schema)
            writer.write_batch(out)
            rows += batch.num_rows
    assert writer is not None
    writer.close()
    return rows / (time.perf_counter() - started)


def run_job(
    client: Client,
    slug: str,
    reference: str,
    output: str,
    dataset: str,
    *,
    log_predictions: bool = False,
) -> dict[str, Any]:
    """Run one job to its end; the final job."""
    job = start_job(client, slug, reference, output, dataset, log_predictions=log_predictions)
    final = job.wait(poll_s=0.05, timeout=300)
    assert final["status"] == "succeeded", final
    return final


def wait_logged(client: Client, slug: str, rows: int, scratch: Path) -> int:
    """Export the endpoint's prediction log until it holds ``rows`` rows (or stops growing
    for 30 s); the rows it holds."""
    endpoint = Endpoint(slug, url=client.url, api_key=client.api_key)
    held, last_change, last = 0, time.monotonic(), -1
    while time.monotonic() - last_change < 30:
        endpoint.export_csv(scratch)
        with scratch.open("rb") as exported:
            held = sum(1 for _ in exported) - 1
        if held >= rows:
            break
        if held != last:
            last, last_change = held, time.monotonic()
        time.sleep(0.5)
    return held


def warm_up(client: Client, slug: str, reference: str, job: dict[str, Any], replicas: int) -> None:
    """More warm-up jobs until one has used every replica (one still starting served none)."""
    for _ in range(5):
        if (job["replicas"] or 0) >= replicas:
            return
        job = run_job(client, slug, reference, "warmup.csv", "bench")


def cold_start(
    client: Client, slug: str, reference: str, dataset: str, data_dir: Path
) -> tuple[float, str]:
    """Seconds from a job's POST, at 0 replicas, to its first predicted row; where they went."""
    assert client.endpoints.get(slug)["replicas"]["ready"] == 0
    posted = time.time()
    started = time.perf_counter()
    job = start_job(client, slug, reference, "cold/out.csv", dataset)
    answered = time.perf_counter() - started
    while job.refresh()["rows_done"] == 0:
        assert job.status not in ("failed", "cancelled"), job.job
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    job.wait(poll_s=0.05, timeout=120)
    # The deployer's clock is this machine's: its timestamps place each step after the POST.
    steps = [("POST answered", answered)]
    running = datetime.fromisoformat(job.job["started_at"]).timestamp() - posted
    steps.append(("job running", running))
    for event in client.endpoints.get(slug)["events"]:
        if event["state"] in ("starting", "ready"):
            moment = datetime.fromisoformat(event["time"]).timestamp() - posted
            steps.append((f"replica {event['state']}", moment))
    steps.append(("first row", elapsed))
    logs = sorted((data_dir / "logs" / "replicas").glob(f"{slug}-*.log"))
    how = (
        "forked from the worker template"
        if logs and "forked from the worker template" in (logs[0].read_text(errors="replace"))
        else "fresh process"
    )
    breakdown = ", ".join(f"{name} +{seconds:.2f}" for name, seconds in steps)
    return elapsed, f"{breakdown} ({how})"


def main() -> None:
    """Start a stack, run the three measurements, print them with their targets."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cormorant-bench-batch-") as tmp:
        work = Path(tmp)
        settings = {"CORMORANT_BATCH_IDLE_TIMEOUT_S": "600"}
        with running_stack(work / "data", settings, cwd=ROOT) as stack:
            client = stack.client()
            source = work / "numbers.csv"
            source.write_text("x\n" + "".join(f"{i}.5\n" for i in range(args.rows)))
            anchor = max(
                in_process(source, work / "loop.csv", load(ROOT / "bench/noop/noop.py"), 1000)
                for _ in range(2)
            )

            batch_dir = work / "batch_model"
            batch_dir.mkdir()
            (batch_dir / "predict.py").write_text(BATCH_MODEL)
            server = {"workers": 1}
            high = {"min": 0, "max": args.replicas}
            noop = client.endpoints.create(
                "noop batch", ROOT / "bench/noop", file="noop.py", kind="batch", replicas=high,
                server=server,
            )["slug"]  # fmt: skip
            capable = client.endpoints.create(
                "capable batch", batch_dir, kind="batch", replicas=high, server=server,
                env={"CORMORANT_PREDICT_BATCH": "true"},
            )["slug"]  # fmt: skip
            sklearn = client.endpoints.create(
                "sklearn batch", ROOT / "examples/regression", kind="batch",
                replicas={"min": 0, "max": 1}, server=server,
            )["slug"]  # fmt: skip

            first = start_job(client, noop, source, "warmup.csv", "bench")
            first.wait(poll_s=0.1, timeout=300)
            reference = first.job["input_file"]
            warm_up(client, noop, reference, first.job, args.replicas)
            # Best of 2, as the loop is: one job lasts ~0.1 s, a moment of other load sinks it.
            jobs = [run_job(client, noop, reference, f"noop{i}.csv", "bench") for i in range(2)]
            warm = max(jobs, key=lambda job: float(job["rows_per_s"]))
            logged = run_job(client, noop, reference, "logged.csv", "bench", log_predictions=True)
            ended = time.monotonic()
            in_log = wait_logged(client, noop, args.rows, work / "log.csv")
            log_wait = time.monotonic() - ended
            warmed = run_job(client, capable, reference, "warmup2.csv", "bench")
            warm_up(client, capable, reference, warmed, args.replicas)
            fast = run_job(client, capable, reference, "capable.csv", "bench")

            header = ",".join(f"f{i}" for i in range(10))
            (work / "patients.csv").write_text(
                header + "\n" + "".join(",".join(["0.01"] * 9 + [f"0.0{i}"]) + "\n"
                                        for i in range(10))
            )  # fmt: skip
            small = start_job(client, sklearn, work / "patients.csv", "cold-in.csv", "bench")
            small.wait(poll_s=0.1, timeout=300)
            # The first job imported scikit-learn once; the endpoint is back at 0 after this.
            client.request("DELETE", f"/api/v1/endpoints/{sklearn}")
            sklearn2 = client.endpoints.create(
                "sklearn cold", ROOT / "examples/regression", kind="batch",
                replicas={"min": 0, "max": 1}, server=server,
            )["slug"]  # fmt: skip
            cold, breakdown = cold_start(
                client, sklearn2, small.job["input_file"], "bench", work / "data"
            )

    ratio = warm["rows_per_s"] / anchor
    print(f"rows: {args.rows:,}, replicas: {args.replicas}")
    each = ", ".join(f"{job['rows_per_s']:,.0f}" for job in jobs)
    print(f"no-op job: {warm['rows_per_s']:,.0f} rows/s (best of {each}); in-process loop: "
          f"{anchor:,.0f} rows/s; ratio {ratio:.2f} (target >= 0.5)")  # fmt: skip
    print(f"batch-capable job: {fast['rows_per_s']:,.0f} rows/s (target >= 100,000)")
    print(f"no-op job with log_predictions: {logged['rows_per_s']:,.0f} rows/s, ratio "
          f"{logged['rows_per_s'] / warm['rows_per_s']:.2f} of the unlogged job; {in_log:,} of "
          f"{args.rows:,} rows in the prediction log {log_wait:.1f} s after it ended")  # fmt: skip
    print(f"cold start 0 -> first row (scikit-learn): {cold:.2f} s (target <= 2 s)")
    print(f"  after the POST, s: {breakdown}")


if __name__ == "__main__":
    main()
