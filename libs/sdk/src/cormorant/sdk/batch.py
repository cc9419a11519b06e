"""Batch jobs from Python: ``Endpoint(slug).batch_predict("in.csv", "out/p.csv", "scores")``.

A local file is uploaded into the dataset first (as ``inputs/<name>``); a dataset reference
(``<dataset>/<path>`` or ``<dataset>@<n>/<path>``) is used as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cormorant.sdk.client import Client
from cormorant.sdk.datasets import Datasets

FINISHED = ("succeeded", "failed", "cancelled")
Progress = Callable[[dict[str, Any]], None]


class BatchJob:
    """A handle on one batch job: ``refresh()``, ``wait()``, ``cancel()``."""

    def __init__(self, client: Client, slug: str, job: dict[str, Any]) -> None:
        self.client = client
        self.slug = slug
        self.job = job

    @property
    def id(self) -> str:
        """The job's id."""
        return str(self.job["id"])

    @property
    def status(self) -> str:
        """``pending``, ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return str(self.job["status"])

    def _path(self) -> str:
        return f"/api/v1/endpoints/{self.slug}/batch-jobs/{self.id}"

    def refresh(self) -> dict[str, Any]:
        """The job as the deployer shows it now."""
        self.job = self.client.request("GET", self._path())
        return self.job

    def cancel(self) -> dict[str, Any]:
        """Cancel the job; nothing is written."""
        self.job = self.client.request("DELETE", self._path())
        return self.job

    def wait(
        self,
        *,
        progress: Progress | None = None,
        poll_s: float = 0.25,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the job ends, calling ``progress`` with each view; the final job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.refresh()
            if progress is not None:
                progress(job)
            if job["status"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch job {self.id} is still {job['status']}")
            time.sleep(poll_s)


def input_reference(client: Client, input_file: str | Path, dataset: str) -> str:
    """A dataset reference for ``input_file``: a local file is uploaded into ``dataset``."""
    path = Path(input_file)
    if not path.is_file():
        return str(input_file)
    datasets = Datasets(client)
    datasets.create(dataset, exist_ok=True)
    target = f"inputs/{path.name}"
    version = datasets.upload(dataset, path, path=target)
    return f"{dataset}@{version['version']}/{target}"


def start_job(
    client: Client,
    slug: str,
    input_file: str | Path,
    output_file: str,
    dataset: str,
    *,
    log_predictions: bool = False,
) -> BatchJob:
    """Start a batch job on endpoint ``slug`` (uploading a local input first); with
    ``log_predictions``, every row is also recorded in the prediction log."""
    reference = input_reference(client, input_file, dataset)
    body = {
        "input_file": reference,
        "output_file": output_file,
        "dataset": dataset,
        "log_predictions": log_predictions,
    }
    job = client.request("POST", f"/api/v1/endpoints/{slug}/batch-jobs", json=body)
    return BatchJob(client, slug, job)
